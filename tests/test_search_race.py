"""Racing an epoch's seeds (``search.gating.race``): scored on its first seeds, an epoch is sampled with the rest and
scored on all of them unless it is clearly below the best so far. Checked on the rule, and on real tiny trainings:
the topped-up samples are the very images a trial drawing every seed at once gets, in one folder and manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratune.config import load_config
from loratune.search.config import GatingSection
from loratune.search.gating import EpochGate

pytestmark = pytest.mark.slow


def test_an_epoch_stays_in_the_race_unless_it_is_clearly_below_the_best_so_far() -> None:
    plain = EpochGate(GatingSection(seeds=2), last_epoch=4, validation_rise=0.1, incumbent=0.9)
    assert not plain.wants_more(1, 0.95, 0.01)  # seeds: k without a race keeps k seeds, as before
    gate = EpochGate(GatingSection(seeds=2, race=2), last_epoch=4, validation_rise=0.1, more_seeds=(2, 3))
    assert gate.wants_more(1, 0.10, 0.01)  # nothing to race against yet
    gate.scored(0.60)
    assert gate.wants_more(2, 0.45, 0.08)  # 0.45 + 2 x 0.08 = 0.61 reaches the trial's own 0.60
    assert not gate.wants_more(3, 0.45, 0.07)  # 0.59 does not
    assert gate.raced[3] == "2 seeds only: 0.4500 + 2 x 0.0700 is below the best so far (0.6000)"
    assert gate.wants_more(4, 0.10, None)  # no standard error: no race
    ahead = EpochGate(GatingSection(seeds=2, race=1), last_epoch=4, validation_rise=0.1, incumbent=0.8,
                      more_seeds=(2, 3))
    ahead.scored(0.5)
    assert not ahead.wants_more(2, 0.7, 0.05) and ahead.wants_more(3, 0.7, 0.12)  # the study's 0.8 is the bar
    with pytest.raises(ValueError, match="search.gating.race: set search.gating.seeds too"):
        GatingSection(race=2)
    # seeds: k already takes every seed (k >= len(sampling.seeds)): nothing left to draw, so no top-up.
    assert not EpochGate(GatingSection(seeds=2, race=2), last_epoch=4, validation_rise=0.1).wants_more(1, 0.5, 0.1)


class CopyThenLearn:
    """Epoch 1 scores 0.90 but copies a training image (over the copy constraint); epoch 2 scores 0.69 on its first
    seeds (0.70 on all), standard error 0.01."""

    def train(self, config, out_dir: Path, on_epoch) -> None:
        from loratune.records import EpochScore

        for epoch, (first, full, constraint) in enumerate([(0.90, 0.90, 0.5), (0.69, 0.70, -0.1)], 1):
            on_epoch.wants_samples(epoch, None, epoch == 2)
            composite = full if on_epoch.wants_more(epoch, first, 0.01) else first
            on_epoch(EpochScore(epoch, composite, {"alignment": composite}, out_dir / f"e{epoch}.safetensors",
                                constraint=constraint, composite_se=0.01))


def test_an_epoch_that_cannot_be_the_best_sets_no_bar(tmp_path) -> None:
    from loratune.search.trial import run_trial

    config = load_config(None, ["train.epochs=2", "sampling.seeds=[0, 1, 2, 3]",
                                "search.gating={every: 1, seeds: 2, race: 2}"])
    outcome = run_trial(CopyThenLearn(), config, {}, 0, "search", tmp_path / "trial",
                        lambda score, attrs, last: False)
    # The copying epoch is no candidate, so the learning epoch races nothing in this trial and is scored on all seeds.
    assert [e.composite for e in outcome.epochs] == [0.90, 0.70] and outcome.epochs[1].raced is None
    assert outcome.best.epoch == 2


def test_a_finalist_that_kept_its_first_seeds_draws_the_rest_with_the_fresh_ones(tmp_path) -> None:
    from loratune.search.finalists import skipped_seeds

    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps({"file": f"p00-s{s}.png", "prompt": "a", "seed": s})
                                                  + "\n" for s in (0, 1)))
    raced = load_config(None, ["sampling.seeds=[0, 1, 2, 3]", "search.gating={seeds: 2, race: 2}"])
    assert skipped_seeds(raced, folder) == [2, 3]
    assert skipped_seeds(load_config(None, ["sampling.seeds=[0, 1, 2, 3]", "search.gating={seeds: 2}"]),
                         folder) == []  # plain seeds: k: every finalist has the same k search seeds anyway
    assert skipped_seeds(raced, tmp_path / "nowhere") == []


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def _trial(tiny_models, dataset: Path, folder: Path, gating: str, incumbent: float | None):
    from loratune.search.trial import run_trial
    from loratune.search.trials import TrainAndScore

    config = load_config(tiny_models.config, [
        f"model.base={tiny_models.sd15}", f"dataset.path={dataset}", "dataset.resolution=64", "train.rank=4",
        "train.learning_rate=1e-2", "train.epochs=2", "train.batch_size=2", "train.sample_checkpoints=true",
        "sampling.steps=2", "sampling.seeds=[0, 1, 2, 3]", "sampling.width=32", "sampling.height=32",
        "sampling.cfg=1.0", "sampling.prompts=[{text: lucaboy on a beach, character: lucaboy}]",
        f"search.gating={gating}"])
    return run_trial(TrainAndScore(), config, {}, 0, "search", folder, lambda score, attrs, last: False,
                     incumbent=incumbent), config


def test_a_raced_epoch_is_topped_up_with_the_same_images_or_keeps_its_first_seeds(tiny_models,
                                                                                  small_dataset_factory,
                                                                                  tmp_path) -> None:
    from loratune.evaluation import Evaluator, collect_samples, load_references
    from loratune.manifest import SAMPLES_MANIFEST

    dataset = small_dataset_factory(1)
    every = "{every: 1, skip_diverged: false, stop_diverged: false}"
    race = "{every: 1, skip_diverged: false, stop_diverged: false, seeds: 2, race: %s}"
    whole, _ = _trial(tiny_models, dataset, tmp_path / "run-a" / "trials" / "0000", every, None)
    raced, config = _trial(tiny_models, dataset, tmp_path / "run-b" / "trials" / "0000", race % 1000, None)
    kept, _ = _trial(tiny_models, dataset, tmp_path / "run-c" / "trials" / "0000", race % 2, 1e9)
    # Never clearly below (1000 standard errors): every epoch drew seeds 0-1, then 2-3 into the same folder, and
    # was scored on all four.
    for a, b in zip(whole.epochs, raced.epochs, strict=True):
        names = sorted(p.name for p in b.samples_dir.glob("*.png"))
        assert names == ["p00-s0.png", "p00-s1.png", "p00-s2.png", "p00-s3.png"]
        assert names == sorted(p.name for p in a.samples_dir.glob("*.png"))
        # Seeds 2 and 3, drawn as a batch of two rather than within one of four, may round a pixel to the next grey
        # level (CPU matmuls sum in another order): the same images, not new ones.
        assert all(np.abs(_pixels(a.samples_dir / n) - _pixels(b.samples_dir / n)).max() <= 1 for n in names)
        samples = collect_samples(b.samples_dir, b.samples_dir / SAMPLES_MANIFEST)
        assert sorted(s.seed for s in samples) == [0, 1, 2, 3] and b.raced is None
        assert b.composite == pytest.approx(a.composite, abs=1e-3)
        assert "sample" in b.seconds and "score" in b.seconds
    # Measured apart: an evaluator of its own scores the folder's four samples to the recorded composite.
    folder = raced.epochs[-1].samples_dir
    evaluator = Evaluator(config, references=load_references(config, negatives_dir=tmp_path / "run-b" / "samples"
                                                                                    / "base"), show_progress=False)
    evaluator.load()
    assert evaluator.score(collect_samples(folder, folder / SAMPLES_MANIFEST)).composite == \
        pytest.approx(raced.epochs[-1].composite, abs=1e-9)
    # Clearly below a best of 1e9: seeds 0-1 only, and scores.json says why.
    for epoch in kept.epochs:
        assert sorted(p.name for p in epoch.samples_dir.glob("*.png")) == ["p00-s0.png", "p00-s1.png"]
        assert epoch.raced.startswith("2 seeds only: ") and "is below the best so far (1000000000.0000)" in epoch.raced
    scores = json.loads((tmp_path / "run-c" / "trials" / "0000" / "scores.json").read_text())
    assert scores["seconds"]["raced_epochs"] == 2 and all(e["raced"] for e in scores["epochs"])


# Per trial (by learning rate): each epoch's composite on all seeds; on the first seeds it reads 0.01 lower, with a
# standard error of 0.01, so an epoch stays in the race while its full composite + 0.01 reaches the best so far.
CURVES = {1e-4: [0.30, 0.40, 0.90, 0.50, 0.45], 1e-3: [0.20, 0.60, 0.95, 0.70, 0.20]}


class RaceTrials:
    """A backend that races like the real one: scores the first seeds, asks ``on_epoch.wants_more``, tops up."""

    def train(self, config, out_dir: Path, on_epoch) -> None:
        import torch
        from safetensors.torch import save_file

        from loratune.records import EpochScore
        from loratune.train import StopTraining

        assert config.sampling.seeds == [0, 1] and on_epoch.more_seeds == [2, 3]
        for epoch, full in enumerate(CURVES[config.train.learning_rate], 1):
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
            lora.parent.mkdir(parents=True, exist_ok=True)
            save_file({"m.lora_down.weight": torch.zeros(1, 4)}, str(lora))
            on_epoch.wants_samples(epoch, None, epoch == 5)
            composite, seconds = full - 0.01, {"train": 1.0, "sample": 0.5, "score": 0.5}
            if on_epoch.wants_more(epoch, composite, 0.01):
                composite, seconds = full, {"train": 1.0, "sample": 1.0, "score": 1.5}
            try:
                on_epoch(EpochScore(epoch, composite, {"alignment": composite}, lora, seconds=seconds,
                                    composite_se=0.01))
            except StopTraining:
                return

    def score_lora(self, config, lora, out_dir):
        raise AssertionError("no ensemble here")


def make() -> RaceTrials:
    return RaceTrials()


def test_a_study_races_each_trial_against_the_best_of_the_trials_before(tmp_path, monkeypatch) -> None:
    import optuna

    from loratune.report import build_report
    from loratune.search.runner import run_optimize

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    config = load_config(None, [
        "search.n_trials=2", "search.sampler=grid", "search.phases.baseline=false", "search.phases.refine_trials=0",
        "search.phases.ensemble_top_k=0", "search.finalists=0", "search.pruner=none", "train.epochs=5",
        "sampling.seeds=[0, 1, 2, 3]", "search.heartbeat_interval=60",
        "search.space={learning_rate: {type: categorical, choices: [1.0e-4, 1.0e-3]}}",
        "search.gating={every: 1, skip_diverged: false, stop_diverged: false, seeds: 2, race: 2}"])
    lines: list[str] = []
    run_optimize(config, tmp_path / "run", backend="test_search_race:make", say=lines.append)
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    first, second = sorted(study.trials, key=lambda t: t.number)

    def raced(trial) -> list[int]:
        scores = json.loads((tmp_path / "run" / trial.user_attrs["trial_dir"] / "scores.json").read_text())
        return [e["epoch"] for e in scores["epochs"] if e["raced"]]

    # The first trial races only itself: its epochs after its peak fall out. The second races the first's best too.
    if first.params["learning_rate"] == 1e-4:  # peak 0.90 at epoch 3; then 0.20/0.60/0.70/0.20 + 0.01 are below it
        expected = ([4, 5], [1, 2, 4, 5])
    else:  # peak 0.95 at epoch 3; then nothing of the other trial reaches 0.95
        expected = ([4, 5], [1, 2, 3, 4, 5])
    assert (raced(first), raced(second)) == expected
    count = len(expected[0]) + len(expected[1])
    assert any(line.endswith(f"; {count} scored on their first seeds only (search.gating.race)") for line in lines)
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert best["best_epoch"] == 3 and best["composite"] == 0.95  # the peak, scored on all of its seeds
    html = build_report(tmp_path / "run").path.read_text()
    assert f"{count} scored epochs kept the first seeds only: clearly below the best so far" in html


def test_a_top_up_that_fails_keeps_the_first_seeds_score(tiny_models, small_dataset_factory, tmp_path,
                                                         monkeypatch) -> None:
    import loratune.sampling

    drawn = loratune.sampling.render_samples

    def out_of_memory_on_more(*args, append: bool = False, **kwargs):
        if append:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return drawn(*args, **kwargs)

    monkeypatch.setattr(loratune.sampling, "render_samples", out_of_memory_on_more)
    race = "{every: 1, skip_diverged: false, stop_diverged: false, seeds: 2, race: 1000}"
    outcome, _ = _trial(tiny_models, small_dataset_factory(1), tmp_path / "run" / "trials" / "0000", race, None)
    assert outcome.failure is None and [e.epoch for e in outcome.epochs] == [1, 2]
    for epoch in outcome.epochs:
        assert epoch.composite is not None and epoch.raced.startswith("the rest of the seeds failed: RuntimeError: CUDA")
        assert sorted(p.name for p in epoch.samples_dir.glob("*.png")) == ["p00-s0.png", "p00-s1.png"]
