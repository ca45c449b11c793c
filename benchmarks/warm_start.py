"""Warm start measured: how many trials a study of a second character needs when it starts from the first one's run.

    python benchmarks/warm_start.py world [--seeds 20] [--source T --target T] [--set K=V]
    python benchmarks/warm_start.py synthetic [--seeds 20] [--shift '{"lr_opt": 2.4e-4}']

``world``: per seed, a real 8-trial study of the world's first target (``lucaboy``'s replay table) is kept, then the
second target (``albertoboy``'s table, measured the same way) is searched twice with the same seed: cold, and with
``--warm-start`` from the first study. ``synthetic``: the same on ``LoraSurface`` (the default space, the product's
phases), the second task's surface shifted (a larger best step, an earlier peak). Each study is read as an anytime
curve (``anytime.prefix_picks``: the RUN/best the product's rule hands back after k trials, judged by the oracle or the
true surface), and the question is the first k at which the warm-started studies' median regret is no worse than the
cold studies' median at their full length.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
from anytime import prefix_picks

DATA = Path(__file__).parent / "data"


def reach(cold: list[dict[str, Any]], warm: list[dict[str, Any]], trials: int) -> dict[str, Any]:
    """Median regret per trial count, and the first count at which the warm studies' median reaches the cold ones'
    median at ``trials``."""
    target = float(np.median([c["regret"] for c in cold]))
    per_k = {}
    for k in range(1, trials + 1):
        per_k[k] = {name: float(np.median([next(a["regret"] for a in s["anytime"] if a["trials"] == k)
                                           for s in studies]))
                    for name, studies in (("cold", cold), ("warm", warm))}
    first = next((k for k in range(1, trials + 1) if per_k[k]["warm"] <= target + 1e-12), None)
    each = [next((a["trials"] for a in s["anytime"] if a["regret"] <= target + 1e-12), None) for s in warm]
    return {"cold_median": target, "cold_mean": float(np.mean([c["regret"] for c in cold])),
            "warm_median": float(np.median([w["regret"] for w in warm])),
            "warm_mean": float(np.mean([w["regret"] for w in warm])),
            "reached_at": first, "per_trials": per_k,
            "seeds_reaching_within_3": sum(1 for e in each if e is not None and e <= 3)}


def world(seeds: int, first: int, trials: int, source: Path, target: Path, overrides: list[str]) -> dict[str, Any]:
    import torch
    from world_search import Table, one_study

    from loratune.world.folder import write_world

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    source_table, target_table = Table(source), Table(target)
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="loratune-warm-", dir=shm if shm.is_dir() else None))
    runs: dict[str, list[dict[str, Any]]] = {"source": [], "cold": [], "warm": []}
    try:
        os.environ["LORATUNE_WORLD_CONFIG"] = str(write_world(root / "world").config)
        for seed in range(first, first + seeds):
            os.environ["LORATUNE_WORLD_TABLE"] = str(source)
            runs["source"].append(one_study(root, source_table, "tpe", "patient", seed, trials, overrides,
                                            name=f"source-{seed}", keep=True))
            os.environ["LORATUNE_WORLD_TABLE"] = str(target)
            runs["cold"].append(one_study(root, target_table, "tpe", "patient", seed, trials, overrides))
            runs["warm"].append(one_study(root, target_table, "tpe", "patient", seed, trials,
                                          [*overrides, f"search.warm_start=[{root / f'source-{seed}'}]"]))
            shutil.rmtree(root / f"source-{seed}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"seeds": seeds, "trials": trials, "overrides": overrides, "source": source.name, "target": target.name,
            "source_median": float(np.median([s["regret"] for s in runs["source"]])),
            **reach(runs["cold"], runs["warm"], trials), "runs": runs}


def synthetic_study(root: Path, name: str, surface: dict[str, float], seed: int, trials: int,
                    overrides: list[str], keep: bool = False) -> dict[str, Any]:
    """One product study on ``LoraSurface(**surface)``: regret at its end and its anytime curve."""
    import optuna

    from loratune.config import load_config
    from loratune.runfolder import STUDY_NAME, RunFolder
    from loratune.search.finalists import finalist_config
    from loratune.search.runner import run_optimize
    from loratune.search.synthetic import EPOCH_RANGE, LoraSurface, Point, SyntheticTrials

    os.environ["LORATUNE_SURFACE"] = json.dumps(surface)
    run = RunFolder(root / name)
    config = load_config(None, [f"search.seed={seed}", f"search.n_trials={trials}", "search.phases.ensemble_top_k=0",
                                "search.heartbeat_interval=60", f"train.epochs={EPOCH_RANGE[1]}", *overrides])
    run_optimize(config, run.root, backend="loratune.search.synthetic:make", say=lambda m: None)
    backend, lands = SyntheticTrials(LoraSurface(**surface)), LoraSurface(**surface)
    optimum = lands.optimum()[0]
    done = sorted(optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None)).get_trials(deepcopy=False),
                  key=lambda t: t.number)
    fresh = finalist_config(config)

    def point(trial: Any) -> Point:
        return Point.of(json.loads((run.root / trial.user_attrs["trial_dir"] / "params.json").read_text())["train"])

    def finalist(trial: Any, epoch: int) -> tuple[float | None, dict[str, Any]]:
        lora = run.root / trial.user_attrs["trial_dir"] / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
        score = backend.score_finalist(fresh, lora, None, run.root)
        return score.composite, dict(score.normalised)

    cost = SyntheticTrials.COST
    k = config.search.finalist_samples
    anytime = prefix_picks(run.root, config.search, done, finalist, lambda t, e: lands.true(point(t), e),
                           k * cost["sample"] + (1 + k) * cost["score"], optimum)
    best = json.loads((run.best / "best.json").read_text())
    regret = optimum - lands.true(point(next(t for t in done if t.number == best["trial"])), best["best_epoch"])
    if not keep:
        shutil.rmtree(run.root)
    return {"regret": regret, "anytime": anytime, "prefix_agrees": abs(anytime[-1]["regret"] - regret) < 1e-12,
            "first_trials": [dict(t.params) for t in done[:3]]}


def synthetic(seeds: int, first: int, trials: int, shift: dict[str, float], overrides: list[str]) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="loratune-warm-synthetic-", dir=shm if shm.is_dir() else None))
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    try:
        for seed in range(first, first + seeds):
            synthetic_study(root, f"source-{seed}", {}, seed, trials, overrides, keep=True)
            runs["cold"].append(synthetic_study(root, f"cold-{seed}", shift, seed, trials, overrides))
            runs["warm"].append(synthetic_study(root, f"warm-{seed}", shift, seed, trials,
                                                [*overrides, f"search.warm_start=[{root / f'source-{seed}'}]"]))
            shutil.rmtree(root / f"source-{seed}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"seeds": seeds, "trials": trials, "shift": shift, "overrides": overrides,
            **reach(runs["cold"], runs["warm"], trials), "runs": runs}


def _print(result: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    out = RichTable(title=title)
    out.add_column("trials", justify="right")
    out.add_column("cold: median regret", justify="right")
    out.add_column("warm-started", justify="right")
    for k, row in result["per_trials"].items():
        out.add_row(str(k), f"{row['cold']:.3f}", f"{row['warm']:.3f}")
    console = Console(width=120)
    console.print(out)
    console.print(f"cold at {result['trials']} trials: median {result['cold_median']:.3f} (mean "
                  f"{result['cold_mean']:.3f}); warm-started: {result['warm_median']:.3f} ({result['warm_mean']:.3f}); "
                  f"the warm median reaches the cold one at {result['reached_at']} trial(s); "
                  f"{result['seeds_reaching_within_3']}/{result['seeds']} warm studies reach it within 3 trials")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("world", "synthetic"))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int)
    parser.add_argument("--source", type=Path, default=DATA / "world_grid.json")
    parser.add_argument("--target", type=Path, default=DATA / "world_grid_albertoboy.json")
    parser.add_argument("--shift", default='{"lr_opt": 2.4e-4, "peak_work": 8.4e-4}',
                        help="`synthetic`: the second task's LoraSurface fields (JSON)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", type=Path, help="also write every study's numbers here")
    args = parser.parse_args()
    if args.what == "world":
        result = world(args.seeds, args.first_seed, args.trials or 8, args.source, args.target, args.overrides)
        title = (f"Warm start on the world: {result['target']} from {result['source']}, {args.seeds} seeds "
                 f"(source studies' median regret {result['source_median']:.3f})")
    else:
        import torch

        torch.set_num_threads(1)
        result = synthetic(args.seeds, args.first_seed, args.trials or 20, json.loads(args.shift), args.overrides)
        title = f"Warm start on the synthetic surface shifted by {args.shift}, {args.seeds} seeds"
    _print(result, title + (f" {' '.join(args.overrides)}" if args.overrides else ""))
    if args.json:
        args.json.write_text(json.dumps(result, default=float) + "\n")


if __name__ == "__main__":
    main()
