"""``loratune optimize`` end to end on the tiny SD1.5 model: the real trainer, real sampling, real scoring backends
(stand-in weights), through all three phases with pruned trials, then the best LoRA in RUN/best/."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from safetensors.torch import load_file

from loratune.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_dataset(small_dataset_factory) -> Path:
    """Two captioned images per character, one repeat: one batch of two per character per epoch."""
    return small_dataset_factory(2)


def test_optimize_three_phases_on_the_tiny_model(tiny_models, small_dataset, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = [
        "optimize", str(tiny_models.config), "--run", str(run),
        "--set", f"dataset.path={small_dataset}", "--set", "train.batch_size=2", "--set", "sampling.steps=2",
        "--set", "train.epochs=2",
        "--set", "search.n_trials=6", "--set", "search.seed=0",
        "--set", ("search.space={learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}, "
                  "rank: {type: categorical, choices: [2, 4]}}"),
        "--set", "search.phases={refine_trials: 2, ensemble_top_k: 2, ensemble_method: svd, ensemble_rank: 4}",
    ]
    assert main(args) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}")
    trials = study.get_trials()
    phases = [t.user_attrs["phase"] for t in trials]
    assert phases[0] == "baseline" and "search" in phases and phases.count("refine") == 2 and phases[-1] == "ensemble"
    assert len(trials) >= 7  # 6 + the ensemble
    assert any(t.state == TrialState.PRUNED for t in trials), [t.state for t in trials]
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get("fail_reason")
        folder = run / t.user_attrs["trial_dir"]
        scores = json.loads((folder / "scores.json").read_text())
        assert t.user_attrs["stand_in"] is True
        lora = load_file(str(folder / t.user_attrs["lora"]))
        assert any(k.endswith(".lora_down.weight") for k in lora)
        if t.user_attrs["phase"] == "ensemble":
            assert {k: v.shape[0] for k, v in lora.items() if k.endswith("lora_down.weight")}.popitem()[1] <= 4
            continue
        # Every epoch was sampled and scored; the value is the best epoch's composite.
        assert [e["epoch"] for e in scores["epochs"]] == sorted(t.intermediate_values)
        # Its seconds: each epoch's training, validation, sampling and scoring, on this CPU, and with the setup and
        # the search's own work they account for the trial's wall time.
        seconds = scores["seconds"]
        assert all(e["seconds"][k] > 0 for e in scores["epochs"] for k in ("train", "validation", "sample", "score"))
        assert seconds["devices"] == ["cpu"] and "setup" in scores["epochs"][0]["seconds"]
        spent = sum(seconds[k] for k in ("setup", "train", "validation", "sample", "score", "search"))
        assert abs(seconds["wall"] - spent) < 0.05 * seconds["wall"] + 0.1, seconds
        for e in scores["epochs"]:
            assert (folder / "samples" / f"epoch-{e['epoch']:04d}").is_dir()
            epoch_scores = json.loads((folder / "scores" / f"epoch-{e['epoch']:04d}" / "scores.json").read_text())
            # the composite's standard error travels from the evaluation to the trial's record and to the pruner
            assert e["composite_se"] == epoch_scores["composite_se"] > 0
            assert t.user_attrs["composite_se"][str(e["epoch"])] == e["composite_se"]
        best = max(scores["epochs"], key=lambda e: e["composite"])
        assert t.user_attrs["best_epoch"] == best["epoch"]
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(best["composite"])
            assert len(scores["epochs"]) == 2
    best = json.loads((run / "best" / "best.json").read_text())
    # The top three by search-time composite were sampled again (4 x as many fresh seeds) and the best
    # of them on all of its samples holds RUN/best.
    top = sorted((t for t in trials if t.user_attrs.get("composite") is not None),
                 key=lambda t: (-t.user_attrs["composite"], t.number))[:3]
    finalists = json.loads((run / "finalists.json").read_text())
    assert {f["trial"] for f in finalists["finalists"]} == {t.number for t in top}
    per_epoch = len(list((run / "trials" / f"{top[0].number:04d}" / "samples" / "epoch-0001").glob("*.png")))
    assert all(f["images"] == 5 * per_epoch for f in finalists["finalists"])  # + 4 x as many fresh samples
    assert all(f["composite_se"] > 0 for f in finalists["finalists"])  # each with its noise, as the report shows it
    winner = max(finalists["finalists"], key=lambda f: (f["composite"], -f["trial"]))
    assert (best["trial"], best["best_epoch"]) == (winner["trial"], winner["epoch"])
    assert (run / "best" / best["lora"]).is_file() and list((run / "best" / "finalist").rglob("*.png"))
    assert list((run / "best" / "samples").glob("*.png"))
