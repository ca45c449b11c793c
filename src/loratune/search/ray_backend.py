"""``loratune optimize --backend ray``: Ray Tune (OptunaSearch + ASHA) over the same space, study and run directory.

Phases 1–2 (baseline + sampler search) and phase 3's refinement run as two Tune experiments (``RUN/ray/search-N``,
``RUN/ray/refine-N``); the ensemble trial and ``RUN/best`` then run locally, exactly as with ``--backend local``.
ASHA stops weak trials on the per-epoch composite (``time_attr="epoch"``). Resources per trial come from
``search.ray`` (fractional GPUs share a card); Tune itself retries a trial whose Ray worker died
(``max_retry``). After the driver crashed, ``--resume`` takes the Optuna study as the record: trials it still shows
RUNNING died with the driver, are failed and re-enqueued with their params, finished trials stay untouched, and fresh
Tune experiments run what the budget still holds (Tune's own experiment snapshot can lag behind the study and would
run trials twice).

Ray's ``OptunaSearch`` tells Optuna every trial that stopped with a metric as COMPLETE — so ASHA-stopped trials would
reach the sampler as finished trials with the partial value of their last epoch, biasing TPE toward short runs, and
OptunaSearch never prunes. ``PruningAwareOptunaSearch`` fixes this: it reports each epoch as an intermediate value,
tells Optuna COMPLETE (with the best epoch's composite) only when the trainable says it ran to its last epoch, and
PRUNED otherwise. Trial folders are built as ``trials/.NNNN.ray`` and renamed into ``trials/NNNN`` when Tune reports
the trial finished (stopped by ASHA included): with several Ray nodes, RUN must be on a shared filesystem.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from loratune.config import Config, load_config
from loratune.errors import LoratuneError
from loratune.records import EpochScore
from loratune.runfolder import STUDY_NAME, RunFolder, publish
from loratune.search.config import ParamSpec
from loratune.search.local import AskLock, Worker
from loratune.search.phases import Plan, counted, refine_space
from loratune.search.recovery import recover
from loratune.search.runner import finish_run, prepare_run, quiet_optuna
from loratune.search.samplers import make_sampler, max_epochs
from loratune.search.space import apply_params, suggest
from loratune.search.storage import open_storage, retry_callback
from loratune.search.trial import BEST_ATTRS, NO_COMPOSITE, run_trial
from loratune.search.trials import TrialBackend, load_backend

NUMBER_KEY = "_loratune_trial"
PHASE_KEY = "_loratune_phase"
_ATTRS = (*BEST_ATTRS, "trial_dir", "epochs_planned")


def _searcher_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

    class PruningAwareOptunaSearch(OptunaSearch):  # type: ignore[misc,valid-type]
        """OptunaSearch that records phases and tells Optuna PRUNED for trials a scheduler stopped early."""

        def __init__(self, *args: Any, run_dir: str, phase: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._run_dir = run_dir
            self._phase = phase
            self._best: dict[str, float] = {}
            self._reported: dict[str, set[int]] = {}

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            params = super().suggest(trial_id)
            if params is None:
                return None
            ot = self._ot_trials[trial_id]
            if not ot.user_attrs.get("phase"):  # the enqueued baseline already carries its phase
                ot.set_user_attr("phase", self._phase)
            ot.set_user_attr("trial_dir", RunFolder(Path(self._run_dir)).relative(
                RunFolder(Path(self._run_dir)).trial(ot.number)))
            return {**params, NUMBER_KEY: ot.number, PHASE_KEY: ot.user_attrs["phase"]}

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self._completed_trials or result.get("composite") is None or result.get("failed") \
                    or result.get("already_finished") or result.get("scored") is False:
                return  # an epoch whose every axis is missing reports nothing to Optuna (Tune saw a stand-in 0.0)
            ot = self._ot_trials[trial_id]
            epoch = int(result["epoch"])
            if epoch in self._reported.setdefault(trial_id, set()):
                return
            self._reported[trial_id].add(epoch)
            ot.report(float(result["composite"]), epoch)  # the epoch, not Tune's iteration counter
            for key in _ATTRS:
                if key in result:
                    ot.set_user_attr(key, result[key])
            if result.get("best_composite") is not None:
                self._best[trial_id] = float(result["best_composite"])

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            if result:  # a result that made the scheduler stop the trial reaches only on_trial_complete
                self.on_trial_result(trial_id, result)
            ot = self._ot_trials[trial_id]
            run = RunFolder(Path(self._run_dir))
            building, final = run.building(ot.number, "ray"), run.trial(ot.number)
            if building.is_dir() and not final.exists():
                publish(building, final)
            result = result or {}
            try:
                if result.get("already_finished"):
                    pass  # restored after a crash: this trial was told before the searcher's last checkpoint
                elif error or result.get("failed"):
                    ot.set_user_attr("fail_reason", result.get("fail_reason") or "trial errored in Ray")
                    self._ot_study.tell(ot, state=TrialState.FAIL)
                elif trial_id not in self._best:  # no epoch was scored: failed like the local runner, never 0
                    ot.set_user_attr("fail_reason", NO_COMPOSITE)
                    self._ot_study.tell(ot, state=TrialState.FAIL)
                elif result.get("complete"):
                    self._ot_study.tell(ot, self._best[trial_id])
                else:  # stopped by ASHA: not a finished trial with a partial value
                    self._ot_study.tell(ot, state=TrialState.PRUNED)
            except UpdateFinishedTrialError:
                pass  # the same: told before the crash, re-reported after the restore
            self._completed_trials.add(trial_id)

    return PruningAwareOptunaSearch


_CACHE: dict[str, Any] = {}


def _trainable(params: dict[str, Any], run_dir: str, backend: str | None) -> None:
    """One Ray trial through ``run_trial``: every epoch is reported to Tune, and ASHA decides whether it goes on."""
    from ray import tune

    quiet_optuna()
    params = dict(params)
    number, phase = int(params.pop(NUMBER_KEY)), str(params.pop(PHASE_KEY))
    run = RunFolder(Path(run_dir))
    if "config" not in _CACHE:  # per actor process (reuse_actors): config, trainer backend and scorers load once
        _CACHE["config"] = load_config(run.config)
        _CACHE["backend"] = load_backend(backend)
    config: Config = _CACHE["config"]
    trial_backend: TrialBackend = _CACHE["backend"]
    trial_config = apply_params(config, params, config.search.space)
    building, final = run.building(number, "ray"), run.trial(number)
    if final.exists():  # finished before a crash, after Tune's last experiment checkpoint: never touch its files
        tune.report({"composite": 0.0, "epoch": 0, "already_finished": True, "complete": True})
        return
    if building.exists():  # an earlier attempt of this very trial died with its Ray worker: start it afresh
        shutil.rmtree(building)
    trial_dir = run.relative(final)

    def on_epoch(score: EpochScore, attrs: dict[str, Any], last: bool) -> bool:
        # ASHA needs a number every epoch; ``scored`` keeps an all-missing epoch's 0.0 out of the study.
        tune.report({"composite": score.composite if score.composite is not None else 0.0, "epoch": score.epoch,
                     "scored": score.composite is not None, "best_composite": attrs["composite"], "complete": last,
                     "trial_dir": trial_dir, "epochs_planned": trial_config.train.epochs, **attrs})
        return False  # Tune stops the trial itself when ASHA says so

    outcome = run_trial(trial_backend, trial_config, params, number, phase, building, on_epoch)
    if outcome.failure is not None:
        best = outcome.best
        tune.report({"composite": best.composite if best else 0.0,
                     "epoch": (outcome.epochs[-1].epoch if outcome.epochs else 0) + 1, "failed": True,
                     "fail_reason": outcome.failure, "complete": False})


def _define_by_run(trial: optuna.Trial, space: dict[str, ParamSpec]) -> None:
    suggest(trial, space)  # a module-level function: Tune pickles the searcher (and its space) into checkpoints


def _tune_phase(run_dir: Path, config: Config, phase: str, space: dict[str, ParamSpec],
                sampler: optuna.samplers.BaseSampler, num_samples: int, backend: str | None) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    ray_cfg = config.search.ray
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, run_dir=str(run_dir), backend=backend),
        {"cpu": ray_cfg.cpus_per_trial, "gpu": ray_cfg.gpus_per_trial},
    )
    if num_samples <= 0:
        return
    attempt = 1 + sum(1 for p in (run_dir / "ray").glob(f"{phase}-*"))
    name = f"{phase}-{attempt}"  # a resumed run starts a fresh experiment; the study holds the history
    epochs = max_epochs(config)
    searcher = _searcher_class()(
        space=functools.partial(_define_by_run, space=space),
        metric="composite", mode="max", sampler=sampler, study_name=STUDY_NAME,
        storage=open_storage(run_dir, config.search, heartbeat=False), run_dir=str(run_dir), phase=phase,
    )
    # ASHA is Ray's pruner; ``search.pruner: none`` runs every trial to its last epoch.
    scheduler = None if config.search.pruner == "none" else ASHAScheduler(
        time_attr="epoch", metric="composite", mode="max", max_t=max(epochs, 1),
        grace_period=min(ray_cfg.grace_period, max(epochs, 1)), reduction_factor=ray_cfg.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=ray_cfg.max_concurrent),
                                    scheduler=scheduler, num_samples=num_samples, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(run_dir / "ray"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=config.search.max_retry)),
    )
    tuner.fit()


def run_ray(config: Config | None, run_dir: str | Path, resume: bool = False, backend: str | None = None,
            say: Callable[[str], None] | None = None, overrides: Sequence[str] = ()) -> Any:
    """Run (or resume) the study with Ray Tune; the ensemble and RUN/best follow locally. Returns the best trial."""
    import ray

    run_dir = Path(run_dir).resolve()
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    quiet_optuna()
    trial_backend = load_backend(backend)
    config = prepare_run(run_dir, config, resume, overrides, trial_backend)
    if config.search.directions:
        raise LoratuneError("search.directions: multi-objective runs use --backend local (ASHA needs one metric)")
    ray_cfg = config.search.ray
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if ray_cfg.address:
            ray.init(address=ray_cfg.address, include_dashboard=False)
        else:
            ray.init(num_cpus=ray_cfg.num_cpus, include_dashboard=False)
        started = True
    try:
        plan = Plan.of(config.search)
        storage = open_storage(run_dir, config.search)
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        if resume:
            _recover(study, config, run_dir)
        _tune_phase(run_dir, config, "search", dict(config.search.space),
                    make_sampler(config.search, "search", len(study.trials), plan.startup_trials),
                    _to_run(study, ("baseline", "search"), plan.baseline + plan.search), backend)
        space, fixed = refine_space(study.get_trials(deepcopy=False), config.search)
        _tune_phase(run_dir, config, "refine", space,
                    make_sampler(config.search, "refine", len(study.trials), plan.startup_trials, fixed),
                    _to_run(study, ("refine",), plan.refine), backend)
    finally:
        if started:
            ray.shutdown()
    # Phase 3's ensemble (and any budget Ray left open) runs in this process, then RUN/best.
    Worker(run_dir, config, trial_backend, say=say).run()
    return finish_run(run_dir, config, say)


def _to_run(study: optuna.Study, phases: tuple[str, ...], allowed: int) -> int:
    """Tune samples for a phase: the open slots plus the enqueued trials (baseline, retries) waiting in it."""
    held = [t for t in study.get_trials(deepcopy=False) if counted(t) and t.user_attrs.get("phase") in phases]
    waiting = sum(1 for t in held if t.state == TrialState.WAITING)
    return max(0, allowed - len(held)) + waiting


def _recover(study: optuna.Study, config: Config, run_dir: Path) -> None:
    """After a crash of the driver, its Ray trials died with it: fail the trials still RUNNING in the study and
    enqueue each once more with its params (as Optuna's heartbeat retry does in local mode)."""
    retry = retry_callback(config.search)
    run = RunFolder(run_dir)
    with AskLock(run.ask_lock):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            retry(study, study.get_trials(deepcopy=False)[t.number])
        recover(study, run, config)
