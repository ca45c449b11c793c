"""One trial, written once: params → train → every epoch sampled and scored → reported (and maybe pruned) → the
trial's files. The local worker and the Ray trainable both call ``run_trial``; only how an epoch is reported differs
(``on_epoch``), and who renames the finished folder into place.

A trial folder holds ``params.json`` (the searched params and the full effective train config), ``scores.json``
(rewritten after every epoch, so a pruned or crashed trial keeps its best epoch; its ``state`` says how the trial
ended once it has), ``log.txt`` and the trainer's ``checkpoints/``, ``samples/`` and ``scores/``.
"""

from __future__ import annotations

import json
import subprocess
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
from loratune.search.trials import TrialBackend

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
    """Each epoch's diagnosis (``loratune.learning.diagnosis``) as written to ``scores.json``."""
    rows = [EpochMeasures(e.epoch, e.normalised, e.copy_rate, e.validation_loss) for e in epochs]
    return [d.to_json() for d in diagnose(rows, learning.identity_low, learning.overfit_drop, learning.max_copy_rate,
                                          learning.validation_rise)]


def record_scores(folder: Path, epochs: list[EpochScore], state: str | None = None,
                  failure: str | None = None, learning: LearningSection | None = None) -> dict[str, Any]:
    """Write the trial's ``scores.json``; returns the best epoch's user attrs (paths relative to ``folder``).
    ``learning``: the diagnosis thresholds (default: ``evaluation.learning``'s defaults)."""
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
        **attrs, "state": state, "fail_reason": failure,
        "epochs": [{"epoch": e.epoch, "composite": e.composite, "axes": e.normalised, "copy_rate": e.copy_rate,
                    "constraint": e.constraint, "cmmd": e.cmmd, "validation_loss": e.validation_loss,
                    "diverged": e.diverged, "diagnosis": d}
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


def run_trial(backend: TrialBackend, config: Config, params: dict[str, Any], number: int, phase: str,
              folder: Path, on_epoch: EpochHook) -> TrialOutcome:
    """Train ``config`` (the params already applied) into ``folder`` with every epoch scored and handed to
    ``on_epoch``. A failure is returned, not raised (its best epoch so far stays a candidate); Ctrl-C propagates."""
    from loratune.train import StopTraining

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "params.json", {"number": number, "phase": phase, "params": params,
                                               "train": config.train.model_dump(mode="json", warnings=False)})
    outcome = TrialOutcome()
    log = [f"trial {number} ({phase}) params {json.dumps(params)}"]
    last_epoch = config.train.epochs
    learning = config.evaluation.learning

    def hook(score: EpochScore) -> None:
        score.diverged = diverged(score.validation_loss, [e.validation_loss for e in outcome.epochs],
                                  learning.validation_rise)
        outcome.epochs.append(score)
        outcome.attrs = record_scores(folder, outcome.epochs, learning=learning)
        diagnosis = epoch_diagnoses(outcome.epochs, learning)[-1]
        log.append(f"epoch {score.epoch}: composite {score.composite}, copy rate {score.copy_rate}, "
                   f"{diagnosis['label']} ({diagnosis['rule']})")
        atomic_write_text(folder / "log.txt", "\n".join(log) + "\n")
        last = score.epoch >= last_epoch
        if on_epoch(score, outcome.attrs, last) and not last:
            outcome.pruned = True
            log.append(f"pruned after epoch {score.epoch}")
            raise StopTraining(f"pruned at epoch {score.epoch}")

    try:
        backend.train(config, folder, hook)
    except KeyboardInterrupt:
        atomic_write_text(folder / "log.txt", "\n".join([*log, "interrupted"]) + "\n")
        raise
    except StopTraining:  # a backend that lets the pruning signal through
        outcome.pruned = True
    except Exception as err:  # noqa: BLE001 - any trial failure is recorded and the study goes on
        outcome.failure = describe_failure(err)
        log.append(f"failed: {outcome.failure}\n{traceback.format_exc()}")
    if outcome.failure is None and outcome.best is None:
        outcome.failure = NO_COMPOSITE if outcome.epochs else "no checkpoint was scored"
    log.append(outcome.state if not outcome.failure else f"failed: {outcome.failure}")
    outcome.attrs = record_scores(folder, outcome.epochs, outcome.state, outcome.failure, learning)
    atomic_write_text(folder / "log.txt", "\n".join(log) + "\n")
    return outcome


def run_ensemble(backend: TrialBackend, config: Config, members: list[tuple[int, Path]], folder: Path,
                 run_root: Path) -> TrialOutcome:
    """The ensemble trial: the members' best-epoch LoRAs merged (``search.phases``' method), sampled and scored
    like any trial's epoch. A merge that cannot be made (avg over different ranks) fails this trial only."""
    from loratune.lora.merge import merge_files

    phases = config.search.phases
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
        outcome.epochs.append(backend.score_lora(config, lora, folder))
        log.append(f"composite {outcome.epochs[0].composite}")
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001
        outcome.failure = describe_failure(err)
        log.append(f"failed: {outcome.failure}\n{traceback.format_exc()}")
    if outcome.failure is None and outcome.best is None:
        outcome.failure = NO_COMPOSITE
    outcome.attrs = record_scores(folder, outcome.epochs, outcome.state, outcome.failure, config.evaluation.learning)
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
