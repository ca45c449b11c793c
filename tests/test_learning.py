"""Learning vs copying: held-out references, copy risk as a search constraint, CMMD and the per-epoch diagnosis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState, create_trial
from PIL import Image

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.learning.cmmd import cmmd
from loratune.learning.copy_risk import CopyRisk, nearest_training
from loratune.learning.diagnosis import EpochMeasures, diagnose
from loratune.learning.holdout import dataset_split, draw_holdout
from loratune.records import EpochScore
from loratune.search.config import SearchSection
from loratune.search.selection import ranked
from loratune.search.trial import best_epoch, record_scores

TESTS = Path(__file__).resolve().parent


def reference_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """google-research cmmd/distance.py ``mmd``, transcribed from jax.numpy to numpy line for line."""
    sigma, scale = 10, 1000
    x_sqnorms = np.diag(np.matmul(x, x.T))
    y_sqnorms = np.diag(np.matmul(y, y.T))
    gamma = 1 / (2 * sigma**2)
    k_xx = np.mean(np.exp(-gamma * (-2 * np.matmul(x, x.T) + np.expand_dims(x_sqnorms, 1)
                                    + np.expand_dims(x_sqnorms, 0))))
    k_xy = np.mean(np.exp(-gamma * (-2 * np.matmul(x, y.T) + np.expand_dims(x_sqnorms, 1)
                                    + np.expand_dims(y_sqnorms, 0))))
    k_yy = np.mean(np.exp(-gamma * (-2 * np.matmul(y, y.T) + np.expand_dims(y_sqnorms, 1)
                                    + np.expand_dims(y_sqnorms, 0))))
    return float(scale * (k_xx + k_yy - 2 * k_xy))


def test_cmmd_equals_the_reference_formula() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 768))
    y = rng.normal(loc=0.05, size=(9, 768))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # CLIP embeddings are L2-normalised, as in the reference
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert abs(cmmd(x, y) - reference_mmd(x, y)) < 1e-5
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    # by hand: one point each, 10 apart: 1000 * (1 + 1 - 2 exp(-100 / 200))
    assert cmmd([[0.0]], [[10.0]]) == pytest.approx(1000 * (2 - 2 * np.exp(-0.5)), abs=1e-9)


def test_holdout_never_trains_and_becomes_the_references(tiny_models, small_dataset_factory, tmp_path) -> None:
    from loratune.evaluation import load_references

    data = small_dataset_factory(4)
    config = load_config(tiny_models.config, [f"dataset.path={data}", "dataset.holdout=0.25",
                                              "dataset.characters.lucaboy.references=null"])
    items, held = dataset_split(config)
    assert [p.name for p in held] == [p.name for p in draw_holdout([it.image for it in dataset_split(
        config.model_copy(update={"dataset": config.dataset.model_copy(update={"holdout": None})}))[0]], 0.25, 0)]
    assert (len(items), len(held)) == (6, 2) and not {it.image for it in items} & set(held)
    refs = load_references(config)
    # one lucaboy image is held out and named by its caption; albertoboy keeps its configured references
    assert refs.paths["lucaboy"] == [p for p in held if "lucaboy" in p.with_suffix(".txt").read_text()]
    assert refs.paths["albertoboy"][0].parent.name == "albertoboy"

    folder = data / "1_lucaboy"
    by_folder = load_config(tiny_models.config, [f"dataset.path={data}", f"dataset.holdout={folder}"])
    kept, held = dataset_split(by_folder)
    assert len(held) == 4 and all(it.image.parent.name != "1_lucaboy" for it in kept)
    with pytest.raises(LoratuneError, match=r"dataset.holdout: a fraction must be in \(0, 0.5\] \(got 0.7\)"):
        load_config(None, ["dataset.holdout=0.7"])


def test_copy_risk_numbers() -> None:
    samples = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    training = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    sims, nearest = nearest_training(samples, training)
    risk = CopyRisk(sims, [Path(f"t{i}.png") for i in nearest], 0.9, 0.2, "pixels", samples=[Path("a"), Path("b"),
                                                                                            Path("c")])
    assert [round(s, 3) for s in sims] == [1.0, 0.8, 0.0] and nearest == [1, 0, 1]
    assert risk.rate == pytest.approx(1 / 3) and risk.constraint == pytest.approx(1 / 3 - 0.2)
    stand_in = CopyRisk(sims, risk.nearest, 0.9, 0.2, "random clip", stand_in=True)
    assert stand_in.rate == risk.rate and stand_in.constraint is None  # reported, never a veto
    row = risk.to_json()["per_image"][0]
    assert row == {"file": "a", "similarity": 1.0, "nearest_training": "t1.png"}


def test_diagnosis_rules_and_their_numbers() -> None:
    rows = [EpochMeasures(1, {"consistency": 0.4, "alignment": 0.9}), EpochMeasures(2, {"consistency": 0.6, "alignment": 0.9, "diversity": 0.5}),
            EpochMeasures(3, {"consistency": 0.7, "alignment": 0.88, "diversity": 0.3}),
            EpochMeasures(4, {"consistency": 0.65, "alignment": 0.5}), EpochMeasures(5, {"consistency": 0.9}, 0.25),
            EpochMeasures(6, {})]
    got = [(d.label, d.rule) for d in diagnose(rows, identity_low=0.5, overfit_drop=0.05, max_copy_rate=0.2)]
    assert got == [
        ("underfit", "consistency 0.400 < identity_low 0.50"),
        ("good", "no rule fired (consistency 0.600 >= 0.50)"),
        ("overfit", "consistency rose 0.600 -> 0.700 while diversity fell 0.500 -> 0.300 (more than 0.05 below its best)"),
        ("good", "no rule fired (consistency 0.650 >= 0.50)"),  # consistency fell: not over-training, whatever alignment does
        ("copying", "copy rate 0.25 > max_copy_rate 0.20"),
        ("good", "no rule fired"),  # nothing measured: no rule can fire
    ]


def test_best_epoch_is_the_best_feasible_one_and_copying_trials_are_no_candidates(tmp_path) -> None:
    epochs = [EpochScore(1, 0.5, {"consistency": 0.7}, tmp_path / "e1.safetensors", constraint=-0.2, copy_rate=0.0),
              EpochScore(2, 0.8, {"consistency": 0.9}, tmp_path / "e2.safetensors", constraint=0.3, copy_rate=0.5)]
    assert best_epoch(epochs).epoch == 1
    attrs = record_scores(tmp_path, epochs, "complete")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert (attrs["best_epoch"], attrs["lora"], attrs["constraint"]) == (1, "e1.safetensors", -0.2)
    assert [e["diagnosis"]["label"] for e in scores["epochs"]] == ["good", "copying"]
    assert best_epoch(epochs[1:]).epoch == 2  # nothing feasible: the least copying epoch, and no candidate
    copying = create_trial(value=0.9, user_attrs={"composite": 0.9, "lora": "a.safetensors", "constraint": 0.3})
    clean = create_trial(value=0.5, user_attrs={"composite": 0.5, "lora": "b.safetensors", "constraint": -0.2})
    assert [t.user_attrs["lora"] for t in ranked([copying, clean], SearchSection())] == ["b.safetensors"]


class CopyingBackend:
    """The synthetic surface, but rank 16 copies its training images (copy rate 0.5) and scores best of all."""

    def __init__(self) -> None:
        from search_helpers import SyntheticBackend

        self.inner = SyntheticBackend()

    def train(self, config, out_dir, on_epoch):
        copies = config.train.rank == 16

        def mark(score: EpochScore) -> None:
            score.copy_rate = 0.5 if copies else 0.0
            score.constraint = score.copy_rate - config.evaluation.learning.max_copy_rate
            score.composite = score.composite + 0.5 if copies else score.composite
            on_epoch(score)

        self.inner.train(config, out_dir, mark)

    def score_lora(self, config, lora, out_dir):
        score = self.inner.score_lora(config, lora, out_dir)
        score.copy_rate, score.constraint = 0.0, -0.2
        return score


def make_copying() -> CopyingBackend:
    return CopyingBackend()


def test_search_keeps_copying_trials_out_of_best_and_tells_optuna(tmp_path, monkeypatch) -> None:
    from loratune.search.runner import run_optimize

    monkeypatch.syspath_prepend(str(TESTS))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 2}, "search": {
        "n_trials": 6, "seed": 1, "pruner": "none", "heartbeat_interval": 1, "grace_period": 2,
        "space": {"learning_rate": {"type": "float", "low": 5e-5, "high": 5e-4, "log": True},
                  "rank": {"type": "categorical", "choices": [8, 16]}},
        "phases": {"refine_trials": 0, "ensemble_top_k": 2}}}))
    run = tmp_path / "run"
    lines: list[str] = []
    best = run_optimize(load_config(config), run, backend=f"{__name__}:make_copying", say=lines.append)
    trials = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}").get_trials()
    copying = [t for t in trials if t.params.get("rank") == 16]
    assert copying and all(t.constraints == {"copy_rate": pytest.approx(0.3)} for t in copying)
    assert best is not None and best.params.get("rank") != 16
    assert all(m not in {t.number for t in copying} for m in trials[-1].user_attrs["members"])
    assert any("1 copying (copy rate 0.50 > max_copy_rate 0.20)" in line for line in lines)
    assert f"{len(copying)} trial(s) copy their training images at every epoch (copy rate over " \
        "evaluation.learning.max_copy_rate 0.2): never RUN/best" in lines
    assert all(t.state == TrialState.COMPLETE for t in trials)


class Pixels(torch.nn.Module):
    """A pixel-level copy detector as a TorchScript model (the ``sscd`` embedder's format)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.adaptive_avg_pool2d(x, 16).flatten(1)
        return x - x.mean(dim=1, keepdim=True)


def test_evaluating_training_images_reads_as_copies_with_sscd_and_cmmd(tiny_models, small_dataset_factory,
                                                                      tmp_path) -> None:
    """Samples that are the training images themselves: every one a copy (cosine 1 to itself) under a TorchScript
    copy detector; CMMD to the held-out images is measured beside."""
    from loratune.evaluation import evaluate_images

    data = small_dataset_factory(4)
    torch.jit.script(Pixels()).save(str(tmp_path / "pixels.pt"))
    config = load_config(tiny_models.config, [
        f"dataset.path={data}", "dataset.holdout=0.25", "evaluation.backends.alignment=null",
        "evaluation.backends.aesthetics=null", "evaluation.backends.quality=null", "evaluation.backends.diversity=null",
        f"evaluation.learning.copy_embedder={{name: sscd, model: {tmp_path / 'pixels.pt'}, size: 64}}"])
    items = dataset_split(config)[0]
    images = tmp_path / "samples"
    images.mkdir()
    for it in items[:3]:
        shutil.copy(it.image, images / it.image.name)
    result, path = evaluate_images(images, config, show_progress=False)
    written = json.loads(path.read_text())
    assert written["copy_risk"]["rate"] == 1.0 and written["copy_risk"]["embedder"] == "sscd (pixels.pt)"
    assert {Path(r["nearest_training"]).name for r in written["copy_risk"]["per_image"]} == {
        it.image.name for it in items[:3]}
    assert written["cmmd"]["held_out_images"] == 2 and written["cmmd"]["value"] == pytest.approx(
        result.cmmd["value"]) and result.cmmd["value"] > 0
    (tmp_path / "bad.pt").write_text("not a model")
    bad = config.model_copy(deep=True)
    bad.evaluation.learning.copy_embedder = {"name": "sscd", "model": str(tmp_path / "bad.pt")}
    with pytest.raises(LoratuneError, match="evaluation.learning.copy_embedder.model: .*bad.pt is not a TorchScript"):
        evaluate_images(images, bad, show_progress=False)


def test_audit_reports_references_that_are_training_images(tiny_models, small_dataset_factory, tmp_path) -> None:
    from loratune.audit import AuditOptions, run_audit

    data = small_dataset_factory(2)
    refs = tmp_path / "refs"
    refs.mkdir()
    train_image = min((data / "1_lucaboy").glob("*.png"))
    shutil.copy(train_image, refs / "copy.png")
    config = load_config(tiny_models.config, [f"dataset.characters.lucaboy.references={refs}"])
    audit = run_audit(data, config, AuditOptions(alignment=False, embeddings=False, faces=False)).data
    assert audit["reference_leaks"] == [{"character": "lucaboy", "reference": str(refs / "copy.png"),
                                         "training": f"1_lucaboy/{train_image.name}", "phash_distance": 0,
                                         "cosine": None}]
    assert any("1 reference image(s) of lucaboy are (near-)duplicates of training images" in w
               for w in audit["warnings"])


def test_a_lora_trained_to_copy_is_flagged_and_not_best(tmp_path) -> None:
    """One world image, 20 repeats, lr 1e-2: from epoch 2 the samples are the training image and the composite still
    rises; the trial's best is epoch 1, the last feasible one. The copy threshold is this scenario's: epoch 1's
    samples stay under 0.9 (world CLIP cosine to the image at most 0.894), the copying epochs' reach 0.92-0.98."""
    from loratune.search.trials import TrainAndScore
    from loratune.world.folder import write_world

    world = write_world(tmp_path / "w")
    source = min((world.config.parent / "dataset").glob("*/*.png"))
    data = tmp_path / "data" / "20_lucaboy"
    data.mkdir(parents=True)
    shutil.copy(source, data / source.name)
    shutil.copy(source.with_suffix(".txt"), data / f"{source.stem}.txt")
    config = load_config(world.config, [
        f"dataset.path={data.parent}", "train.learning_rate=1e-2", "train.epochs=4", "train.batch_size=1",
        "sampling.seeds=[0,1,2]", "sampling.steps=10", "evaluation.learning.copy_threshold=0.9", f"sampling.prompts=[{{text: '{source.with_suffix('.txt').read_text().strip()}', character: lucaboy}}]"])
    scores: list[EpochScore] = []
    TrainAndScore().train(config, tmp_path / "run", scores.append)
    attrs = record_scores(tmp_path / "run", scores, "complete", learning=config.evaluation.learning)
    epochs = json.loads((tmp_path / "run" / "scores.json").read_text())["epochs"]
    assert [e["diagnosis"]["label"] for e in epochs] == ["good", "copying", "copying", "copying"]
    assert max(scores, key=lambda s: s.composite).epoch != 1  # by composite alone a copying epoch would win
    assert attrs["best_epoch"] == 1 and attrs["constraint"] <= 0
    risk = json.loads((tmp_path / "run" / "scores" / "epoch-0002" / "scores.json").read_text())["copy_risk"]
    assert risk["per_image"][0]["nearest_training"] == str(data / source.name) and risk["rate"] > 0.2


def test_report_shows_diagnosis_copy_rate_and_nearest_training_image(tmp_path) -> None:
    from loratune.report.learning_section import copy_pairs
    from loratune.report.rundir import TrialInfo
    from loratune.report.samples_section import epoch_table

    rng = np.random.default_rng(0)
    for name in ("sample.png", "train.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    epochs = [EpochScore(1, 0.5, {"consistency": 0.7}, constraint=-0.2, copy_rate=0.0, cmmd=1.25),
              EpochScore(2, 0.8, {"consistency": 0.9}, constraint=0.8, copy_rate=1.0, cmmd=0.5)]
    record_scores(tmp_path, epochs, "complete")
    risk = CopyRisk([0.97], [tmp_path / "train.png"], 0.9, 0.2, "dino (facebook/dinov2-base)",
                    samples=[tmp_path / "sample.png"])
    (tmp_path / "scores" / "epoch-0002").mkdir(parents=True)
    (tmp_path / "scores" / "epoch-0002" / "scores.json").write_text(json.dumps({"copy_risk": risk.to_json()}))
    info = TrialInfo(create_trial(value=0.5, user_attrs={"best_epoch": 1}), tmp_path, {},
                     json.loads((tmp_path / "scores.json").read_text()), [])
    table = epoch_table(info)
    assert "<th>copy rate</th><th>CMMD</th><th>diagnosis</th>" in table
    assert "<span class='diag-copying'>copying</span> <span class='muted'>copy rate 1.00 &gt; max_copy_rate 0.20" in table
    assert "<tr class=\"best-row\"><td class='num'>1</td>" in table
    pairs = copy_pairs(info)
    assert "epoch 2: sample | nearest training image — copy rate 1 (threshold 0.9, dino (facebook/dinov2-base))" in pairs
    assert pairs.count("data:image/webp;base64,") == 2 and "<span class='diag-copying'>0.97</span>" in pairs


def test_console_prints_copy_risk_and_cmmd() -> None:
    from types import SimpleNamespace

    from loratune.report.console import learning_lines

    risk = CopyRisk([0.95, 0.5, 0.92, 0.1], [Path("t.png")] * 4, 0.9, 0.2, "dino (facebook/dinov2-base)")
    result = SimpleNamespace(copy_risk=risk, cmmd={"value": 1.2345, "held_out_images": 4})
    assert learning_lines(result) == [
        ("[bold red]copy risk[/]: 2/4 images at cosine >= 0.90 to a training image (rate 0.50, max 0.20, over: "
         "copying; dino (facebook/dinov2-base))"),
        "CMMD to the 4 held-out images: 1.234 (lower is closer)",
    ]
