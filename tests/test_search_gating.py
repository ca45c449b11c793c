"""Cheap signals before expensive ones (``loratune.search.gating``): which epochs a trial samples and scores, what an
unscored epoch is (no candidate), and the pruner acting on the validation loss alone."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import optuna
import torch
from optuna.trial import TrialState
from safetensors.torch import save_file

from loratune.config import load_config
from loratune.records import EpochScore
from loratune.search.config import GatingSection
from loratune.search.gating import EpochGate
from loratune.search.runner import run_optimize

# Per trial (by learning rate): the composite each epoch would score, and its validation loss. The composite peaks at
# an odd epoch, which every=2 never samples; the diverging trial's validation loss jumps at epoch 3.
CURVES = {
    1e-4: ([0.30, 0.40, 0.90, 0.50, 0.45], [0.050, 0.048, 0.046, 0.045, 0.044]),
    1e-3: ([0.20, 0.60, 0.95, 0.70, 0.20], [0.050, 0.040, 0.090, 0.100, 0.120]),
}


class CurveTrials:
    """A backend that asks the trial's gate like the real trainer does (``on_epoch.wants_samples``)."""

    sampled: ClassVar[list[tuple[float, int]]] = []

    def train(self, config, out_dir: Path, on_epoch: Callable[[EpochScore], None]) -> None:
        from loratune.train import StopTraining

        composites, losses = CURVES[config.train.learning_rate]
        for epoch in range(1, config.train.epochs + 1):
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
            lora.parent.mkdir(parents=True, exist_ok=True)
            save_file({"m.lora_down.weight": torch.zeros(1, 4)}, str(lora))
            loss, last = losses[epoch - 1], epoch == config.train.epochs
            seconds = {"train": 1.0, "validation": 0.1}
            if on_epoch.wants_samples(epoch, loss, last):
                CurveTrials.sampled.append((config.train.learning_rate, epoch))
                score = EpochScore(epoch, composites[epoch - 1], {"alignment": composites[epoch - 1]}, lora,
                                   validation_loss=loss, seconds=seconds | {"sample": 0.5, "score": 0.5})
            else:
                score = EpochScore(epoch, None, lora=lora, validation_loss=loss, seconds=seconds)
            try:
                on_epoch(score)
            except StopTraining:
                return

    def score_lora(self, config, lora, out_dir):
        raise AssertionError("no ensemble here")


def make() -> CurveTrials:
    return CurveTrials()


def test_the_gate_skips_off_stride_and_diverged_epochs_never_the_last() -> None:
    gate = EpochGate(GatingSection(every=2, skip_diverged=True, stop_diverged=False), last_epoch=6,
                     validation_rise=0.10)
    losses = [0.050, 0.045, 0.047, 0.060, 0.044, 0.090]
    assert [gate.wants_samples(e, v, e == 6) for e, v in enumerate(losses, 1)] == \
        [False, True, False, False, False, True]  # epoch 6 diverged too, but it is the last
    assert gate.skipped[1] == "scored every 2 epochs"
    assert gate.skipped[4].startswith("diverged: validation loss rose 0.0450 -> 0.0600")
    assert gate.stop(4) is None  # skip_diverged alone only saves the sampling
    assert GatingSection().stop_diverged  # the default (benchmarks/world_cost.py gating)
    stopping = EpochGate(GatingSection(), last_epoch=6, validation_rise=0.10)
    assert [stopping.wants_samples(e, v, e == 6) for e, v in enumerate(losses[:4], 1)] == [True, True, True, False]
    assert stopping.stop(4) is not None and stopping.stop(3) is None
    # No validation loss (an external trainer, validation off): nothing to judge by, every epoch is sampled.
    blind = EpochGate(GatingSection(skip_diverged=True, stop_diverged=False), last_epoch=3, validation_rise=0.10)
    assert all(blind.wants_samples(e, None, e == 3) for e in (1, 2, 3))


def test_unscored_epochs_are_no_candidates_and_a_diverging_trial_stops_on_its_validation_loss(tmp_path,
                                                                                               monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    CurveTrials.sampled = []
    config = load_config(None, [
        "search.n_trials=2", "search.sampler=grid", "search.phases.baseline=false", "search.phases.refine_trials=0",
        "search.phases.ensemble_top_k=0", "search.finalists=0", "search.pruner=none", "train.epochs=5",
        "search.heartbeat_interval=60", "search.space={learning_rate: {type: categorical, choices: [1.0e-4, 1.0e-3]}}",
        "search.gating={every: 2, stop_diverged: true}"])
    lines: list[str] = []
    run_optimize(config, tmp_path / "run", backend="test_search_gating:make", say=lines.append)
    # The search's bookkeeping (files, the study) is named only when it reaches 0.5% of the time: on a quiet
    # machine these 13 s of stand-in epochs can leave it below that.
    said = re.compile(r"time: 1\d s: training \d+%, validation \d+%, sampling \d+%, scoring \d+%(, search "
                      r"bookkeeping \d+%)?; 4 of 8 epochs not sampled \(search.gating\)")
    assert any(said.fullmatch(line) for line in lines), lines
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    slow, fast = sorted(study.trials, key=lambda t: t.params["learning_rate"])
    # lr 1e-4: epochs 2 and 4 on the stride, and the last; its best composite (0.90 at epoch 3) was never measured.
    scores = json.loads((tmp_path / "run" / slow.user_attrs["trial_dir"] / "scores.json").read_text())
    assert [e["epoch"] for e in scores["epochs"] if e["composite"] is not None] == [2, 4, 5]
    skipped = {e["epoch"]: e for e in scores["epochs"] if e["composite"] is None}
    assert set(skipped) == {1, 3} and all(e["skipped"] == "scored every 2 epochs" for e in skipped.values())
    assert all(e["diagnosis"]["label"] == "unscored" and "sample" not in e["seconds"] for e in skipped.values())
    assert slow.state == TrialState.COMPLETE and scores["best_epoch"] == 4
    assert scores["seconds"]["scored_epochs"] == 3 and scores["seconds"]["sample"] == 1.5
    assert scores["seconds"]["train"] == 5.0
    # lr 1e-3: its validation loss more than doubles at epoch 3 (off the stride anyway): the trial stops there,
    # before training epochs 4 and 5.
    assert fast.state == TrialState.PRUNED and fast.user_attrs["best_epoch"] == 2
    assert [e for lr, e in CurveTrials.sampled if lr == 1e-3] == [2]
    log = (tmp_path / "run" / fast.user_attrs["trial_dir"] / "log.txt").read_text()
    assert "pruned after epoch 3 (diverged: validation loss rose 0.0400 -> 0.0900" in log
    # RUN/best is the best *scored* epoch (lr 1e-3, epoch 2: 0.60), not lr 1e-4's unscored epoch 3 (0.90).
    best = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert (best["trial"], best["best_epoch"]) == (fast.number, 2)
    # The report says where the time went, phase by phase, and what the gate left unscored.
    from loratune.report import build_report

    html = build_report(tmp_path / "run").path.read_text()
    assert "id='time-table'" in html and "left 4 trained epochs unsampled and unscored" in html
    # 8 epochs trained (5 + 3) at 1 s, 4 of them sampled and scored at 0.5 + 0.5 s.
    assert "<td class='num'>8 (4 scored)</td><td class='num'>–</td><td class='num'>8</td><td class='num'>0.8</td>" \
           "<td class='num'>2</td><td class='num'>2</td>" in html
