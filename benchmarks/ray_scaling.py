"""Trials per hour of ``loratune optimize`` with one local worker (A), one Ray worker (B) and two Ray workers (C).

Each arm is the product's own front door (``run_optimize`` / ``run_ray``) on a fresh run folder with the same plan:
baseline, search, 2 refine trials and the ensemble trial. Two trial costs, reported apart:

- ``sleep`` — wall-time bound: the synthetic LoRA surface (``loratune.search.synthetic``) whose trials cost fixed wall
  time spent waiting: ``--load-seconds`` once per trial backend (what loading the base model and the scorers costs
  a worker), ``--epoch-seconds`` per trained-and-scored epoch and for the ensemble's sampling and scoring. This is a
  worker on its own GPU: its host process waits on the card. It is the only cost under which two workers can show
  their scaling on this workshop machine (2 CPU cores shared with other jobs).
- ``tiny`` — CPU bound: loratune's real trainer, sampler and scorers on ``loratune.tiny``'s random models. Both
  workers share the same 2 busy cores, so two workers cannot go twice as fast here; this shows what Ray costs on
  real trials (startup, one backend load per actor).

The pruner is off (``search.pruner: none``): every trial trains all its epochs, so a trial costs the same in every
arm and trials/hour measures the runner, not pruning luck (which concurrency changes). ``end to end`` is the whole
call (Ray start, actor start, backend loads, every trial, RUN/best); ``study`` is the span from the first trial's start
to the last trial's end, i.e. without the fixed startup, which a study of real (minutes-long) trials pays once. Arms
run interleaved (A B C A B C ...) so the machine's changing load hits each alike; the table shows medians.

Run: ``python benchmarks/ray_scaling.py [--cost sleep,tiny] [--rounds 2] [--trials 10] [--epochs 3]
[--epoch-seconds 2] [--load-seconds 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
# Ray actors import the sleep backend by name: this folder must be on their path too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
sys.path.insert(0, str(HERE))

from loratune.search.synthetic import SyntheticTrials

SLEEP_BACKEND = "ray_scaling:make_sleepy"
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


@dataclass
class Result:
    trials: int
    wall: float
    span: float


def tiny_config(root: Path, trials: int, epochs: int) -> tuple[Any, str | None]:
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
        "search.phases={refine_trials: 2, ensemble_top_k: 2, ensemble_method: svd, ensemble_rank: 4}",
    ]), None


def sleep_config(trials: int, epochs: int) -> tuple[Any, str | None]:
    from loratune.config import load_config

    return load_config(None, [f"search.n_trials={trials}", "search.pruner=none", f"train.epochs={epochs}",
                              "search.phases={refine_trials: 2, ensemble_top_k: 2, ensemble_method: avg}"]), \
        SLEEP_BACKEND


def one_run(run: Path, config: Any, backend: str | None, kind: str, workers: int) -> Result:
    import optuna

    from loratune.runfolder import STUDY_NAME
    from loratune.search.storage import open_storage

    start = time.perf_counter()
    if kind == "local":
        from loratune.search.runner import run_optimize

        run_optimize(config, run, workers=workers, backend=backend, say=lambda m: None)
    else:
        import ray

        from loratune.search.ray_backend import run_ray

        # Started here only to keep the actors' per-trial lines out of the table; run_ray would start the same Ray.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            run_ray(config, run, backend=backend, say=lambda m: None, workers=workers)
        finally:
            ray.shutdown()
    wall = time.perf_counter() - start
    trials = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(run, config.search)).get_trials()
    done = [t for t in trials if t.state.is_finished()]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return Result(len(done), wall, span)


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
            config, backend = tiny_config(root, args.trials, args.epochs) if cost == "tiny" else \
                sleep_config(args.trials, args.epochs)
            results: dict[str, list[Result]] = {arm: [] for arm in ARMS}
            for r in range(args.rounds):
                for arm, (kind, workers) in ARMS.items():
                    result = one_run(root / f"{cost}-{arm}-{r}", config, backend, kind, workers)
                    results[arm].append(result)
                    print(f"{cost} round {r + 1} {arm} ({kind}, {workers} worker{'s' * (workers > 1)}): "
                          f"{result.trials} trials, {result.wall:.1f} s end to end, {result.span:.1f} s study",
                          flush=True)
            rows.append((cost, results))
    print()
    print(f"{'cost':6} {'arm':22} {'trials':>6} {'end-to-end s':>12} {'trials/h':>9} {'vs A':>6} "
          f"{'study s':>8} {'trials/h':>9} {'vs A':>6}")
    for cost, results in rows:
        base_wall = base_span = 0.0
        for arm, (kind, workers) in ARMS.items():
            trials = results[arm][0].trials
            wall = statistics.median(r.wall for r in results[arm])
            span = statistics.median(r.span for r in results[arm])
            per_wall, per_span = 3600 * trials / wall, 3600 * trials / span
            base_wall, base_span = (per_wall, per_span) if arm == "A" else (base_wall, base_span)
            label = f"{arm} {kind}, {workers} worker{'s' * (workers > 1)}"
            print(f"{cost:6} {label:22} {trials:>6} {wall:>12.1f} {per_wall:>9.0f} {per_wall / base_wall:>5.2f}x "
                  f"{span:>8.1f} {per_span:>9.0f} {per_span / base_span:>5.2f}x")


if __name__ == "__main__":
    main()
