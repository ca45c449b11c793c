"""Trials per hour of ``loratune optimize`` with one local worker (A), one Ray worker (B) and two Ray workers (C).

Each arm is the product's own front door (``run_optimize`` / ``run_ray``) on a fresh run folder with the same plan:
baseline, search, 2 refine trials and the ensemble trial. Two trial costs, reported apart:

- ``sleep`` — wall-time bound: the synthetic LoRA surface (``loratune.search.synthetic``) whose trials cost fixed wall
  time spent waiting: ``--load-seconds`` once per trial backend (what loading the base model and the scorers costs
  a worker), ``--epoch-seconds`` per trained-and-scored epoch and for the ensemble's sampling and scoring. This is a
  worker on its own GPU: its host process waits on the card. It is the only cost under which two workers can show
  their scaling on this workshop machine (2 CPU cores shared with other jobs).
- ``tiny`` — CPU bound: loratune's real trainer, sampler and scorers on ``loratune.tiny``'s random models. Both
  workers share the same 2 cores, so the ratio is bounded by the CPU the other jobs leave: one local worker keeps
  about one core busy (``CPU cores used``; ``main thread's share``: the rest is torch's second thread, which on models
  this small slows a trial down rather than up: a one-thread Ray worker's trials were faster). On a quiet machine two
  workers ran 2.1x end to end and 2.3x steady; with the other jobs at a load of 3-6 they got no more CPU than one.

A Ray worker asks for its share of the cores (``search.ray.cpus_per_trial`` = 2 / workers) and runs that many torch
threads, as the local worker runs torch's default (one per core). The pruner is off (``search.pruner: none``): every
trial trains all its epochs, so a trial costs the same in every arm and trials/hour measures the runner, not pruning
luck (which concurrency changes). Three rates: ``end to end`` is the whole call (Ray start, actor start, backend loads,
every trial, RUN/best, Ray's shutdown); ``study`` is the span from the first trial's start to the last trial's end;
``steady`` counts only the trials that ended while every worker was warm (its first trial, which loads the models,
done) and busy (no worker yet out of budget trials): what a long study runs at once its fixed start-up is paid.
``start`` is the call's start to the first trial's start, ``tail`` the last budget trial's end to the call's end.

For ``tiny`` the trial backend logs where each worker's time went, and a second table shows medians: the backend's
model loads (once per worker; an actor's include importing torch and the rest), then per steady trial the training
steps, sampling and scoring, the study writes inside a trial (trial span in the study less the backend's time), the
time between a worker's trials (asking, the ask lock, Optuna's ``gc_after_trial``: the full collections are shown),
the CPU cores the worker used during its trials (all its threads), the share of its main thread's time spent waiting
for a core (runnable, but the cores were busy: the other jobs' share, and the other worker's), Ray's start and the
CPU its own processes used. Arms run interleaved (A B C A B C ...) so the machine's changing load hits each alike;
each line gives the 1-minute load average at its start, the tables medians.

Run: ``python benchmarks/ray_scaling.py [--cost sleep,tiny] [--rounds 2] [--trials 10] [--epochs 3]
[--epoch-seconds 2] [--load-seconds 5]``; ``--cost tiny --trials 30`` for a study whose start-up is amortised
(~15 min for two rounds here).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
# Ray actors import the sleep backend by name: this folder must be on their path too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
sys.path.insert(0, str(HERE))

import psutil

from loratune.runfolder import building_number
from loratune.search.synthetic import SyntheticTrials
from loratune.search.trials import TrainAndScore

SLEEP_BACKEND = "ray_scaling:make_sleepy"
TIMED_BACKEND = "ray_scaling:make_timed"
CORES = 2  # the Ray cluster's CPUs: this workshop machine's
ARMS = {"A": ("local", 1), "B": ("ray", 1), "C": ("ray", 2)}


class SleepyTrials(SyntheticTrials):
    """The synthetic surface with a wall-time cost (seconds from the environment, so Ray actors see them too)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_s = float(os.environ["LORATUNE_BENCH_EPOCH_S"])
        self.load_s = float(os.environ["LORATUNE_BENCH_LOAD_S"])
        self.loaded = False

    def _load(self) -> None:
        if not self.loaded:  # lazily, as TrainAndScore loads its scorers: the driver's pre-flight check loads nothing
            time.sleep(self.load_s)
            self.loaded = True

    def train(self, config: Any, out_dir: Path, on_epoch: Callable[[Any], None]) -> None:
        self._load()

        def costly(score: Any) -> None:
            time.sleep(self.epoch_s)
            on_epoch(score)

        super().train(config, out_dir, costly)

    def score_lora(self, config: Any, lora: Path, out_dir: Path) -> Any:
        from loratune.records import EpochScore

        self._load()
        time.sleep(self.epoch_s)
        return EpochScore(0, 0.05, {}, lora)  # the surface has no ensemble: only its cost is measured here


def make_sleepy() -> SleepyTrials:
    return SleepyTrials()


class TimedTrials(TrainAndScore):
    """The real trial with each phase's wall and CPU time (all threads of the process) appended to
    ``$LORATUNE_BENCH_TIMES/<pid>.jsonl``: one line per base load, scorer load, sampling, scoring and whole trial."""

    def __init__(self) -> None:
        import torch

        from loratune.train.cache import BaseCache
        from loratune.train.model import load_models

        self.log = Path(os.environ["LORATUNE_BENCH_TIMES"]) / f"{os.getpid()}.jsonl"
        self._trial: int | None = None
        self._record("process", time.time() - psutil.Process().create_time(), time.process_time(), schedstat(),
                     threads=torch.get_num_threads())
        super().__init__(BaseCache(loader=self._timed("load_base", load_models)))
        self._gc_start = (0.0, 0.0, (0.0, 0.0))
        self._busy = False
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        """Full collections (the worker's ``gc_after_trial`` among them) are single-threaded time between trials."""
        if info["generation"] != 2 or self._busy:  # one inside a trial is part of that trial's time
            return
        if phase == "start":
            self._gc_start = (time.perf_counter(), time.process_time(), schedstat())
        else:
            wall, cpu, sched = self._gc_start
            self._record("gc", time.perf_counter() - wall, time.process_time() - cpu, since(sched))

    def _record(self, phase: str, wall: float, cpu: float, sched: tuple[float, float], **extra: Any) -> None:
        line = {"pid": os.getpid(), "phase": phase, "trial": self._trial, "wall": wall, "cpu": cpu, "main": sched[0],
                "queued": sched[1], **extra}
        with self.log.open("a") as f:
            f.write(json.dumps(line) + "\n")

    def _timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu, sched = time.perf_counter(), time.process_time(), schedstat()
            try:
                return fn(*args, **kwargs)
            finally:
                self._record(phase, time.perf_counter() - wall, time.process_time() - cpu, since(sched))
        return timed

    def evaluator(self, config: Any) -> Any:
        if self._evaluator is None:
            return self._timed("load_scorers", super().evaluator)(config)
        return super().evaluator(config)

    def _score(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed("score", super()._score)(*args, **kwargs)

    def train(self, config: Any, out_dir: Path, on_epoch: Callable[[Any], None]) -> None:
        import loratune.sampling

        self._trial, self._busy = building_number(out_dir), True
        render = loratune.sampling.render_samples
        loratune.sampling.render_samples = self._timed("sample", render)  # the loop looks it up per checkpoint
        try:
            self._timed("trial", super().train)(config, out_dir, on_epoch)
        finally:
            loratune.sampling.render_samples = render
            self._busy = False

    def score_lora(self, config: Any, lora: Path, out_dir: Path) -> Any:
        self._trial, self._busy = building_number(out_dir), True
        try:
            return self._timed("trial", super().score_lora)(config, lora, out_dir)
        finally:
            self._busy = False


_TIMED: dict[str, TimedTrials] = {}


def make_timed() -> TimedTrials:
    """One per process and run: the driver's pre-flight backend is the local worker's, so a collection is logged once."""
    times = os.environ["LORATUNE_BENCH_TIMES"]
    if times not in _TIMED:
        _TIMED[times] = TimedTrials()
    return _TIMED[times]


def forget_timed() -> None:
    """The run is over: this process's backend logs no more collections (its folder goes with the benchmark's)."""
    for timed in _TIMED.values():
        gc.callbacks.remove(timed._gc)
    _TIMED.clear()


def schedstat() -> tuple[float, float]:
    """This thread's seconds on a core and runnable but waiting for one (the other jobs' share), from Linux."""
    ran, queued = Path("/proc/thread-self/schedstat").read_text().split()[:2]
    return int(ran) / 1e9, int(queued) / 1e9


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = schedstat()
    return now[0] - start[0], now[1] - start[1]


@dataclass
class Result:
    """One run. Times in seconds; ``phases`` are per steady trial (each worker's trials after its first), tiny only."""

    trials: int
    wall: float
    span: float
    steady: float | None  # trials/hour while every worker was warm and busy
    startup: float  # the call's start to the first trial's start (Ray, actor processes)
    tail: float  # the last budget trial's end to the call's end (waiting for the ensemble, the ensemble, RUN/best)
    load: float  # the machine's 1-minute load average when the run began
    phases: dict[str, float] = field(default_factory=dict)


def tiny_config(root: Path, trials: int, epochs: int, extra: Sequence[str]) -> tuple[Any, str | None]:
    """The e2e test's tiny study: two captioned images per character, 2 sampling steps, a learning-rate x rank space."""
    import shutil

    from loratune.config import load_config
    from loratune.tiny import build_tiny_models

    models = build_tiny_models(os.environ.get("LORATUNE_TINY_CACHE", HERE.parent / ".cache" / "tiny-models"))
    data = root / "data"
    if not data.exists():
        for folder in sorted(Path(models.dataset).iterdir()):
            target = data / f"1_{folder.name.split('_', 1)[1]}"
            target.mkdir(parents=True)
            for image in sorted(folder.glob("*.png"))[:2]:
                shutil.copy(image, target / image.name)
                shutil.copy(image.with_suffix(".txt"), target / f"{image.stem}.txt")
    return load_config(models.config, [
        f"dataset.path={data}", "train.batch_size=2", "sampling.steps=2", f"train.epochs={epochs}",
        f"search.n_trials={trials}", "search.pruner=none",
        ("search.space={learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}, "
         "rank: {type: categorical, choices: [2, 4]}}"),
        "search.phases={refine_trials: 2, ensemble_top_k: 2, ensemble_method: svd, ensemble_rank: 4}", *extra,
    ]), TIMED_BACKEND


def sleep_config(trials: int, epochs: int, extra: Sequence[str]) -> tuple[Any, str | None]:
    from loratune.config import load_config

    return load_config(None, [f"search.n_trials={trials}", "search.pruner=none", f"train.epochs={epochs}",
                              "search.phases={refine_trials: 2, ensemble_top_k: 2, ensemble_method: avg}",
                              *extra]), SLEEP_BACKEND


def one_run(run: Path, config: Any, backend: str | None, kind: str, workers: int) -> Result:
    import optuna

    from loratune.runfolder import STUDY_NAME
    from loratune.search.storage import open_storage

    times = run.with_name(run.name + "-times")
    times.mkdir()
    os.environ["LORATUNE_BENCH_TIMES"] = str(times)
    load = os.getloadavg()[0]
    start = time.time()
    extra: dict[str, float] = {}
    if kind == "local":
        from loratune.search.runner import run_optimize

        run_optimize(config, run, workers=workers, backend=backend, say=lambda m: None)
    else:
        import ray

        from loratune.search.ray_backend import run_ray

        # Started here only to keep the actors' per-trial lines out of the table; run_ray would start the same Ray.
        ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False)
        extra["ray init"] = time.time() - start
        try:
            run_ray(config, run, backend=backend, say=lambda m: None, workers=workers)
            extra["Ray's own CPU"] = ray_cpu({int(f.stem) for f in times.glob("*.jsonl")})
        finally:
            ray.shutdown()
    end = time.time()
    import ray_scaling  # the module the backend was loaded from, not this script's __main__

    ray_scaling.forget_timed()
    trials = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run, config.search)).get_trials()
    return analyse([t for t in trials if t.state.is_finished()], times, start, end, load, extra)


def ray_cpu(actors: set[int]) -> float:
    """CPU seconds used so far by Ray's own processes (GCS, raylet, agents, idle workers): the driver's descendants
    but the actors (which may not have exited yet)."""
    total = 0.0
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in actors:
            continue
        try:
            cpu = proc.cpu_times()
        except psutil.Error:
            continue
        total += cpu.user + cpu.system
    return total


def analyse(done: list[Any], times: Path, start: float, end: float, load: float, extra: dict[str, float]) -> Result:
    """Trials/hour three ways and, where the trial backend logged them, where a worker's time went."""
    spans = {t.number: (t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in done}
    budget = [t for t in done if t.user_attrs.get("phase") != "ensemble"]
    by_worker: dict[int, list[Any]] = {}
    for t in sorted(budget, key=lambda t: spans[t.number][0]):
        by_worker.setdefault(t.user_attrs["worker_pid"], []).append(t)
    # Steady state: from the moment every worker had finished its first trial (models loaded) until the first worker
    # finished its last budget trial; a trial half done at either edge is counted at one edge and not at the other.
    warm = max(spans[ts[0].number][1] for ts in by_worker.values())
    cold = min(spans[ts[-1].number][1] for ts in by_worker.values())
    finished = sum(1 for t in budget if warm < spans[t.number][1] <= cold)
    steady = 3600 * finished / (cold - warm) if cold > warm and finished else None
    first = min(s for s, _ in spans.values())
    result = Result(len(done), end - start, max(e for _, e in spans.values()) - first, steady, first - start,
                    end - max(spans[t.number][1] for t in budget), load)

    logs = [json.loads(line) for f in times.glob("*.jsonl") for line in f.read_text().splitlines()]
    if not logs:
        return result
    phases = result.phases
    phases.update(extra)
    phases["backend loads"] = max(sum(r["wall"] for r in logs if r["pid"] == pid and r["phase"].startswith("load_"))
                                  for pid in by_worker)
    steady_trials = [t for ts in by_worker.values() for t in ts[1:]]
    per = {name: [r for r in logs if r["phase"] == name and r["trial"] in {t.number for t in steady_trials}]
           for name in ("trial", "sample", "score")}
    n = len(per["trial"])
    if not n:
        return result
    trial_wall = sum(r["wall"] for r in per["trial"])
    phases["train steps"] = (trial_wall - sum(r["wall"] for r in per["sample"] + per["score"])) / n
    phases["sample"] = sum(r["wall"] for r in per["sample"]) / n
    phases["score"] = sum(r["wall"] for r in per["score"]) / n
    phases["study writes"] = (sum(spans[t.number][1] - spans[t.number][0] for t in steady_trials) - trial_wall) / n
    gaps = [spans[b.number][0] - spans[a.number][1] for ts in by_worker.values() for a, b in pairwise(ts)]
    phases["between trials"] = sum(gaps) / len(gaps)
    phases["  of which full gc"] = sum(r["wall"] for r in logs if r["phase"] == "gc" and r["trial"] in
                                       {a.number for ts in by_worker.values() for a in ts[:-1]}) / len(gaps)
    phases["CPU cores used"] = sum(r["cpu"] for r in per["trial"]) / trial_wall
    # The main thread's share of the CPU: Python, and torch's ops too small to split (the rest is torch's other threads).
    phases["main thread's share"] = sum(r["main"] for r in per["trial"]) / sum(r["cpu"] for r in per["trial"])
    phases["waiting for a core"] = sum(r["queued"] for r in per["trial"]) / trial_wall
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cost", default="sleep,tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-seconds", type=float, default=2.0)
    parser.add_argument("--load-seconds", type=float, default=5.0)
    args = parser.parse_args()
    os.environ["LORATUNE_BENCH_EPOCH_S"] = str(args.epoch_seconds)
    os.environ["LORATUNE_BENCH_LOAD_S"] = str(args.load_seconds)

    from loratune.cli import quiet_libraries
    from loratune.search.runner import quiet_optuna

    quiet_libraries()  # the local arm's loading bars and notices would bury the progress lines
    quiet_optuna()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        root = Path(tmp)
        for cost in args.cost.split(","):
            results: dict[str, list[Result]] = {arm: [] for arm in ARMS}
            for r in range(args.rounds):
                for arm, (kind, workers) in ARMS.items():
                    # A Ray worker asks for its share of the cores, and gets as many torch threads.
                    extra = [f"search.ray.cpus_per_trial={CORES // workers}"]
                    config, backend = tiny_config(root, args.trials, args.epochs, extra) if cost == "tiny" else \
                        sleep_config(args.trials, args.epochs, extra)
                    result = one_run(root / f"{cost}-{arm}-{r}", config, backend, kind, workers)
                    results[arm].append(result)
                    print(f"{cost} round {r + 1} {arm} ({kind}, {workers} worker{'s' * (workers > 1)}, load "
                          f"{result.load:.1f}): {result.trials} trials, {result.wall:.1f} s end to end, "
                          f"{result.span:.1f} s study, steady {result.steady or 0:.0f} trials/h", flush=True)
            rows.append((cost, results))
    print()
    print(f"{'cost':6} {'arm':22} {'trials':>6} {'end-to-end s':>12} {'trials/h':>9} {'vs A':>6} "
          f"{'study s':>8} {'trials/h':>9} {'vs A':>6} {'steady/h':>9} {'vs A':>6} {'start s':>8} {'tail s':>7} "
          f"{'load':>5}")
    for cost, results in rows:
        base: tuple[float, float, float] = (0.0, 0.0, 0.0)
        for arm, (kind, workers) in ARMS.items():
            runs = results[arm]
            trials = runs[0].trials
            wall, span = statistics.median(r.wall for r in runs), statistics.median(r.span for r in runs)
            steady = statistics.median(r.steady or 0.0 for r in runs)
            rates = (3600 * trials / wall, 3600 * trials / span, steady)
            base = rates if arm == "A" else base
            label = f"{arm} {kind}, {workers} worker{'s' * (workers > 1)}"
            print(f"{cost:6} {label:22} {trials:>6} {wall:>12.1f} {rates[0]:>9.0f} {rates[0] / base[0]:>5.2f}x "
                  f"{span:>8.1f} {rates[1]:>9.0f} {rates[1] / base[1]:>5.2f}x {rates[2]:>9.0f} "
                  f"{rates[2] / base[2] if base[2] else 0:>5.2f}x "
                  f"{statistics.median(r.startup for r in runs):>8.1f} {statistics.median(r.tail for r in runs):>7.1f} "
                  f"{statistics.median(r.load for r in runs):>5.1f}")
    for cost, results in rows:
        names = list(dict.fromkeys(k for runs in results.values() for r in runs for k in r.phases))
        if not names:
            continue
        print(f"\n{cost}: where the time went (medians; seconds, per steady trial from 'train steps' on)")
        print(f"{'':22}" + "".join(f"{arm:>10}" for arm in ARMS))
        for name in names:
            values = [[r.phases[name] for r in results[arm] if name in r.phases] for arm in ARMS]
            print(f"{name:22}" + "".join(f"{statistics.median(v):>10.2f}" if v else f"{'':>10}" for v in values))


if __name__ == "__main__":
    main()
