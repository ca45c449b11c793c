"""A local worker: one process's share of the study. It asks Optuna for trials until the plan is done and runs each
through ``loratune.search.trial``.

Taking a trial is serialised across the run's processes, on one machine or many, by the study lock
(``loratune.search.claims``: a ``flock`` on ``RUN/.ask.lock`` for SQLite, an advisory lock in the database for
PostgreSQL), held from before ``study.ask()`` until the objective starts. A finished trial folder is renamed into
place only where none exists (``runfolder.publish``), and a retry whose original trial's folder was published before
a kill records that folder as its result instead of training again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.records import EpochScore
from loratune.runfolder import STUDY_NAME, RunFolder, publish
from loratune.search.claims import study_lock
from loratune.search.phases import (
    Plan,
    assign_phase,
    baseline_lost,
    ensemble_members,
    fail_reason,
    next_action,
    refine_space,
)
from loratune.search.pruning import COMPOSITE_SE
from loratune.search.samplers import make_pruner, make_sampler, max_epochs
from loratune.search.selection import candidate_values, objective_values
from loratune.search.space import apply_params, baseline_params, suggest
from loratune.search.storage import open_storage
from loratune.search.trial import BEST_ATTRS, TrialFailed, TrialOutcome, epoch_diagnoses, run_ensemble, run_trial
from loratune.search.trials import TrialBackend
from loratune.search.warm import warm_trials

MAX_CONSECUTIVE_FAILURES = 3
# A retry copies its dead trial's user attrs: these must not survive into the new attempt.
_INHERITED = ("fail_reason", "trial_dir", "adopted_from", "epochs_planned", "ray_node", *BEST_ATTRS)


def fault_point(name: str) -> None:
    """Fault injection for crash tests: ``LORATUNE_FAULT=<name>`` SIGKILLs this process at that point."""
    if os.environ.get("LORATUNE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class Worker:
    """Asks for trials until the plan is done; ``say`` gets one line per finished trial."""

    def __init__(self, run_dir: Path, config: Config, backend: TrialBackend, index: int = 0,
                 say: Callable[[str], None] | None = None, node: str | None = None) -> None:
        self.folder = RunFolder(run_dir)
        self.config = config
        self.search = config.search
        self.plan = Plan.of(self.search)
        self.backend = backend
        self.index = index
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.storage = open_storage(run_dir, self.search)
        self.study = optuna.load_study(study_name=STUDY_NAME, storage=self.storage,
                                       pruner=make_pruner(self.search, max_epochs(config)))
        self.lock = study_lock(self.folder, self.search.storage)
        # Who runs a trial, in its user attrs: a pid alone is ambiguous once several machines share the study.
        self.host = socket.gethostname()
        self.node = node  # a Ray node's id, for actors
        self.consecutive_failures = 0
        self.warm = warm_trials(self.study, self.search.space)

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        finally:
            self.lock.close()

    def _loop(self) -> None:
        while True:
            optuna.storages.fail_stale_trials(self.study)
            action = next_action(self.study.get_trials(deepcopy=False), self.plan, self.search)
            if action == "done":
                return
            if action == "wait":
                time.sleep(min(self.search.heartbeat_interval, 5))
                continue
            self.lock.acquire()  # released by the objective once its trial is taken (or below, if none was)
            try:
                trials = self.study.get_trials(deepcopy=False)
                if baseline_lost(trials, self.plan):
                    enqueue_baseline(self.study, self.config)
                    trials = self.study.get_trials(deepcopy=False)
                if next_action(trials, self.plan, self.search) != "run":
                    continue  # another process took the last slot while this one waited for the lock
                number = len(trials)
                self.study.sampler = self._sampler(assign_phase(trials, number, self.plan), number, trials)
                try:
                    self.study.optimize(self.objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
                except ValueError as err:
                    if "Cannot tell a" not in str(err):
                        raise
                    # The heartbeat check of another worker failed this trial while it ran (this process was
                    # slower than search.grace_period allows): its retry takes over, adopting the published folder.
                    self.say(f"trial {number}: failed by the heartbeat check while it ran (the machine is slower "
                             f"than search.grace_period {self.search.grace_period or 2 * self.search.heartbeat_interval}"
                             " s allows); its retry adopts its files")
            finally:
                self.lock.release()
            self._count_failures()

    def _count_failures(self) -> None:
        mine = [t for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get("worker_pid") == os.getpid() and t.user_attrs.get("worker_host") == self.host]
        if not mine:
            return
        last = mine[-1]
        if last.state == TrialState.FAIL and not (fail_reason(last) or "").startswith("surplus"):
            self.consecutive_failures += 1
            if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise LoratuneError(f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; last: "
                                    f"{fail_reason(last)} (see {self.folder.trials})")
        else:
            self.consecutive_failures = 0

    def _sampler(self, phase: str, number: int, trials: Sequence[FrozenTrial]) -> optuna.samplers.BaseSampler:
        fixed = refine_space(trials, self.search, number)[1] if phase == "refine" else None
        return make_sampler(self.search, phase, number, self.plan.startup_trials, fixed, self.warm)

    # -- one trial ------------------------------------------------------------------------------------------------
    def objective(self, trial: optuna.Trial) -> float | list[float]:
        self.lock.release()  # the trial is ours (RUNNING in the study): other processes may ask now
        try:
            return self._objective(trial)
        except TrialFailed as err:
            # Every failure carries its reason: without one the trial would count as a crash (slot reopened).
            if not trial.user_attrs.get("fail_reason"):
                trial.set_user_attr("fail_reason", str(err) or "failed")
            raise

    def _objective(self, trial: optuna.Trial) -> float | list[float]:
        for key in _INHERITED:
            if trial.user_attrs.get(key) is not None:
                trial.set_user_attr(key, None)
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", self.host)
        if self.node:
            trial.set_user_attr("ray_node", self.node)
        trials = self.study.get_trials(deepcopy=False)
        phase = trial.user_attrs.get("phase") or assign_phase(trials, trial.number, self.plan)
        trial.set_user_attr("phase", phase)
        frozen = next((t for t in trials if t.number == trial.number), None)
        history = list(frozen.system_attrs.get("retry_history", [])) if frozen is not None else []
        if history:
            failed = frozen.system_attrs.get("failed_trial")  # type: ignore[union-attr]
            trial.set_user_attr("retry_of", failed)
            self.say(f"trial {trial.number} ({phase}): retry of trial {failed}, whose worker stopped")
            for number in reversed(history):
                adopted = self._adopt(trial, phase, number)
                if adopted is not None:
                    return adopted
        if phase == "surplus":
            trial.set_user_attr("fail_reason", "surplus: another worker took the last slot")
            raise TrialFailed("surplus")
        if phase == "ensemble":
            return self._ensemble(trial, trials)
        space = dict(self.search.space)
        if phase == "refine":
            space, fixed = refine_space(trials, self.search, trial.number)
            if not trial.params:  # an enqueued/retried trial keeps its own params and sampler state
                self.study.sampler = make_sampler(self.search, phase, trial.number, self.plan.startup_trials, fixed,
                                                  self.warm)
        params = suggest(trial, space)
        return self._train(trial, phase, params)

    def _claim_folder(self, trial: optuna.Trial) -> tuple[Path, Path]:
        final = self.folder.trial(trial.number)
        if final.exists():
            raise LoratuneError(f"{final}: already exists; refusing to overwrite a finished trial's files")
        trial.set_user_attr("trial_dir", self.folder.relative(final))
        return self.folder.building(trial.number, str(os.getpid())), final

    def _train(self, trial: optuna.Trial, phase: str, params: dict[str, Any]) -> float | list[float]:
        config = apply_params(self.config, params, self.search.space)
        building, final = self._claim_folder(trial)
        trial.set_user_attr("epochs_planned", config.train.epochs)

        recorded: dict[str, Any] = {}
        spreads: dict[str, float | None] = {}  # the pruner's view of each reported epoch's noise

        def on_epoch(score: EpochScore, attrs: dict[str, Any], last: bool) -> bool:
            for key, value in attrs.items():
                if key not in recorded or recorded[key] != value:  # each write is a database commit
                    trial.set_user_attr(key, value)
                    recorded[key] = value
            if self.search.directions or score.composite is None:
                return False
            if score.composite_se is not None:
                spreads[str(score.epoch)] = score.composite_se
                trial.set_user_attr(COMPOSITE_SE, dict(spreads))
            trial.report(score.composite, score.epoch)
            return not last and trial.should_prune()  # the last epoch is never pruned: that would save nothing

        incumbent = self._incumbent(trial)
        outcome = self._guarded(trial, building, lambda: run_trial(
            self.backend, config, params, trial.number, phase, building, on_epoch, incumbent))
        publish(building, final)
        fault_point("after-publish")
        return self._finish(trial, phase, outcome)

    def _incumbent(self, trial: optuna.Trial) -> float | None:
        """The best composite among the study's candidates for RUN/best so far (``selection.candidate_values``: a
        pruned or failed trial's best epoch counts, one that copies does not), which ``search.gating.race`` races
        this trial's epochs against; None without a race."""
        if self.search.gating.race is None or self.search.directions:
            return None
        values = [candidate_values(t, self.search) for t in trial.study.get_trials(deepcopy=False)]
        return max((v[0] for v in values if v is not None and v[0] is not None), default=None)

    def _guarded(self, trial: optuna.Trial, building: Path, work: Callable[[], TrialOutcome]) -> TrialOutcome:
        """Run ``work``; on Ctrl-C the trial is marked for a retry on resume and its folder set aside."""
        try:
            return work()
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted")
            if building.exists():
                self.folder.partial.mkdir(parents=True, exist_ok=True)
                os.replace(building, self.folder.partial / f"{building.name[1:5]}-interrupted-{os.getpid()}")
            raise

    def _finish(self, trial: optuna.Trial, phase: str, outcome: TrialOutcome) -> float | list[float]:
        """Tell the outcome: a failure or a prune raises (Optuna records it), a completed trial returns its value."""
        label = f"trial {trial.number} ({phase})"
        if outcome.failure is not None:
            trial.set_user_attr("fail_reason", outcome.failure)
            self.say(f"{label} failed: {outcome.failure}")
            raise TrialFailed(outcome.failure)
        best = outcome.best
        if best is None and outcome.pruned:  # stopped on the cheap signal before any epoch was scored: no candidate
            self.say(f"{label} pruned after epoch {outcome.epochs[-1].epoch} before any epoch was scored "
                     f"({outcome.epochs[-1].skipped or outcome.epochs[-1].diverged})")
            raise optuna.TrialPruned()
        assert best is not None  # run_trial turns "nothing scored" into a failure
        if best.constraint is not None:  # TPE and GP learn to avoid the region that copies
            trial.set_constraint("copy_rate", best.constraint)
        self.say(f"{label} epochs: {diagnosis_line(outcome.epochs, self.config)}")
        values = objective_values(self.search, best.composite, best.normalised)
        if values is None:
            missing = [a for a in self.search.directions or {} if a != "composite" and best.normalised.get(a) is None]
            reason = f"axis {', '.join(missing)} could not be computed"
            trial.set_user_attr("fail_reason", reason)
            self.say(f"{label} failed: {reason}")
            raise TrialFailed(reason)
        if outcome.pruned:
            self.say(f"{label} pruned after epoch {outcome.epochs[-1].epoch} (best {best.composite:.4f} at epoch "
                     f"{best.epoch})")
            raise optuna.TrialPruned()
        self.say(f"{label} value {_fmt(values)} at epoch {best.epoch}")
        return values if self.search.directions else values[0]

    def _adopt(self, trial: optuna.Trial, phase: str, number: int) -> float | list[float] | None:
        """Trial ``number`` was published and then killed before Optuna heard of it: its folder is the truth."""
        folder = self.folder.trial(number)
        try:
            scores = json.loads((folder / "scores.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if scores.get("state") not in ("complete", "pruned", "failed"):
            return None
        trial.set_user_attr("trial_dir", self.folder.relative(folder))
        trial.set_user_attr("adopted_from", number)
        for key in BEST_ATTRS:
            trial.set_user_attr(key, scores.get(key))
        epochs = [EpochScore(int(e["epoch"]), e.get("composite"), e.get("axes") or {}, copy_rate=e.get("copy_rate"),
                             constraint=e.get("constraint"), cmmd=e.get("cmmd"), validation_loss=e.get("validation_loss"),
                             diverged=e.get("diverged"), seconds=e.get("seconds") or {}, device=e.get("device"),
                             skipped=e.get("skipped"), composite_se=e.get("composite_se"), raced=e.get("raced"))
                  for e in scores.get("epochs", [])]
        if not self.search.directions:
            spreads = {str(e.epoch): e.composite_se for e in epochs if e.composite is not None}
            if any(v is not None for v in spreads.values()):
                trial.set_user_attr(COMPOSITE_SE, spreads)
            for e in epochs:
                if e.composite is not None:
                    trial.report(e.composite, e.epoch)
        self.say(f"trial {trial.number}: trial {number} had finished before the crash; its files are the result")
        outcome = TrialOutcome(epochs, pruned=scores["state"] == "pruned",
                               failure=(scores.get("fail_reason") or "failed") if scores["state"] == "failed" else None)
        return self._finish(trial, phase, outcome)

    # -- the ensemble trial ---------------------------------------------------------------------------------------
    def _ensemble(self, trial: optuna.Trial, trials: Sequence[FrozenTrial]) -> float | list[float]:
        members = [t for t in ensemble_members(trials, self.search)]
        if len(members) < 2:
            trial.set_user_attr("fail_reason", "ensemble: fewer than 2 scored trials with a LoRA")
            raise TrialFailed("ensemble: fewer than 2 trials")
        building, final = self._claim_folder(trial)
        trial.set_user_attr("members", [t.number for t in members])
        sources = [(t.number, self.folder.root / t.user_attrs["trial_dir"] / t.user_attrs["lora"]) for t in members]
        outcome = self._guarded(trial, building, lambda: run_ensemble(
            self.backend, self.config, sources, building, self.folder.root))
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, value)
        publish(building, final)
        return self._finish(trial, f"ensemble of {[t.number for t in members]}", outcome)


def enqueue_baseline(study: optuna.Study, config: Config) -> None:
    """Phase 1: the config's own values as a waiting trial."""
    study.enqueue_trial(baseline_params(config, config.search.space), user_attrs={"phase": "baseline"})


def diagnosis_line(epochs: list[EpochScore], config: Config) -> str:
    """``1 underfit, 2 good, 3 copying (copy rate 0.50 > max_copy_rate 0.20)``: the console's per-epoch diagnosis,
    the rule spelled out where it fired."""
    parts = []
    for e, d in zip(epochs, epoch_diagnoses(epochs, config.evaluation.learning)):
        parts.append(f"{e.epoch} {d['label']}" + ("" if d["label"] == "good" else f" ({d['rule']})"))
    return ", ".join(parts)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.4f}" for v in values)
