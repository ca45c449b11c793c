"""``loratune optimize``: the three-phase study over a run directory, resumable, with N local worker processes.

Phases (recorded per trial as user_attr ``phase``):
1. ``baseline`` — the config's own train values, enqueued when the study is created;
2. ``search`` — the sampler (TPE default, GP/random/grid) over ``search.space``, seeded by trial number so workers
   and resumed runs never replay each other's suggestions;
3. ``refine`` — the same sampler in a space narrowed around the best trial so far (numeric ranges shrunk to
   ``refine_width``, categoricals fixed), then one ``ensemble`` trial: the top-k trials' best-epoch LoRAs merged
   (``loratune.lora.merge``), sampled and scored like any trial.

A trial's phase follows from its number (the first ``baseline + search`` counted trials search, the next refine), so
concurrent workers agree without talking to each other. Every epoch is scored and reported; the pruner may stop a
trial (``StopTraining``), whose best epoch so far stays on disk. A trial's value is its best epoch's composite.

Trial folders are built under a temporary name and renamed into ``trials/NNNN`` when the trial ends, so a folder under
its final name is always complete, and a resumed run never writes into one. A killed worker's trial stops beating,
is failed after the grace period and retried under a new number with the same params (Optuna's
Optuna's retry callback); a Ctrl-C'd trial is retried on ``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from loratune.atomic import atomic_dir, atomic_write_json, atomic_write_text
from loratune.config import Config, dump_config, load_config
from loratune.errors import LoratuneError, first_line
from loratune.search.config import ParamSpec, SearchSection
from loratune.search.space import apply_params, baseline_params, check_space, narrow, suggest
from loratune.search.storage import STUDY_NAME, directions, open_storage, retry_callback, study_exists
from loratune.records import EpochScore
from loratune.search.trials import TrialBackend, load_backend

BUDGET_PHASES = ("baseline", "search", "refine")
# Failures that used up their slot (the trial really ran and failed); crashes and Ctrl-C are retried instead.
_NOT_COUNTED_REASONS = (None, "interrupted", "surplus")
MAX_CONSECUTIVE_FAILURES = 3
CONFIG_FILE = "config.yaml"
NO_COMPOSITE = "no composite score (every axis missing)"


class TrialFailed(Exception):
    """A trial that failed for a reason of its own (diverged, out of memory, trainer crash): the study goes on."""


@dataclass(frozen=True)
class Plan:
    baseline: int
    search: int
    refine: int
    ensemble: bool

    @property
    def budget(self) -> int:
        return self.baseline + self.search + self.refine

    @classmethod
    def of(cls, search: SearchSection) -> Plan:
        baseline = 1 if search.phases.baseline else 0
        refine = min(search.phases.refine_trials, max(0, search.n_trials - baseline - 1))
        return cls(baseline, search.n_trials - baseline - refine, refine, search.phases.ensemble_top_k >= 2)


def fail_reason(t: FrozenTrial) -> str | None:
    return t.user_attrs.get("fail_reason")


def counted(t: FrozenTrial) -> bool:
    """Whether a trial holds one of the budget's slots."""
    if t.state == TrialState.FAIL:
        reason = fail_reason(t)
        return not (reason is None or reason == "interrupted" or reason.startswith("surplus"))
    return True


def _decide(in_budget: int, ensemble_taken: bool, plan: Plan) -> str:
    if in_budget < plan.baseline + plan.search:
        return "search"
    if in_budget < plan.budget:
        return "refine"
    if plan.ensemble and not ensemble_taken:
        return "ensemble"
    return "surplus"


def effective_phases(trials: Sequence[FrozenTrial], plan: Plan) -> dict[int, str]:
    """Phase per counted trial. A trial another worker has just asked for may not carry its phase yet; it gets the
    phase that worker is deciding by the same rule, so concurrent workers never both take the last slot."""
    phases: dict[int, str] = {}
    in_budget, ensemble_taken = 0, False
    for t in sorted(trials, key=lambda t: t.number):
        if not counted(t):
            continue
        phase = t.user_attrs.get("phase") or _decide(in_budget, ensemble_taken, plan)
        phases[t.number] = phase
        in_budget += phase in BUDGET_PHASES
        ensemble_taken |= phase == "ensemble"
    return phases


def assign_phase(trials: Sequence[FrozenTrial], number: int, plan: Plan) -> str:
    """The phase of new trial ``number``: decided by the counted trials numbered before it."""
    phases = effective_phases([t for t in trials if t.number < number], plan)
    in_budget = sum(1 for p in phases.values() if p in BUDGET_PHASES)
    return _decide(in_budget, "ensemble" in phases.values(), plan)


def next_action(trials: Sequence[FrozenTrial], plan: Plan, own_running: int = 0) -> str:
    """``run`` (ask for a trial), ``wait`` (others' trials still running) or ``done``."""
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    phases = effective_phases(trials, plan)
    if sum(1 for p in phases.values() if p in BUDGET_PHASES) < plan.budget:
        return "run"
    running = sum(1 for t in trials if t.state == TrialState.RUNNING) - own_running
    if plan.ensemble and "ensemble" not in phases.values():
        if not any(t.state == TrialState.COMPLETE for t in trials):
            return "done"  # nothing to merge
        return "wait" if running else "run"
    return "wait" if running else "done"


def make_pruner(search: SearchSection, max_epochs: int) -> optuna.pruners.BasePruner:
    if search.directions or search.pruner == "none":
        # Optuna cannot prune multi-objective studies (should_prune raises NotImplementedError).
        return optuna.pruners.NopPruner()
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(max_epochs, 1), reduction_factor=3)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.PatientPruner(None, patience=search.patience)


def _grid(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            grid[name] = list(spec.choices or [])
            continue
        lo, hi = float(spec.low or 0), float(spec.high or 0)
        points = [lo, math.sqrt(lo * hi) if spec.log else (lo + hi) / 2, hi]
        grid[name] = sorted({round(p) if spec.type == "int" else p for p in points})
    return grid


def make_sampler(search: SearchSection, phase: str, number: int, fixed: dict[str, Any] | None = None,
                 n_startup: int = 10) -> optuna.samplers.BaseSampler:
    seed = search.seed + number  # per trial: resumed runs and parallel workers draw fresh suggestions
    base: optuna.samplers.BaseSampler
    if search.sampler == "grid" and phase == "search":
        return optuna.samplers.GridSampler(_grid(search.space), seed=search.seed)
    if search.sampler == "gp":
        base = optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    elif search.sampler == "random":
        base = optuna.samplers.RandomSampler(seed=seed)
    elif search.directions:
        base = optuna.samplers.NSGAIISampler(seed=seed)
    else:
        base = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup)
    if phase == "refine" and fixed:
        return optuna.samplers.PartialFixedSampler(fixed, base)
    return base


def best_trials(trials: Sequence[FrozenTrial], search: SearchSection) -> list[FrozenTrial]:
    """Completed trials, best first (multi-objective: Pareto front first, then by composite)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    if not search.directions:
        return sorted(done, key=lambda t: t.value, reverse=True)  # type: ignore[arg-type,return-value]
    front = {t.number for t in _pareto(done, directions(search))}
    return sorted(done, key=lambda t: (t.number in front, t.user_attrs.get("composite") or -math.inf), reverse=True)


def _pareto(trials: list[FrozenTrial], dirs: list[str]) -> list[FrozenTrial]:
    signs = [1.0 if d == "maximize" else -1.0 for d in dirs]

    def dominates(a: FrozenTrial, b: FrozenTrial) -> bool:
        pa = [s * v for s, v in zip(signs, a.values)]
        pb = [s * v for s, v in zip(signs, b.values)]
        return all(x >= y for x, y in zip(pa, pb)) and any(x > y for x, y in zip(pa, pb))

    return [t for t in trials if not any(dominates(o, t) for o in trials if o is not t)]


def _objective_values(search: SearchSection, score: EpochScore) -> list[float] | float:
    if not search.directions:
        if score.composite is None:
            raise TrialFailed(NO_COMPOSITE)
        return score.composite
    values = []
    for axis in search.directions:
        v = score.composite if axis == "composite" else score.normalised.get(axis)
        if v is None:
            raise TrialFailed(f"axis {axis} could not be computed")
        values.append(float(v))
    return values


def _epoch_key(score: EpochScore) -> float:
    return score.composite if score.composite is not None else -math.inf


class Worker:
    """One process's share of the study: asks for trials until the plan is done."""

    def __init__(self, run_dir: Path, config: Config, backend: TrialBackend, index: int = 0,
                 say: Callable[[str], None] | None = None) -> None:
        self.run_dir = run_dir
        self.config = config
        self.search = config.search
        self.plan = Plan.of(self.search)
        self.backend = backend
        self.index = index
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.storage = open_storage(run_dir, self.search)
        self.study = optuna.load_study(study_name=STUDY_NAME, storage=self.storage,
                                       pruner=make_pruner(self.search, self._max_epochs()))
        self.consecutive_failures = 0

    def _max_epochs(self) -> int:
        spec = self.search.space.get("epochs")
        return int(spec.high) if spec is not None and spec.high is not None else self.config.train.epochs

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            optuna.storages.fail_stale_trials(self.study)
            trials = self.study.get_trials(deepcopy=False)
            action = next_action(trials, self.plan)
            if action == "done":
                return
            if action == "wait":
                time.sleep(min(self.search.heartbeat_interval, 5))
                continue
            guess = assign_phase(trials, len(trials), self.plan)
            self.study.sampler = self._sampler(guess, len(trials), trials)
            self.study.optimize(self.objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
            last = self.study.get_trials(deepcopy=False)
            mine = [t for t in last if t.user_attrs.get("worker_pid") == os.getpid()]
            if mine and mine[-1].state == TrialState.FAIL and not (fail_reason(mine[-1]) or "").startswith("surplus"):
                self.consecutive_failures += 1
                if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    raise LoratuneError(f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; last: "
                                        f"{fail_reason(mine[-1])} (see {self.run_dir / 'trials'})")
            elif mine:
                self.consecutive_failures = 0

    def _sampler(self, phase: str, number: int, trials: Sequence[FrozenTrial]) -> optuna.samplers.BaseSampler:
        fixed = self._refine_space(trials)[1] if phase == "refine" else None
        n_startup = max(2, min(10, self.plan.search // 2))
        return make_sampler(self.search, phase, number, fixed, n_startup)

    def _refine_space(self, trials: Sequence[FrozenTrial]) -> tuple[dict[str, ParamSpec], dict[str, Any]]:
        ranked = [t for t in best_trials(trials, self.search) if t.user_attrs.get("phase") in BUDGET_PHASES]
        if not ranked:
            return dict(self.search.space), {}
        return narrow(self.search.space, ranked[0].params, self.search.phases.refine_width)

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        try:
            return self._objective(trial)
        except TrialFailed as err:
            # Every failure carries its reason: without one the trial would count as a crash (slot reopened).
            if not trial.user_attrs.get("fail_reason"):
                trial.set_user_attr("fail_reason", str(err) or "failed")
            raise

    def _objective(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr("worker_pid", os.getpid())
        trials = self.study.get_trials(deepcopy=False)
        phase = trial.user_attrs.get("phase") or assign_phase(trials, trial.number, self.plan)
        trial.set_user_attr("phase", phase)
        frozen = next((t for t in trials if t.number == trial.number), None)
        retry_of = frozen.system_attrs.get("failed_trial") if frozen is not None else None
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        if phase == "surplus":
            trial.set_user_attr("fail_reason", "surplus: another worker took the last slot")
            raise TrialFailed("surplus")
        if phase == "ensemble":
            return self._ensemble(trial, trials)
        space = dict(self.search.space)
        if phase == "refine":
            space, fixed = self._refine_space(trials)
            if not trial.params:  # an enqueued/retried trial keeps its own params and sampler state
                self.study.sampler = make_sampler(self.search, phase, trial.number, fixed)
        params = suggest(trial, space)
        return self._train(trial, phase, params)

    # -- one training trial ---------------------------------------------------------------------------------------
    def _trial_dir(self, number: int) -> Path:
        final = self.run_dir / "trials" / f"{number:04d}"
        if final.exists():
            raise LoratuneError(f"{final}: already exists; refusing to overwrite a finished trial's files")
        return final

    def _train(self, trial: optuna.Trial, phase: str, params: dict[str, Any]) -> float | list[float]:
        config = apply_params(self.config, params, self.search.space)
        final = self._trial_dir(trial.number)
        rel = final.relative_to(self.run_dir).as_posix()
        trial.set_user_attr("trial_dir", rel)
        epochs: list[EpochScore] = []
        log: list[str] = [f"trial {trial.number} ({phase}) params {json.dumps(params)}"]
        pruned = False
        failure: str | None = None
        with atomic_dir(final) as tmp:
            atomic_write_json(tmp / "params.json", {"number": trial.number, "phase": phase, "params": params,
                                                    "train": config.train.model_dump(mode="json", warnings=False)})

            def on_epoch(score: EpochScore) -> None:
                nonlocal pruned
                epochs.append(score)
                log.append(f"epoch {score.epoch}: composite {score.composite}")
                self._record_best(trial, tmp, epochs)
                if self.search.directions or score.composite is None:
                    return
                trial.report(score.composite, score.epoch)
                if trial.should_prune():
                    from loratune.train import StopTraining

                    pruned = True
                    log.append(f"pruned after epoch {score.epoch}")
                    raise StopTraining(f"pruned at epoch {score.epoch}")

            try:
                self.backend.train(config, tmp, on_epoch)
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                raise
            except Exception as err:  # noqa: BLE001 - any trial failure is recorded and the study goes on
                from loratune.train import StopTraining

                if isinstance(err, StopTraining):  # a backend that lets StopTraining through
                    pruned = True
                else:
                    failure = _describe_failure(err)
                    log.append(f"failed: {failure}\n{traceback.format_exc()}")
            log.append("pruned" if pruned else "failed" if failure else "complete")
            atomic_write_text(tmp / "log.txt", "\n".join(log) + "\n")
        if failure is not None:
            trial.set_user_attr("fail_reason", failure)
            self.say(f"trial {trial.number} ({phase}) failed: {failure}")
            raise TrialFailed(failure)
        if not epochs:
            trial.set_user_attr("fail_reason", "no checkpoint was scored")
            raise TrialFailed("no checkpoint was scored")
        best = max(epochs, key=_epoch_key)
        value = _objective_values(self.search, best)
        if pruned:
            self.say(f"trial {trial.number} ({phase}) pruned at epoch {epochs[-1].epoch} (best {best.composite})")
            raise optuna.TrialPruned()
        self.say(f"trial {trial.number} ({phase}) value {value} at epoch {best.epoch}")
        return value

    def _record_best(self, trial: optuna.Trial, tmp: Path, epochs: list[EpochScore]) -> None:
        for key, value in record_scores(tmp, epochs).items():
            trial.set_user_attr(key, value)

    # -- the ensemble trial ---------------------------------------------------------------------------------------
    def _ensemble(self, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> float | list[float]:
        from loratune.lora.merge import merge_files

        phases = self.search.phases
        members = [t for t in best_trials(trials, self.search)
                   if t.user_attrs.get("phase") in BUDGET_PHASES and t.user_attrs.get("lora")][: phases.ensemble_top_k]
        if len(members) < 2:
            trial.set_user_attr("fail_reason", "ensemble: fewer than 2 finished trials with a LoRA")
            raise TrialFailed("ensemble: fewer than 2 trials")
        final = self._trial_dir(trial.number)
        trial.set_user_attr("trial_dir", final.relative_to(self.run_dir).as_posix())
        trial.set_user_attr("members", [t.number for t in members])
        paths = [self.run_dir / t.user_attrs["trial_dir"] / t.user_attrs["lora"] for t in members]
        with atomic_dir(final) as tmp:
            atomic_write_json(tmp / "params.json", {"number": trial.number, "phase": "ensemble",
                                                    "members": [t.number for t in members],
                                                    "method": phases.ensemble_method, "rank": phases.ensemble_rank,
                                                    "sources": [str(p.relative_to(self.run_dir)) for p in paths]})
            try:
                # Weights: an even average; the merged LoRA is scored like any trial. A merge that cannot be made
                # (avg over members of different ranks) fails this trial only: the study and RUN/best go on.
                lora = merge_files(paths, tmp / "checkpoints" / "ensemble.safetensors", method=phases.ensemble_method,
                                   rank=phases.ensemble_rank if phases.ensemble_method == "svd" else None)
                score = self.backend.score_lora(self.config, lora, tmp)
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted")
                raise
            except Exception as err:  # noqa: BLE001
                failure = _describe_failure(err)
                atomic_write_text(tmp / "log.txt", f"ensemble failed: {failure}\n{traceback.format_exc()}")
                score = None
            if score is not None:
                self._record_best(trial, tmp, [score])
                atomic_write_text(tmp / "log.txt", f"ensemble of trials {[t.number for t in members]}: "
                                                   f"composite {score.composite}\n")
        if score is None:
            trial.set_user_attr("fail_reason", failure)
            raise TrialFailed(failure)
        value = _objective_values(self.search, score)
        self.say(f"trial {trial.number} (ensemble of {[t.number for t in members]}) value {value}")
        return value


def record_scores(tmp: Path, epochs: list[EpochScore]) -> dict[str, Any]:
    """Write the trial's scores.json after every epoch (a pruned trial keeps it too); returns the best-epoch user
    attrs (best_epoch, composite, axes, stand_in, lora, samples), paths relative to the trial folder."""
    best = max(epochs, key=_epoch_key)

    def rel(path: Path | None) -> str | None:
        return path.relative_to(tmp).as_posix() if path is not None and path.is_relative_to(tmp) else None

    attrs = {"best_epoch": best.epoch, "composite": best.composite, "axes": best.normalised,
             "stand_in": best.stand_in, "lora": rel(best.lora), "samples": rel(best.samples_dir)}
    atomic_write_json(tmp / "scores.json", {
        **attrs, "epochs": [{"epoch": e.epoch, "composite": e.composite, "axes": e.normalised} for e in epochs],
    })
    return attrs


def _describe_failure(err: BaseException) -> str:
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


def quiet_optuna() -> None:
    """Our own one line per trial replaces Optuna's; heartbeats and PartialFixedSampler are stable enough for us."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)


# -- the front door -----------------------------------------------------------------------------------------------
def prepare_run(run_dir: Path, config: Config | None, resume: bool) -> Config:
    """Create (or reopen for ``resume``) the run directory and its study; returns the run's config."""
    config_file = run_dir / CONFIG_FILE
    if run_dir.exists() and not run_dir.is_dir():
        raise LoratuneError(f"{run_dir}: not a directory (--run names the run directory)")
    if resume:
        if not config_file.is_file():
            raise LoratuneError(f"{run_dir}: no {CONFIG_FILE}; nothing to resume")
        stored = load_config(config_file)
        storage = open_storage(run_dir, stored.search)
        if not study_exists(storage):
            raise LoratuneError(f"{run_dir}: no study in {stored.search.storage or 'study.db'}; nothing to resume")
        _retry_interrupted(optuna.load_study(study_name=STUDY_NAME, storage=storage), stored.search)
        _clean_partial_dirs(run_dir, storage)
        return stored
    if config is None:
        raise LoratuneError("optimize: a CONFIG is needed to start a new run")
    if config_file.exists():
        raise LoratuneError(f"{run_dir}: already holds a run; pass --resume to continue it (or choose another --run)")
    check_space(config, config.search.space)
    if not config.train.sample_checkpoints:
        raise LoratuneError("train.sample_checkpoints: must be true for a search (each epoch is scored)")
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(run_dir, config.search)
    if study_exists(storage):
        raise LoratuneError(f"search.storage: a study named {STUDY_NAME!r} already exists there; use --resume")
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, directions=directions(config.search))
    study.set_user_attr("directions", config.search.directions or {"composite": "maximize"})
    if config.search.phases.baseline:
        study.enqueue_trial(baseline_params(config, config.search.space), user_attrs={"phase": "baseline"},
                            skip_if_exists=True)
    atomic_write_text(config_file, dump_config(config))
    return config


def _retry_interrupted(study: optuna.Study, search: SearchSection) -> None:
    """Ctrl-C'd trials are FAIL with reason ``interrupted``: enqueue each once more, as a crash retry would."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    callback = retry_callback(search)
    for t in trials:
        if t.state == TrialState.FAIL and fail_reason(t) == "interrupted" and t.number not in retried:
            callback(study, t)


def _clean_partial_dirs(run_dir: Path, storage: Any) -> None:
    """Temporary folders of trials that can no longer finish (failed/crashed) are moved aside, never reused."""
    trials_dir = run_dir / "trials"
    if not trials_dir.is_dir():
        return
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    state = {f"{t.number:04d}": t.state for t in study.get_trials(deepcopy=False)}
    for tmp in trials_dir.glob(".????.*"):
        number = tmp.name[1:5]
        if state.get(number) == TrialState.FAIL:
            target = trials_dir / "partial" / f"{number}-{tmp.name.rsplit('.', 1)[-1]}"
            target.parent.mkdir(exist_ok=True)
            os.replace(tmp, target)


def copy_best(run_dir: Path, config: Config) -> FrozenTrial | None:
    """RUN/best/: the best trial's best-epoch LoRA, its samples, scores and params (replaced atomically)."""
    storage = open_storage(run_dir, config.search)
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    ranked = [t for t in best_trials(study.get_trials(deepcopy=False), config.search) if t.user_attrs.get("lora")]
    if not ranked:
        return None
    best = ranked[0]
    trial_dir = run_dir / best.user_attrs["trial_dir"]
    with atomic_dir(run_dir / "best") as tmp:
        lora = trial_dir / best.user_attrs["lora"]
        shutil.copy2(lora, tmp / lora.name)
        for name in ("params.json", "scores.json"):
            if (trial_dir / name).is_file():
                shutil.copy2(trial_dir / name, tmp / name)
        if best.user_attrs.get("samples"):
            shutil.copytree(trial_dir / best.user_attrs["samples"], tmp / "samples")
        epoch_scores = trial_dir / "scores" / f"epoch-{best.user_attrs.get('best_epoch', 0):04d}"
        if epoch_scores.is_dir():
            shutil.copytree(epoch_scores, tmp / "scores")
        atomic_write_json(tmp / "best.json", {
            "trial": best.number, "phase": best.user_attrs.get("phase"), "values": best.values,
            "best_epoch": best.user_attrs.get("best_epoch"), "params": best.params, "lora": lora.name,
            "axes": best.user_attrs.get("axes"), "stand_in": best.user_attrs.get("stand_in"),
            "members": best.user_attrs.get("members"),
        })
    return best


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_optimize(
    config: Config | None,
    run_dir: str | Path,
    resume: bool = False,
    workers: int | None = None,
    backend: str | None = None,
    say: Callable[[str], None] | None = None,
) -> FrozenTrial | None:
    """Run (or resume) the study in ``run_dir`` with ``workers`` local processes; returns the best trial.

    ``backend`` is a ``module:factory`` of a ``TrialBackend`` (default: the real trainer and evaluator).
    """
    run_dir = Path(run_dir).resolve()
    quiet_optuna()
    config = prepare_run(run_dir, config, resume)
    n = workers or config.search.workers
    gpus = _gpu_ids() if n > 1 else []
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(1, n):
            cmd = [sys.executable, "-m", "loratune.search.worker", str(run_dir), "--index", str(i)]
            if backend:
                cmd += ["--backend", backend]
            env = dict(os.environ)
            if len(gpus) > 1:  # one worker per GPU; worker 0 (this process) keeps the first
                env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            children.append(subprocess.Popen(cmd, env=env))
        Worker(run_dir, config, load_backend(backend), index=0, say=say).run()
        codes = [c.wait() for c in children]
    except BaseException:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            child.wait()
        raise
    if any(codes):
        raise LoratuneError(f"{sum(1 for c in codes if c)} worker(s) exited with errors; resume with --resume")
    _clean_partial_dirs(run_dir, open_storage(run_dir, config.search))
    return copy_best(run_dir, config)
