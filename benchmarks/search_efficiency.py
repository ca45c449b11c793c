"""Search efficiency of the product's own runner (``run_optimize``) on a synthetic LoRA surface: which sampler and
pruner hand back the best LoRA for the training and scoring they spend.

Every study is a real ``loratune optimize`` run (SQLite study, phases, pruning, trial folders, RUN/best) whose trial
backend is ``loratune.search.synthetic:make``: scores come from ``LoraSurface`` (lr x rank interaction, optimizer and
min-SNR dimensions, identity and alignment pulling apart with over-training, noise correlated across epochs) over the
product's default search space. Regret = true optimum - true value of the (trial, epoch) the run copied to RUN/best,
so noisy scores can mislead a strategy just as real ones do. It is split into exploration (optimum - the best true
value among every (trial, epoch) the study scored) and selection (what choosing RUN/best by noisy scores lost against
that); plain random search is the reference, and a row whose trials all run the optimal settings is the noise floor.
Cost counts training epochs and scored epochs (sampling + scoring a checkpoint costs about a training epoch on SD1.5).
The ensemble trial is off (a merge has no place on the surface).

Run: ``python benchmarks/search_efficiency.py [--seeds 10] [--trials 20] [--samplers tpe,gp,random]
[--pruners hyperband,median,patient,none] [--first-seed 0] [--rows random+none+plain,...]
[--set search.phases.refine_trials=6]``.
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

import numpy as np
from rich.console import Console
from rich.table import Table

BACKEND = "loratune.search.synthetic:make"


@dataclass
class Outcome:
    regret: float
    explore: float  # optimum - the best true value among every (trial, epoch) the study evaluated
    trained: int
    scored: int
    pruned: int

    @property
    def select(self) -> float:
        """What the choice of RUN/best lost against the best checkpoint the study had (noisy scores mislead it)."""
        return self.regret - self.explore


# How a row's studies are set up beyond sampler and pruner:
#   product  the product's phases: baseline, search, refine (sampler in a space narrowed around the best, each refine
#            trial after the first moving one categorical of the best to a neighbouring choice)
#   plain    plain search: no baseline, no refine, every trial from the sampler over the whole space
#   epochs   the product's phases with the seed's ``epochs: 6..20`` dimension searched (what it did before)
#   pinned   every trial runs the optimal settings: the regret noisy per-epoch selection alone leaves (noise floor)
VARIANTS = ("product", "plain", "epochs", "pinned")


def one_study(root: Path, sampler: str, pruner: str, seed: int, trials: int, optimum: float,
              variant: str = "product", overrides: tuple[str, ...] = ()) -> Outcome:
    """One ``loratune optimize`` run over the default space, trials up to 20 epochs (the seed space's longest)."""
    import optuna

    from loratune.config import load_config
    from loratune.runfolder import STUDY_NAME, RunFolder
    from loratune.search.config import ParamSpec
    from loratune.search.runner import run_optimize
    from loratune.search.synthetic import EPOCH_RANGE, LoraSurface, Point

    surface = LoraSurface()
    run = RunFolder(root / f"{sampler}-{pruner}-{seed}-{variant}")
    sets = [f"search.sampler={sampler}", f"search.pruner={pruner}", f"search.seed={seed}", f"search.n_trials={trials}",
            "search.phases.ensemble_top_k=0", "search.heartbeat_interval=60", f"train.epochs={EPOCH_RANGE[1]}"]
    if variant in ("plain", "pinned"):
        sets += ["search.phases.baseline=false", "search.phases.refine_trials=0"]
    config = load_config(None, [*sets, *overrides])
    space = config.search.space
    if variant == "epochs":
        space = space | {"epochs": ParamSpec(type="int", low=EPOCH_RANGE[0], high=EPOCH_RANGE[1])}
    if variant == "pinned":
        best = surface.optimum()[1]
        space = {name: ParamSpec(type="categorical", choices=[value]) for name, value in (
            ("learning_rate", best.learning_rate), ("rank", best.rank), ("alpha_ratio", best.alpha_ratio),
            ("optimizer", best.optimizer), ("min_snr_gamma", best.min_snr_gamma))}
    config = config.model_copy(update={"search": config.search.model_copy(update={"space": space})})
    run_optimize(config, run.root, backend=BACKEND, say=lambda m: None)
    best = json.loads((run.best / "best.json").read_text())
    params = json.loads((run.trial(best["trial"]) / "params.json").read_text())
    value = surface.true(Point.of(params["train"]), best["best_epoch"])
    evaluated = []
    for folder in run.trials.glob("*/"):
        if (folder / "scores.json").is_file():
            point = Point.of(json.loads((folder / "params.json").read_text())["train"])
            evaluated += [surface.true(point, e["epoch"]) for e in json.loads((folder / "scores.json").read_text())["epochs"]]
    study = optuna.load_study(study_name=STUDY_NAME, storage=run.storage_url(None))
    done = study.get_trials(deepcopy=False)
    epochs = sum(len(t.intermediate_values) for t in done)
    shutil.rmtree(run.root)
    return Outcome(optimum - value, optimum - max(evaluated), epochs, epochs,
                   sum(t.state == optuna.trial.TrialState.PRUNED for t in done))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--samplers", default="tpe,gp,random")
    parser.add_argument("--pruners", default="patient,median,hyperband,none")
    parser.add_argument("--rows", default="random+none+plain,random+patient+plain,random+none+epochs,"
                                          "tpe+hyperband+epochs,random+patient+pinned",
                        help="more rows, sampler+pruner+variant (variants: " + ", ".join(VARIANTS) + ")")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every study (e.g. search.phases.refine_trials=6)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)  # GP fits: one thread beats contending for shared cores
    from loratune.search.synthetic import LoraSurface

    optimum, where, epoch = LoraSurface().optimum()
    combos = [(s, p, "product") for s in args.samplers.split(",") if s for p in args.pruners.split(",") if p]
    combos += [tuple(row.split("+")) for row in args.rows.split(",") if row]  # type: ignore[misc]
    results: dict[tuple[str, ...], list[Outcome]] = {}
    seconds: dict[tuple[str, ...], float] = {}
    console = Console(width=max(Console().width, 132))
    # The studies' SQLite files commit on every report: on tmpfs where there is one, so disk syncs do not dominate.
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="loratune-search-bench-", dir=shm if shm.is_dir() else None))
    try:
        with console.status("") as status:
            for combo in combos:
                sampler, pruner, variant = combo
                start = time.perf_counter()
                results[combo] = []
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    status.update(f"{sampler} + {pruner} ({variant}): seed {seed + 1 - args.first_seed}/{args.seeds}")
                    results[combo].append(one_study(root, sampler, pruner, seed, args.trials, optimum, variant,
                                                    tuple(args.set)))
                seconds[combo] = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)  # nothing left behind, even after Ctrl-C

    reference = float(np.median([o.regret for o in results.get(("random", "none", "plain"), [])] or [np.nan]))
    sets = f", {' '.join(args.set)}" if args.set else ""
    table = Table(title=f"Product runner, {args.trials} trials, {args.seeds} seeds{sets}: optimum {optimum:.3f} "
                        f"({where.optimizer}, lr {where.learning_rate:.1e}, rank {where.rank}, epoch {epoch})")
    for col in ("sampler", "pruner", "phases", "median regret", "vs random", "IQR", "explore", "select",
                "epochs trained", "pruned", "s/study"):
        table.add_column(col, justify="left" if col in ("sampler", "pruner", "phases") else "right")
    for (sampler, pruner, variant), outs in results.items():
        regrets = np.array([o.regret for o in outs])
        q1, q3 = np.percentile(regrets, [25, 75])
        table.add_row(sampler, pruner, variant, f"{np.median(regrets):.4f}", f"{np.median(regrets) / reference:.2f}x",
                      f"{q1:.3f}-{q3:.3f}", f"{np.median([o.explore for o in outs]):.4f}",
                      f"{np.median([o.select for o in outs]):.4f}", f"{np.median([o.trained for o in outs]):.0f}",
                      f"{np.mean([o.pruned for o in outs]):.1f}", f"{seconds[sampler, pruner, variant] / len(outs):.1f}")
    console.print(table)
    console.print("[dim]phases: product = baseline, search, refine (the sampler in a space narrowed around the best; each "
                  "refine trial after the first moves one categorical to a neighbouring choice, e.g. rank 32 -> 64); "
                  "plain = every trial from the sampler over the whole space; epochs = product with epochs 6..20 "
                  "searched too (what it did before); pinned = every trial runs the optimal settings (the noise "
                  "floor of per-epoch selection). Except 'epochs', each trial trains up to 20 epochs and any "
                  "scored epoch can be RUN/best. vs random: median regret / plain random search's (random + none + "
                  "plain). explore: optimum - best true value among every (trial, epoch) evaluated; select: what "
                  "choosing RUN/best by noisy scores lost against that (medians, so they need not add up). Cost: "
                  "every trained epoch is also sampled and scored.[/dim]")


if __name__ == "__main__":
    main()
