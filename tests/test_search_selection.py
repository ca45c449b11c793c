"""The selection is right: every scored epoch is a candidate for RUN/best whatever its trial's state, the last epoch
is never pruned, refinement centres on the best epoch. A scripted trial backend gives each trial a known curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from test_search_runner import study, write_config

from loratune.config import load_config
from loratune.records import EpochScore
from loratune.search.config import ParamSpec, SearchSection
from loratune.search.phases import refine_space
from loratune.search.runner import finish_run, run_optimize
from loratune.search.selection import ranked

# Trial number -> composite per epoch; None: the trainer diverges at that epoch.
CURVES: dict[int, list[float | None]] = {}
# Trial number -> validation loss per epoch (none: not measured).
VALIDATION: dict[int, list[float | None]] = {}
# Trial number -> the composite's standard error per epoch (none: not measured).
SPREAD: dict[int, list[float | None]] = {}
# (trial, epoch) -> composite on all of a finalist's samples; the calls made.
FINALISTS: dict[tuple[int, int], float] = {}
FINALIST_CALLS: list[tuple[int, int, list[int], Path]] = []
FINALIST_SE: dict[tuple[int, int], float] = {}  # a finalist composite's standard error (none: not measured)


class ScriptedBackend:
    def train(self, config, out_dir: Path, on_epoch) -> None:
        import torch
        from safetensors.torch import save_file

        from loratune.train import StopTraining, TrainingDiverged

        number = int(out_dir.name[1:5])
        for epoch, value in enumerate(CURVES[number][: config.train.epochs], 1):
            if value is None:
                raise TrainingDiverged(f"training diverged at epoch {epoch}: loss is nan")
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}" / "lora.safetensors"
            lora.parent.mkdir(parents=True)
            save_file({"m.lora_down.weight": torch.full((2, 4), float(number * 10 + epoch)),
                       "m.lora_up.weight": torch.zeros(4, 2), "m.alpha": torch.tensor(2.0)}, str(lora))
            samples = out_dir / "samples" / f"epoch-{epoch:04d}"
            samples.mkdir(parents=True)
            try:
                on_epoch(EpochScore(epoch, value, {"alignment": value}, lora, samples,
                                    validation_loss=VALIDATION.get(number, [None] * 9)[epoch - 1],
                                    composite_se=SPREAD.get(number, [None] * 9)[epoch - 1]))
            except StopTraining:
                return

    def score_lora(self, config, lora, out_dir):  # pragma: no cover - no ensemble in these studies
        raise AssertionError("not used")

    def score_finalist(self, config, lora, earlier, out_dir):
        """A finalist's score on its fresh samples and its search-time ones: ``FINALISTS`` by (trial, epoch)."""
        trial, epoch = int(lora.parts[-4]), int(lora.parent.name[6:])
        FINALIST_CALLS.append((trial, epoch, list(config.sampling.seeds), earlier.relative_to(lora.parents[2])))
        (out_dir / "samples").mkdir(parents=True)
        (out_dir / "samples" / "fresh.txt").write_text("fresh")
        value = FINALISTS.get((trial, epoch), CURVES[trial][epoch - 1])  # unlisted: the search saw it right
        return EpochScore(0, value, {"alignment": value}, lora, out_dir / "samples",
                          composite_se=FINALIST_SE.get((trial, epoch)))


sys.modules[__name__].make = ScriptedBackend
BACKEND = f"{__name__}:make"


def _run(tmp_path: Path, curves: dict[int, list[float | None]], epochs: int, **search) -> tuple[Path, list]:
    CURVES.clear()
    CURVES.update(curves)
    search = {"pruner": "patient", "patience": 0, **search}
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=len(curves),
                                      space={"learning_rate": {"type": "float", "low": 5e-5, "high": 5e-4, "log": True}},
                                      phases={"refine_trials": 0, "ensemble_top_k": 0}, **search),
                         [f"train.epochs={epochs}"])
    run = tmp_path / "run"
    run_optimize(config, run, backend=BACKEND, say=lambda m: None)
    return run, study(run).get_trials()


def test_a_pruned_trials_best_epoch_is_run_best(tmp_path) -> None:
    # Trial 1 peaks at epoch 1 (0.9) and falls: the patient pruner (patience 0) stops it at epoch 2.
    run, trials = _run(tmp_path, {0: [0.5, 0.5, 0.5, 0.5], 1: [0.9, 0.1, 0.1, 0.1]}, epochs=4)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].intermediate_values == {1: 0.9, 2: 0.1}
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["state"], best["best_epoch"], best["composite"]) == (1, "pruned", 1, 0.9)
    source = run / "trials" / "0001" / "checkpoints" / "epoch-0001" / "lora.safetensors"
    assert (run / "best" / "lora.safetensors").read_bytes() == source.read_bytes()


def test_the_pruner_allows_for_each_epochs_noise(tmp_path) -> None:
    # Trial 1 has a lucky high at epoch 1 and then scores within the noise of it: with its standard errors recorded
    # (0.05 each: a difference must exceed 0.071) and search.noise_margin 1 it runs on; with the default margin (0)
    # or no standard errors recorded, the plain patient rule stops it.
    curves = {0: [0.5, 0.5, 0.5, 0.5], 1: [0.9, 0.85, 0.86, 0.95]}
    for name in ("noisy", "margin0", "unmeasured"):
        (tmp_path / name).mkdir()
    SPREAD.clear()
    SPREAD.update({0: [0.05] * 4, 1: [0.05] * 4})
    try:
        run, trials = _run(tmp_path / "noisy", curves, epochs=4, patience=1, noise_margin=1)
        assert trials[1].state == TrialState.COMPLETE and trials[1].user_attrs["best_epoch"] == 4
        assert trials[1].user_attrs["composite_se"] == {"1": 0.05, "2": 0.05, "3": 0.05, "4": 0.05}
        scores = json.loads((run / "trials" / "0001" / "scores.json").read_text())
        assert [e["composite_se"] for e in scores["epochs"]] == [0.05] * 4
        _, trials = _run(tmp_path / "margin0", curves, epochs=4, patience=1)  # the default: Optuna's rule
        assert trials[1].state == TrialState.PRUNED and trials[1].intermediate_values == {1: 0.9, 2: 0.85, 3: 0.86}
    finally:
        SPREAD.clear()
    _, trials = _run(tmp_path / "unmeasured", curves, epochs=4, patience=1, noise_margin=1)
    assert trials[1].state == TrialState.PRUNED


def test_a_trial_that_failed_after_scoring_is_still_a_candidate(tmp_path) -> None:
    run, trials = _run(tmp_path, {0: [0.5, 0.5, 0.5], 1: [0.4, 0.8, None]}, epochs=3, pruner="none")
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["fail_reason"].startswith("diverged")
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["state"], best["best_epoch"]) == (1, "fail", 2)
    assert best["fail_reason"].startswith("diverged")


def test_the_last_epoch_is_never_pruned(tmp_path) -> None:
    # The drop comes at the last epoch: stopping there saves nothing, so the trial completes at its best epoch.
    run, trials = _run(tmp_path, {0: [0.5, 0.5], 1: [0.9, 0.1]}, epochs=2)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[1].value == 0.9 and trials[1].user_attrs["best_epoch"] == 1
    scores = json.loads((run / "trials" / "0001" / "scores.json").read_text())
    assert scores["state"] == "complete" and [e["epoch"] for e in scores["epochs"]] == [1, 2]


def test_ranking_rule_and_refine_centre() -> None:
    search = SearchSection(space={"learning_rate": ParamSpec(type="float", low=1e-5, high=1e-3, log=True),
                                  "epochs": ParamSpec(type="int", low=2, high=20)})
    dists = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
             "epochs": optuna.distributions.IntDistribution(2, 20)}

    def trial(number: int, state: TrialState, composite: float | None, best_epoch: int, epochs: int, lora=True,
              reason: str | None = "diverged: nan"):
        attrs = {"phase": "search", "composite": composite, "best_epoch": best_epoch}
        if state == TrialState.FAIL:
            attrs["fail_reason"] = reason
        if lora:
            attrs["lora"] = f"checkpoints/{number}.safetensors"
        t = create_trial(state=state, value=composite if state == TrialState.COMPLETE else None,
                         params={"learning_rate": 1e-4, "epochs": epochs}, distributions=dists, user_attrs=attrs)
        t.number = number
        return t

    trials = [trial(0, TrialState.COMPLETE, 0.6, 10, 10), trial(1, TrialState.PRUNED, 0.8, 3, 20),
              trial(2, TrialState.FAIL, 0.7, 4, 12), trial(3, TrialState.COMPLETE, 0.9, 5, 8, lora=False),
              trial(4, TrialState.RUNNING, 0.95, 2, 8), trial(5, TrialState.COMPLETE, 0.6, 9, 9),
              # Killed or Ctrl-C'd after scoring: their folders went to trials/partial, their retries run again.
              trial(6, TrialState.FAIL, 0.99, 2, 8, reason=None), trial(7, TrialState.FAIL, 0.99, 2, 8, reason="interrupted")]
    assert [t.number for t in ranked(trials, search)] == [1, 2, 0, 5]  # ties: the earlier trial first
    space, _ = refine_space(trials, search)
    # Trial 1 trained 20 epochs but peaked at 3: the refine range is centred on 3 (width 0.25 of 2..20 = 4.5).
    assert space["epochs"].low == 2 and space["epochs"].high == 6
    # A best epoch below the searched range (the demo searches epochs 2..2 and may peak at 1) stays a valid range.
    tight = search.model_copy(update={"space": search.space | {"epochs": ParamSpec(type="int", low=2, high=2)}})
    space, _ = refine_space([trial(0, TrialState.COMPLETE, 0.6, 1, 2)], tight)
    assert (space["epochs"].low, space["epochs"].high) == (2, 2)


@pytest.mark.parametrize("directions", [{"alignment": "maximize", "composite": "maximize"}])
def test_multi_objective_ranking_puts_the_pareto_front_first(directions) -> None:
    search = SearchSection(directions=directions)

    def trial(number: int, composite: float, alignment: float):
        t = create_trial(values=[alignment, composite], user_attrs={
            "composite": composite, "axes": {"alignment": alignment}, "lora": "x.safetensors"})
        t.number = number
        return t

    dominated, front_a, front_b = trial(0, 0.5, 0.5), trial(1, 0.6, 0.9), trial(2, 0.8, 0.6)
    assert [t.number for t in ranked([dominated, front_a, front_b], search)] == [2, 1, 0]


def test_finalists_are_scored_again_and_the_lucky_epoch_loses(tmp_path) -> None:
    # Trial 0's epoch 2 is a lucky draw (0.9 among 0.5s); on fresh samples it falls to 0.55. Trial 1 holds at 0.8.
    FINALISTS.clear()
    FINALIST_CALLS.clear()
    FINALISTS.update({(0, 2): 0.55, (1, 2): 0.8, (2, 1): 0.1})
    run, _trials = _run(tmp_path, {0: [0.5, 0.9, 0.5], 1: [0.8, 0.85, 0.8], 2: [0.2, 0.1, 0.1]}, epochs=3,
                        pruner="none", finalists=2)
    assert [c[:2] for c in FINALIST_CALLS] == [(0, 2), (1, 2)]  # the top two by search-time score, nothing else
    assert FINALIST_CALLS[0][2] == [2, 3, 4, 5, 6, 7, 8, 9]  # fresh seeds: 4 x sampling.seeds [0, 1], none reused
    assert FINALIST_CALLS[0][3] == Path("samples/epoch-0002")  # scored together with the epoch's own samples
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"], best["composite"]) == (1, 2, 0.8)
    assert best["finalist"]["search_composite"] == 0.85 and best["ranked_by"].startswith("finalist")
    assert (run / "best" / "finalist" / "samples" / "fresh.txt").is_file()
    listed = json.loads((run / "finalists.json").read_text())
    assert [(f["trial"], f["epoch"], f["composite"], f["search_composite"]) for f in listed["finalists"]] == [
        (0, 2, 0.55, 0.9), (1, 2, 0.8, 0.85)]
    # A resumed run re-scores nobody it has scored: the pick is the same, and no call is made.
    config = load_config(run / "config.yaml")
    assert finish_run(run, config, lambda m: None, ScriptedBackend()).number == 1 and len(FINALIST_CALLS) == 2


@pytest.mark.parametrize(("per_trial", "calls", "picked"), [
    (2, [(0, 2), (0, 3), (1, 2)], (0, 3, 0.85)),  # trial 0's runner-up is sampled again, and it holds
    (1, [(0, 2), (1, 2)], (1, 2, 0.75)),  # each trial's best epoch only: trial 0 is judged on its lucky epoch alone
])
def test_a_trials_runner_up_epoch_is_a_finalist(tmp_path, per_trial: int, calls: list, picked: tuple) -> None:
    # Trial 0's epoch 2 is a lucky draw (0.9; 0.6 on fresh samples); its epoch 3, a hair behind at search time
    # (0.88), is the better LoRA (0.85). A trial's best epoch is itself the maximum of its noisy epochs.
    FINALISTS.clear()
    FINALIST_CALLS.clear()
    FINALISTS.update({(0, 2): 0.6, (0, 3): 0.85, (1, 2): 0.75})
    run, _ = _run(tmp_path, {0: [0.5, 0.9, 0.88], 1: [0.7, 0.8, 0.7]}, epochs=3, pruner="none", finalists=3,
                  finalists_per_trial=per_trial)
    assert [c[:2] for c in FINALIST_CALLS] == calls
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"], best["composite"]) == picked
    from safetensors.torch import load_file

    weights = load_file(str(run / "best" / best["lora"]))["m.lora_down.weight"]  # the scripted file of (trial, epoch)
    assert float(weights[0, 0]) == picked[0] * 10 + picked[1]
    from loratune.report import build_report

    pick = build_report(run).path.read_text().split("id='pick'")[1].split("</section>")[0]
    assert ("up to 2 epochs of one trial: its best and its runners-up" in pick) == (per_trial == 2)


def test_resuming_with_runners_up_scores_only_the_new_finalist(tmp_path) -> None:
    # Finished with 1 per trial (trial 1 picked); `--resume --set search.finalists_per_trial=2` samples trial 0's
    # runner-up, and only it, and the pick moves to it.
    FINALISTS.clear()
    FINALIST_CALLS.clear()
    FINALISTS.update({(0, 2): 0.6, (0, 3): 0.85, (1, 2): 0.75})
    run, _ = _run(tmp_path, {0: [0.5, 0.9, 0.88], 1: [0.7, 0.8, 0.7]}, epochs=3, pruner="none", finalists=3)
    assert json.loads((run / "best" / "best.json").read_text())["trial"] == 1
    run_optimize(None, run, resume=True, backend=BACKEND, overrides=["search.finalists_per_trial=2"],
                 say=lambda m: None)
    assert [c[:2] for c in FINALIST_CALLS] == [(0, 2), (1, 2), (0, 3)]
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"], best["composite"]) == (0, 3, 0.85)


@pytest.mark.parametrize("weights", [None, {"alignment": 1.0}])
def test_runners_up_skip_diverged_and_infeasible_epochs(weights) -> None:
    # Trial 0: best epoch 3 (0.7); its epoch 2 diverged and its epoch 4 breaks a constraint, so its runner-up is
    # epoch 1. Under weights the values come from the axes (alignment alone here, equal to the composites).
    from loratune.search.selection import Ranking, finalists_to_score

    def row(epoch: int, value: float, **extra) -> dict:
        return {"epoch": epoch, "composite": value, "axes": {"alignment": value}, **extra}

    a = create_trial(value=0.7, user_attrs={"composite": 0.7, "best_epoch": 3, "lora": "a", "axes": {"alignment": 0.7}})
    b = create_trial(value=0.6, user_attrs={"composite": 0.6, "best_epoch": 2, "lora": "b", "axes": {"alignment": 0.6}})
    a._number, b._number = 0, 1
    epochs = {0: [row(1, 0.5), row(2, 0.69, diverged="validation loss rose"), row(3, 0.7),
                  row(4, 0.65, constraint=1.0)],
              1: [row(1, 0.55), row(2, 0.6)]}
    ranking = Ranking(weights=weights, epochs=epochs)
    top = finalists_to_score([a, b], SearchSection(finalists_per_trial=2), ranking, 4)
    assert [(c.number, c.epoch, c.composite) for c in top] == [(0, 3, 0.7), (1, 2, 0.6), (1, 1, 0.55), (0, 1, 0.5)]
    assert [(c.number, c.epoch) for c in finalists_to_score([a, b], SearchSection(), ranking, 4)] == [(0, 3), (1, 2)]
    # With standard errors measured, a runner-up its own samples tell apart from the best is no coin flip: trial 0's
    # epoch 1 trails by 0.2 against one standard error of the difference of 0.071; trial 1's epoch 1 by 0.05, within.
    for rows in epochs.values():
        for r in rows:
            r["composite_se"] = 0.05
    top = finalists_to_score([a, b], SearchSection(finalists_per_trial=2), ranking, 4)
    assert [(c.number, c.epoch) for c in top] == [(0, 3), (1, 2), (1, 1)]


@pytest.mark.parametrize(("spread", "close"), [(0.1, False), (0.2, True)])
def test_the_report_says_when_the_finalists_are_too_close_to_call(tmp_path, spread: float, close: bool) -> None:
    # Finalists 0.8 and 0.55 on their samples: a lead of 0.25, against one standard error of the difference of
    # 0.141 (0.1 each: told apart) or 0.283 (0.2 each: not).
    from loratune.report import build_report

    FINALISTS.clear()
    FINALIST_SE.clear()
    FINALISTS.update({(0, 2): 0.55, (1, 2): 0.8})
    FINALIST_SE.update({(0, 2): spread, (1, 2): spread})
    try:
        run, _ = _run(tmp_path, {0: [0.5, 0.9, 0.5], 1: [0.8, 0.85, 0.8]}, epochs=3, pruner="none", finalists=2)
    finally:
        FINALIST_SE.clear()
    listed = json.loads((run / "finalists.json").read_text())["finalists"]
    assert [f["composite_se"] for f in listed] == [spread, spread]
    pick = build_report(run).path.read_text().split("id='pick'")[1].split("</section>")[0]
    assert f"0.8 ± {spread:g}</td>" in pick and f"0.55 ± {spread:g}</td>" in pick
    assert ("id='finalists-close'" in pick) == close
    if close:
        assert "by 0.250, within the noise of the two scores (one standard error of the difference: 0.283)" in pick


def test_without_finalists_the_lucky_epoch_wins(tmp_path) -> None:
    FINALIST_CALLS.clear()
    run, _ = _run(tmp_path, {0: [0.5, 0.9, 0.5], 1: [0.8, 0.85, 0.8]}, epochs=3, pruner="none", finalists=0)
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"]) == (0, 2) and "finalist" not in best and not FINALIST_CALLS


def test_the_runner_does_not_import_calibrate() -> None:
    import subprocess

    code = "import sys, loratune.search.runner; print([m for m in sys.modules if m.startswith('loratune.calibrate')])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_an_epoch_whose_validation_loss_rose_is_no_candidate(tmp_path) -> None:
    # Trial 1 peaks at epoch 3, where its validation loss is 25% above its best: the LoRA is leaving the data.
    VALIDATION.clear()
    VALIDATION.update({1: [0.040, 0.041, 0.050]})
    try:
        run, trials = _run(tmp_path, {0: [0.5, 0.6, 0.6], 1: [0.55, 0.7, 0.95]}, epochs=3, pruner="none", finalists=0)
    finally:
        VALIDATION.clear()
    assert trials[1].user_attrs["best_epoch"] == 2 and trials[1].value == 0.7
    scores = json.loads((run / "trials" / "0001" / "scores.json").read_text())
    assert scores["epochs"][2]["diverged"].startswith("validation loss rose 0.0400 -> 0.0500 (+25%")
    assert scores["epochs"][2]["diagnosis"]["label"] == "overfit"
    best = json.loads((run / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"]) == (1, 2)
