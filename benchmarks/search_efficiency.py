"""Search efficiency of the product's own runner (``run_optimize``) on a synthetic LoRA surface: which sampler and
pruner hand back the best LoRA for the training and scoring they spend.

Every study is a real ``loratune optimize`` run (SQLite study, phases, pruning, trial folders, RUN/best) whose trial
backend is ``loratune.search.synthetic:make``: scores come from ``LoraSurface`` (lr x rank interaction, optimizer and
min-SNR dimensions, identity and alignment pulling apart with over-training, noise correlated across epochs) over the
product's default search space. Regret = true optimum - true value of the (trial, epoch) the run copied to RUN/best,
so noisy scores can mislead a strategy just as real ones do. Cost counts training epochs and scored epochs (sampling +
scoring a checkpoint costs about a training epoch on SD1.5). The ensemble trial is off (a merge has no place on the
surface).

Run: ``python benchmarks/search_efficiency.py [--seeds 10] [--trials 20] [--samplers tpe,gp,random]
[--pruners hyperband,median,patient,none]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

BACKEND = "loratune.search.synthetic:make"


@dataclass
class Outcome:
    regret: float
    trained: int
    scored: int
    pruned: int


def one_study(root: Path, sampler: str, pruner: str, seed: int, trials: int, optimum: float,
              search_epochs: bool = False) -> Outcome:
    """One ``loratune optimize`` run over the default space, trials up to 20 epochs (the seed space's longest);
    ``search_epochs`` adds the seed's ``epochs: 6..20`` dimension (what the product searched before)."""
    import optuna

    from loratune.config import load_config
    from loratune.runfolder import STUDY_NAME, RunFolder
    from loratune.search.config import ParamSpec
    from loratune.search.runner import run_optimize
    from loratune.search.synthetic import EPOCH_RANGE, LoraSurface, Point

    run = RunFolder(root / f"{sampler}-{pruner}-{seed}-{search_epochs}")
    config = load_config(None, [f"search.sampler={sampler}", f"search.pruner={pruner}", f"search.seed={seed}",
                                f"search.n_trials={trials}", "search.phases.ensemble_top_k=0",
                                "search.heartbeat_interval=60", f"train.epochs={EPOCH_RANGE[1]}"])
    if search_epochs:
        space = config.search.space | {"epochs": ParamSpec(type="int", low=EPOCH_RANGE[0], high=EPOCH_RANGE[1])}
        config = config.model_copy(update={"search": config.search.model_copy(update={"space": space})})
    run_optimize(config, run.root, backend=BACKEND, say=lambda m: None)
    best = json.loads((run.best / "best.json").read_text())
    params = json.loads((run.trial(best["trial"]) / "params.json").read_text())
    surface = LoraSurface()
    value = surface.true(Point.of(params["train"]), best["best_epoch"])
    study = optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None))
    done = study.get_trials(deepcopy=False)
    epochs = sum(len(t.intermediate_values) for t in done)
    shutil.rmtree(run.root)
    return Outcome(optimum - value, epochs, epochs,
                   sum(t.state == optuna.trial.TrialState.PRUNED for t in done))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--samplers", default="tpe,gp,random")
    parser.add_argument("--pruners", default="patient,median,hyperband,none")
    parser.add_argument("--references", default="random+none,tpe+hyperband",
                        help="sampler+pruner rows run with epochs searched too (the product's space before)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)  # GP fits: one thread beats contending for shared cores
    from loratune.search.synthetic import LoraSurface

    optimum, where, epoch = LoraSurface().optimum()
    samplers, pruners = args.samplers.split(","), args.pruners.split(",")
    results: dict[tuple[str, str, bool], list[Outcome]] = {}
    seconds: dict[tuple[str, str, bool], float] = {}
    combos = [(s, p, False) for s in samplers for p in pruners]
    combos += [(*ref.split("+"), True) for ref in args.references.split(",") if ref]
    console = Console(width=max(Console().width, 100))
    # The studies' SQLite files commit on every report: on tmpfs where there is one, so disk syncs do not dominate.
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="loratune-search-bench-", dir=shm if shm.is_dir() else None))
    try:
        with console.status("") as status:
            for combo in combos:
                sampler, pruner, search_epochs = combo
                start = time.perf_counter()
                results[combo] = []
                for seed in range(args.seeds):
                    status.update(f"{sampler} + {pruner}{' + epochs' * search_epochs}: seed {seed + 1}/{args.seeds}")
                    results[combo].append(one_study(root, sampler, pruner, seed, args.trials, optimum, search_epochs))
                seconds[combo] = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)  # nothing left behind, even after Ctrl-C

    reference = float(np.median([o.regret for o in results.get(("random", "none", True), [])] or [np.nan]))
    table = Table(title=f"Product runner, {args.trials} trials, {args.seeds} seeds: optimum {optimum:.3f} "
                        f"({where.optimizer}, lr {where.learning_rate:.1e}, rank {where.rank}, epoch {epoch})")
    for col in ("sampler", "pruner", "epochs", "median regret", "vs random", "IQR", "epochs trained",
                "epochs scored", "pruned", "s/study"):
        table.add_column(col, justify="left" if col in ("sampler", "pruner", "epochs") else "right")
    for (sampler, pruner, search_epochs), outs in results.items():
        regrets = np.array([o.regret for o in outs])
        q1, q3 = np.percentile(regrets, [25, 75])
        table.add_row(sampler, pruner, "searched" if search_epochs else "to 20", f"{np.median(regrets):.4f}",
                      f"{np.median(regrets) / reference:.2f}x",
                      f"{q1:.3f}-{q3:.3f}", f"{np.median([o.trained for o in outs]):.0f}",
                      f"{np.median([o.scored for o in outs]):.0f}", f"{np.mean([o.pruned for o in outs]):.1f}",
                      f"{seconds[sampler, pruner, search_epochs] / len(outs):.1f}")
    console.print(table)
    console.print("[dim]vs random: median regret / random search's with epochs searched and no pruning (what a "
                  "search without per-epoch selection does). epochs 'to 20': not searched, each trial trains up to 20 "
                  "and its best epoch counts. Cost: every trained epoch is also sampled and scored.[/dim]")


if __name__ == "__main__":
    main()
