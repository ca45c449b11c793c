"""``loratune optimize --backend ray``: the study's workers as Ray actors, on one machine or a cluster.

Each actor is one ``local.Worker`` — the very loop ``--backend local`` runs: it asks the shared Optuna study for a trial
under the study lock, the phase code decides baseline / search / refine / ensemble, and ``run_trial`` (or
``run_ensemble``) does the work, pruned by the ``search.pruner`` Optuna pruner. So phases, refinement, the ensemble,
crash retries and RUN/best are the local runner's, not a second implementation. What Ray adds is placement: an actor
asks for ``search.ray.cpus_per_trial`` / ``gpus_per_trial`` (fractional GPUs share one card) and any custom
``search.ray.resources`` (only nodes started with them take trials), Ray puts it on a machine with them free, and its
torch runs that many threads. An actor lives for the whole study, so its trial backend — base model and scorers —
loads once per actor, and the ensemble trial is scored inside an actor too; the driver only creates the study, waits
and fills RUN/best. The first actor to find the study done ends the others (one waiting for the ensemble would only
see it at its next poll). Each trial records the Ray node that ran it (user attr ``ray_node``).

``search.ray.max_concurrent`` (or ``--workers``) actors run at once. One whose process died is restarted by Ray up to
``search.max_retry`` times and goes on asking; the trial it was running stops beating and is failed and retried as any
dead worker's is — also when its whole node is gone. With several Ray nodes, RUN must be on a shared filesystem
(trial folders live there) and the study in a ``search.storage`` server, whose lock keeps the nodes from taking one
trial twice (a SQLite study in RUN would rely on ``flock`` across machines).

After the driver crashed (which takes its actors with it), ``--resume`` fails the trials the study still shows RUNNING
at once instead of waiting for their heartbeats to go stale, and enqueues each again with its params.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from loratune import chatter
from loratune.config import Config, load_config
from loratune.errors import LoratuneError, first_line
from loratune.runfolder import STUDY_NAME, RunFolder
from loratune.search.claims import held
from loratune.search.local import Worker
from loratune.search.phases import Plan, next_action
from loratune.search.recovery import recover
from loratune.search.runner import finish_run, prepare_run, quiet_optuna
from loratune.search.storage import open_storage, retry_callback
from loratune.search.trials import load_backend


class StudyWorker:
    """A Ray actor: one worker of the study, its trial backend loaded once for every trial it runs."""

    def __init__(self, run_dir: str, backend: str | None, threads: int) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        cpu_share(threads)
        quiet_optuna()
        if not chatter.verbose():
            chatter.quiet_libraries()
        self.run_dir = Path(run_dir)
        self.backend = load_backend(backend)

    def run(self, index: int) -> str | None:
        """Work through the study until it is done; returns the error that stopped this worker, if one did."""
        import ray

        config = load_config(RunFolder(self.run_dir).config)
        try:
            Worker(self.run_dir, config, self.backend, index=index,
                   node=ray.get_runtime_context().get_node_id()).run()
        except LoratuneError as err:
            return f"Ray worker {index}: {err}"
        return None


def cpu_share(threads: int) -> None:
    """Torch's threads in this actor: as many as the CPUs it asked for (Ray sets ``OMP_NUM_THREADS`` so only where
    the environment did not; one set for the whole machine would have every actor contend for every core), and idle
    ones sleep rather than spin on a core another actor needs. Set before torch loads; a loaded torch is told too."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def run_ray(config: Config | None, run_dir: str | Path, resume: bool = False, backend: str | None = None,
            say: Callable[[str], None] | None = None, overrides: Sequence[str] = (),
            workers: int | None = None) -> FrozenTrial | None:
    """Run (or resume) the study with ``workers`` Ray actors (default ``search.ray.max_concurrent``); returns the
    best candidate, as ``run_optimize`` does."""
    import ray

    run_dir = Path(run_dir).resolve()
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    quiet_optuna()
    trial_backend = load_backend(backend)
    config = prepare_run(run_dir, config, resume, overrides, trial_backend, say)
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
        if resume:
            _recover(config, run_dir)
        errors = _run_actors(run_dir, config, backend, workers or ray_cfg.max_concurrent)
    finally:
        if started:
            ray.shutdown()
    if errors:
        if not _study_done(run_dir, config):
            raise LoratuneError(f"{len(errors)} Ray worker(s) stopped ({errors[0]}); resume with --resume")
        for error in errors:  # a node lost mid-study: its trial was retried elsewhere and the study finished
            say(f"{error}; the other workers finished the study")
    with held(RunFolder(run_dir), config.search.storage):  # the finalists are sampled here, in the driver
        return finish_run(run_dir, config, say, trial_backend)


def _run_actors(run_dir: Path, config: Config, backend: str | None, n: int) -> list[str]:
    """Start ``n`` actors, each running the worker loop; returns the errors of those that stopped on one."""
    import ray

    ray_cfg = config.search.ray
    actor_class = ray.remote(num_cpus=ray_cfg.cpus_per_trial, num_gpus=ray_cfg.gpus_per_trial,
                             resources=ray_cfg.resources or None, max_restarts=config.search.max_retry,
                             max_task_retries=config.search.max_retry)(StudyWorker)
    threads = max(1, int(ray_cfg.cpus_per_trial))
    actors = [actor_class.remote(str(run_dir), backend, threads) for _ in range(n)]  # type: ignore[attr-defined]
    running = {actor.run.remote(i): actor for i, actor in enumerate(actors)}
    errors: list[str] = []
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(done[0])
            try:
                error = ray.get(done[0])
            except ray.exceptions.RayActorError as err:  # it died more often than it may be restarted
                error = first_line(err)
            ray.kill(actor)  # a finished actor still holds its CPUs/GPUs
            if error:
                errors.append(error)
                continue  # the others carry on: an actor waiting for room starts in its place
            # It found the study done: an actor still waiting for the ensemble would only see that at its next poll,
            # and one waiting for room would start, load its backend and see it then.
            for ref, other in running.items():
                ray.cancel(ref)  # else Ray announces a retry of the killed actor's task, which never comes
                ray.kill(other)
            running.clear()
    finally:
        for actor in running.values():
            ray.kill(actor)
    return errors


def _study_done(run_dir: Path, config: Config) -> bool:
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, config.search, heartbeat=False))
    return next_action(study.get_trials(deepcopy=False), Plan.of(config.search), config.search) == "done"


def _recover(config: Config, run_dir: Path) -> None:
    """After a crash of the driver, its actors died with it: fail the trials still RUNNING in the study and
    enqueue each once more with its params (as Optuna's heartbeat retry does, without waiting for the grace period)."""
    run = RunFolder(run_dir)
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run_dir, config.search))
    retry = retry_callback(config.search)
    with held(run, config.search.storage):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(t.number, state=TrialState.FAIL)
            retry(study, study.get_trials(deepcopy=False)[t.number])
        recover(study, run, config)
