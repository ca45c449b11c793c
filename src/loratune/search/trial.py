"""One trial, written once: params → train → every epoch sampled and scored → reported (and maybe pruned) → the
trial's files. The local worker and the Ray trainable both call ``run_trial``; only how an epoch is reported differs
(``on_epoch``), and who renames the finished folder into place.

A trial folder holds ``params.json`` (the searched params and the full effective train config), ``scores.json``
(rewritten after every epoch, so a pruned or crashed trial keeps its best epoch; its ``state`` says how the trial
ended once it has; each epoch's seconds of training, validation, sampling and scoring and the trial's totals beside
its wall time), ``log.txt`` and the trainer's ``checkpoints/``, ``samples/`` and ``scores/``. Which epochs are sampled
and scored is the trial's ``EpochGate``'s call (``search.gating``); an epoch it skips keeps its validation loss and
says why it was skipped.
"""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loratune.atomic import atomic_write_json, atomic_write_text
from loratune.config import Config
from loratune.errors import LoratuneError, first_line
from loratune.learning.config import LearningSection
from loratune.learning.diagnosis import EpochMeasures, diagnose, diverged
from loratune.records import EpochScore
from loratune.search.gating import EpochGate, epoch_config, more_seeds
from loratune.search.trials import TrialBackend
from loratune.timing import KINDS

NO_COMPOSITE = "no composite score (every axis missing)"
# The user attrs that describe a trial's best epoch (from ``scores.json``); a retry starts without them.
BEST_ATTRS = ("best_epoch", "composite", "axes", "backends", "stand_in", "lora", "samples", "copy_rate", "constraint",
              "diagnosis")

# on_epoch(score, best-epoch attrs, last) -> True to stop after this epoch (pruned). ``last``: the trial's final
# epoch, which is never pruned (stopping there saves nothing).
EpochHook = Callable[[EpochScore, dict[str, Any], bool], bool]


class TrialFailed(Exception):
    """A trial that failed for a reason of its own (diverged, out of memory, trainer crash): the study goes on."""


@dataclass
class TrialOutcome:
    epochs: list[EpochScore] = field(default_factory=list)
    pruned: bool = False
    failure: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # the best epoch's user attrs (``record_scores``)
    wall: float | None = None  # the trial's seconds from start to end
    search: float = 0.0  # seconds of the search's own work between epochs (records, the study, the pruner)

    @property
    def state(self) -> str:
        return "failed" if self.failure else "pruned" if self.pruned else "complete"

    @property
    def best(self) -> EpochScore | None:
        return best_epoch(self.epochs)


def best_epoch(epochs: list[EpochScore]) -> EpochScore | None:
    """The feasible epoch (within the copy constraint, not diverging) with the highest composite, the earliest on
    ties. When no scored epoch is feasible, the one that copies least (Optuna's order: feasible by value, infeasible
    by violation), a diverging one before a copying one: the trial then reports that best, and a copying best is no
    candidate. None when no epoch was scored."""
    scored = [e for e in epochs if e.composite is not None]
    feasible = [e for e in scored if e.feasible]
    if feasible:
        return max(feasible, key=lambda e: e.composite)  # type: ignore[arg-type,return-value]
    return min(scored, key=lambda e: (e.constraint or 0.0, -e.composite), default=None)  # type: ignore[operator]


def epoch_diagnoses(epochs: list[EpochScore], learning: LearningSection) -> list[dict[str, Any]]:
    """Each epoch's diagnosis (``loratune.learning.diagnosis``) as written to ``scores.json``; an epoch the gate did
    not score is ``unscored`` unless its validation loss alone says it diverged."""
    rows = [EpochMeasures(e.epoch, e.normalised, e.copy_rate, e.validation_loss) for e in epochs]
    found = diagnose(rows, learning.identity_low, learning.overfit_drop, learning.max_copy_rate,
                     learning.validation_rise)
    return [{"label": "unscored", "rule": e.skipped} if e.skipped and not e.diverged else d.to_json()
            for e, d in zip(epochs, found)]


def trial_seconds(epochs: list[EpochScore], wall: float | None = None, search: float = 0.0) -> dict[str, Any]:
    """The trial's seconds per kind (``loratune.timing.KINDS``) summed over its epochs, ``search``: the search's own
    work between epochs (files, the study, the pruner), the device(s) they ran on, the epochs sampled and skipped, and
    ``wall``: what the trial took from start to end."""
    totals = {kind: round(sum(e.seconds.get(kind, 0.0) for e in epochs), 3) for kind in KINDS if kind != "search"}
    out: dict[str, Any] = {**totals, "search": round(search, 3),
                           "devices": sorted({e.device for e in epochs if e.device}),
                           "scored_epochs": sum(1 for e in epochs if not e.skipped),
                           "skipped_epochs": sum(1 for e in epochs if e.skipped),
                           "raced_epochs": sum(1 for e in epochs if e.raced)}
    if wall is not None:
        out["wall"] = round(wall, 3)
    return out


def record_scores(folder: Path, epochs: list[EpochScore], state: str | None = None,
                  failure: str | None = None, learning: LearningSection | None = None,
                  wall: float | None = None, search: float = 0.0) -> dict[str, Any]:
    """Write the trial's ``scores.json``; returns the best epoch's user attrs (paths relative to ``folder``).
    ``learning``: the diagnosis thresholds (default: ``evaluation.learning``'s defaults); ``wall``: the trial's
    seconds from start to end, once it has ended; ``search``: its seconds of search bookkeeping (``trial_seconds``)."""
    best = best_epoch(epochs) or (epochs[-1] if epochs else None)
    diagnoses = epoch_diagnoses(epochs, learning or LearningSection())

    def rel(path: Path | None) -> str | None:
        return path.relative_to(folder).as_posix() if path is not None and path.is_relative_to(folder) else None

    attrs: dict[str, Any] = {
        "best_epoch": best.epoch if best else None,
        "composite": best.composite if best else None,
        "axes": best.normalised if best else {},
        "backends": best.backends if best else {},
        "stand_in": best.stand_in if best else False,
        # Only a scored epoch's LoRA is a candidate for RUN/best.
        "lora": rel(best.lora) if best and best.composite is not None else None,
        "samples": rel(best.samples_dir) if best else None,
        "copy_rate": best.copy_rate if best else None,
        "constraint": best.constraint if best else None,
        "diagnosis": diagnoses[epochs.index(best)] if best else None,
    }
    atomic_write_json(folder / "scores.json", {
        **attrs, "state": state, "fail_reason": failure, "seconds": trial_seconds(epochs, wall, search),
        "epochs": [{"epoch": e.epoch, "composite": e.composite, "composite_se": e.composite_se, "axes": e.normalised,
                    "copy_rate": e.copy_rate, "constraint": e.constraint, "cmmd": e.cmmd,
                    "validation_loss": e.validation_loss,
                    "diverged": e.diverged, "diagnosis": d, "skipped": e.skipped, "raced": e.raced, "seconds": e.seconds,
                    "device": e.device}
                   for e, d in zip(epochs, diagnoses)],
    })
    return attrs


def epoch_lora(trial_dir: Path, epoch: int, attrs: dict[str, Any]) -> Path | None:
    """The epoch's kohya LoRA: the trial's recorded file for its best epoch, else the checkpoint layouts the trainers
    write (``checkpoints/epoch-NNNN/<name>.safetensors`` beside the diffusers file, or ``checkpoints/epoch-NNNN.safetensors``)."""
    from loratune.train.checkpoint import DIFFUSERS_FILE

    if attrs.get("best_epoch") == epoch and attrs.get("lora") and (trial_dir / attrs["lora"]).is_file():
        return trial_dir / attrs["lora"]
    folder = trial_dir / "checkpoints" / f"epoch-{epoch:04d}"
    found = sorted(p for p in folder.glob("*.safetensors") if p.name != DIFFUSERS_FILE) if folder.is_dir() else []
    if found:
        return found[0]
    single = folder.with_suffix(".safetensors")
    return single if single.is_file() else None


def epoch_samples(trial_dir: Path, epoch: int, attrs: dict[str, Any]) -> Path | None:
    """The folder of the epoch's samples: the recorded one for the best epoch, else the trainer's layout."""
    if attrs.get("best_epoch") == epoch and attrs.get("samples") and (trial_dir / attrs["samples"]).is_dir():
        return trial_dir / attrs["samples"]
    folder = trial_dir / "samples" / f"epoch-{epoch:04d}"
    return folder if folder.is_dir() else None


class EpochSink:
    """What a trial hands its backend as ``on_epoch``: called with each epoch's score, and asked before each epoch
    is sampled whether it should be (``wants_samples``, the trial's ``EpochGate``). A backend that never asks samples
    and scores every epoch."""

    def __init__(self, gate: EpochGate, receive: Callable[[EpochScore], None]) -> None:
        self.gate = gate
        self._receive = receive

    def wants_samples(self, epoch: int, validation_loss: float | None, last: bool) -> bool:
        return self.gate.wants_samples(epoch, validation_loss, last)

    def wants_more(self, epoch: int, composite: float | None, composite_se: float | None) -> bool:
        """After the epoch was scored on the gate's first seeds: should the backend sample the rest and score it on
        all of them (``search.gating.race``)? ``more_seeds`` are those seeds."""
        return self.gate.wants_more(epoch, composite, composite_se)

    @property
    def more_seeds(self) -> list[int]:
        return list(self.gate.more_seeds)

    def __call__(self, score: EpochScore) -> None:
        self._receive(score)


def run_trial(backend: TrialBackend, config: Config, params: dict[str, Any], number: int, phase: str,
              folder: Path, on_epoch: EpochHook, incumbent: float | None = None) -> TrialOutcome:
    """Train ``config`` (the params already applied) into ``folder``; each epoch the gate lets through is sampled
    and scored, and every epoch is handed to ``on_epoch``. A failure is returned, not raised (its best epoch so far
    stays a candidate); Ctrl-C propagates. ``incumbent``: the study's best composite so far (``search.gating.race``
    races the trial's epochs against it)."""
    from loratune.train import StopTraining

    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "params.json", {"number": number, "phase": phase, "params": params,
                                               "train": config.train.model_dump(mode="json", warnings=False)})
    outcome = TrialOutcome()
    log = [f"trial {number} ({phase}) params {json.dumps(params)}"]
    last_epoch = config.train.epochs
    learning = config.evaluation.learning
    gate = EpochGate(config.search.gating, last_epoch, learning.validation_rise, incumbent=incumbent,
                     more_seeds=more_seeds(config))

    def hook(score: EpochScore) -> None:
        entered = time.perf_counter()
        try:
            record(score)
        finally:
            outcome.search += time.perf_counter() - entered

    def record(score: EpochScore) -> None:
        score.diverged = diverged(score.validation_loss, [e.validation_loss for e in outcome.epochs],
                                  learning.validation_rise)
        if score.result is None and score.composite is None and score.epoch in gate.skipped:
            score.skipped = gate.skipped[score.epoch]
        score.raced = gate.raced.get(score.epoch) or score.raced
        gate.scored(score.composite if score.feasible else None)  # an epoch that cannot be the best sets no bar
        outcome.epochs.append(score)
        outcome.attrs = record_scores(folder, outcome.epochs, learning=learning, search=outcome.search)
        diagnosis = epoch_diagnoses(outcome.epochs, learning)[-1]
        log.append(f"epoch {score.epoch}: composite {score.composite}, copy rate {score.copy_rate}, "
                   f"{diagnosis['label']} ({diagnosis['rule']})")
        atomic_write_text(folder / "log.txt", "\n".join(log) + "\n")
        last = score.epoch >= last_epoch
        stop = gate.stop(score.epoch)
        if (on_epoch(score, outcome.attrs, last) or stop) and not last:
            outcome.pruned = True
            log.append(f"pruned after epoch {score.epoch}" + (f" ({stop})" if stop else ""))
            raise StopTraining(f"pruned at epoch {score.epoch}")

    try:
        backend.train(epoch_config(config), folder, EpochSink(gate, hook))
    except KeyboardInterrupt:
        atomic_write_text(folder / "log.txt", "\n".join([*log, "interrupted"]) + "\n")
        raise
    except StopTraining:  # a backend that lets the pruning signal through
        outcome.pruned = True
    except Exception as err:  # noqa: BLE001 - any trial failure is recorded and the study goes on
        outcome.failure = describe_failure(err)
        log.append(f"failed: {outcome.failure}\n{traceback.format_exc()}")
    scored = any(not e.skipped for e in outcome.epochs)
    if outcome.failure is None and outcome.best is None and not (outcome.pruned and not scored):
        outcome.failure = NO_COMPOSITE if scored else "no checkpoint was scored"
    log.append(outcome.state if not outcome.failure else f"failed: {outcome.failure}")
    outcome.wall = time.perf_counter() - started
    outcome.attrs = record_scores(folder, outcome.epochs, outcome.state, outcome.failure, learning, outcome.wall,
                                  outcome.search)
    atomic_write_text(folder / "log.txt", "\n".join(log) + "\n")
    return outcome


def run_ensemble(backend: TrialBackend, config: Config, members: list[tuple[int, Path]], folder: Path,
                 run_root: Path) -> TrialOutcome:
    """The ensemble trial: the members' best-epoch LoRAs merged (``search.phases``' method), sampled and scored
    like any trial's epoch. A merge that cannot be made (avg over different ranks) fails this trial only."""
    from loratune.lora.merge import merge_files

    phases = config.search.phases
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "params.json", {
        "phase": "ensemble", "members": [n for n, _ in members], "method": phases.ensemble_method,
        "rank": phases.ensemble_rank, "sources": [p.relative_to(run_root).as_posix() for _, p in members]})
    outcome = TrialOutcome()
    log = [f"ensemble of trials {[n for n, _ in members]} ({phases.ensemble_method})"]
    try:
        lora = merge_files([p for _, p in members], folder / "checkpoints" / "ensemble.safetensors",
                           method=phases.ensemble_method,
                           rank=phases.ensemble_rank if phases.ensemble_method == "svd" else None)
        outcome.epochs.append(backend.score_lora(epoch_config(config), lora, folder))
        log.append(f"composite {outcome.epochs[0].composite}")
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001
        outcome.failure = describe_failure(err)
        log.append(f"failed: {outcome.failure}\n{traceback.format_exc()}")
    if outcome.failure is None and outcome.best is None:
        outcome.failure = NO_COMPOSITE
    outcome.wall = time.perf_counter() - started
    outcome.attrs = record_scores(folder, outcome.epochs, outcome.state, outcome.failure, config.evaluation.learning,
                                  outcome.wall)
    atomic_write_text(folder / "log.txt", "\n".join(log) + "\n")
    return outcome


def describe_failure(err: BaseException) -> str:
    """One line for a failed trial: diverged / out of memory / trainer exit code / the error's first line."""
    from loratune.train import TrainingDiverged

    if isinstance(err, TrainingDiverged):
        return f"diverged: {err}"
    line = first_line(err)  # "Type: first line", safe on empty messages
    text = line.removeprefix(f"{type(err).__name__}:").strip()
    if "out of memory" in str(err).lower() or type(err).__name__ == "OutOfMemoryError":
        return f"out of memory: {text or line}"
    if isinstance(err, subprocess.CalledProcessError):
        return f"trainer exited with code {err.returncode}"
    if isinstance(err, LoratuneError):
        return text or line
    return line
