"""Search efficiency on a synthetic LoRA-quality surface (loratune.search.synthetic): which sampler, and what
per-epoch scoring + pruning saves.

1. Median regret after 20 trials for TPE, GP, random and grid over >= 10 seeds; each trial is one training run at
   its own ``epochs`` value scored once at the end (what a search without per-epoch scoring does).
2. Training compute: (a) one run per epochs value (6..20) for each config, (b) one 20-epoch run per config with every
   epoch scored (the trial's value is its best epoch), (c) (b) plus Hyperband pruning. Compute is counted in epochs.

Regret = true optimum - true value of what the search would hand back: the first candidate of the product's own
ranking rule (``loratune.search.selection.ranked``: every scored epoch competes, a pruned trial's too) on the *observed*
scores, so noise can mislead a strategy just as it does on real scores. Pruners are the product's (``make_pruner``). Run: ``python benchmarks/search_efficiency.py [--seeds 10]``
(~35 s on an idle 2-core machine, ~26 s of CPU; GP's model fits are most of it).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import optuna
import torch
from rich.console import Console
from rich.table import Table

from loratune.search.config import SearchSection
from loratune.search.samplers import make_pruner
from loratune.search.selection import ranked
from loratune.search.synthetic import ALPHA_RATIOS, EPOCH_RANGE, LR_RANGE, RANKS, Surface

N_TRIALS = 20
MAX_EPOCHS = EPOCH_RANGE[1]


def _config(trial: optuna.Trial) -> tuple[float, int, float]:
    lr = trial.suggest_float("learning_rate", *LR_RANGE, log=True)
    rank = trial.suggest_categorical("rank", list(RANKS))
    ratio = trial.suggest_categorical("alpha_ratio", list(ALPHA_RATIOS))
    return lr, rank, ratio


def _sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # 20 points: 5 log-spaced learning rates x 2 ranks x 2 epochs values (alpha_ratio fixed at 1).
    grid = {"learning_rate": [float(x) for x in np.geomspace(*LR_RANGE, 5)], "rank": [16, 64], "alpha_ratio": [1.0],
            "epochs": [10, 16]}
    return optuna.samplers.GridSampler(grid, seed=seed)


def _candidate(trial: optuna.Trial, observed: float, epoch: int) -> None:
    """Record a scored epoch the way the runner does (best-epoch user attrs), so the product's ranking can read it."""
    if observed > trial.user_attrs.get("composite", -np.inf):
        trial.set_user_attr("composite", observed)
        trial.set_user_attr("best_epoch", epoch)
        trial.set_user_attr("lora", f"checkpoints/epoch-{epoch:04d}")


def _handed_back(study: optuna.Study, truth: dict[tuple[int, int], float]) -> float:
    """The true value of what loratune would copy to RUN/best: ``selection.ranked``'s first candidate."""
    best = ranked(study.get_trials(deepcopy=False), SearchSection())[0]
    return truth[(best.number, best.user_attrs["best_epoch"])]


def run_per_value(surface: Surface, sampler: str, seed: int) -> tuple[float, int]:
    """One run per trial at its own epochs value, scored once: returns (true value handed back, epochs spent)."""
    rng = np.random.default_rng(seed + 1000)
    study = optuna.create_study(direction="maximize", sampler=_sampler(sampler, seed))
    truth: dict[tuple[int, int], float] = {}
    spent = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        lr, rank, ratio = _config(trial)
        epochs = trial.suggest_int("epochs", *EPOCH_RANGE)
        spent += epochs
        truth[(trial.number, epochs)] = surface.true(lr, rank, ratio, epochs)
        observed = surface.observe(rng, lr, rank, ratio, epochs)
        _candidate(trial, observed, epochs)
        return observed

    study.optimize(objective, n_trials=N_TRIALS)
    return _handed_back(study, truth), spent


def run_per_epoch(surface: Surface, seed: int, pruner: str = "none") -> tuple[float, int]:
    """One 20-epoch run per config, every epoch scored and reported, with the product's pruner (``make_pruner``) and
    its rule that the last epoch is never pruned. What is handed back is what the product's ranking picks: a pruned
    trial's best epoch competes like any other."""
    rng = np.random.default_rng(seed + 2000)
    # A fixed study name: Hyperband assigns brackets by hashing it.
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
                                pruner=make_pruner(SearchSection(pruner=pruner), MAX_EPOCHS),
                                study_name=f"per-epoch-{seed}")
    truth: dict[tuple[int, int], float] = {}
    spent = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        lr, rank, ratio = _config(trial)
        for epoch in range(1, MAX_EPOCHS + 1):
            spent += 1
            observed = surface.observe(rng, lr, rank, ratio, epoch)
            truth[(trial.number, epoch)] = surface.true(lr, rank, ratio, epoch)
            _candidate(trial, observed, epoch)
            trial.report(observed, epoch)  # the raw per-epoch score, as the runner reports it
            if epoch < MAX_EPOCHS and trial.should_prune():
                raise optuna.TrialPruned()
        return float(trial.user_attrs["composite"])

    study.optimize(objective, n_trials=N_TRIALS)
    return _handed_back(study, truth), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    # GPSampler fits its model with torch; one thread is faster than contending for shared cores.
    torch.set_num_threads(1)
    surface = Surface()
    optimum, where = surface.optimum()
    console = Console(width=max(Console().width, 120))
    start = time.perf_counter()

    table = Table(title=f"Median regret after {N_TRIALS} trials, {args.seeds} seeds (optimum {optimum:.3f} at "
                        f"lr {where['learning_rate']:.2e}, rank {where['rank']}, alpha/rank {where['alpha_ratio']}, "
                        f"epoch {where['epochs']})")
    for col in ("sampler", "median regret", "IQR", "mean epochs / trial", "seconds"):
        table.add_column(col, justify="right" if col != "sampler" else "left")
    for name in ("tpe", "gp", "random", "grid"):
        t0 = time.perf_counter()
        results = [run_per_value(surface, name, seed) for seed in range(args.seeds)]
        regrets = np.array([optimum - v for v, _ in results])
        q1, q3 = np.percentile(regrets, [25, 75])
        table.add_row(name.upper() if name in ("tpe", "gp") else name, f"{np.median(regrets):.4f}",
                      f"{q1:.4f}–{q3:.4f}", f"{np.mean([s for _, s in results]) / N_TRIALS:.1f}",
                      f"{time.perf_counter() - t0:.1f}")
    console.print(table)

    per_value_cost = N_TRIALS * sum(range(EPOCH_RANGE[0], EPOCH_RANGE[1] + 1))
    tpe_value = [run_per_value(surface, "tpe", s) for s in range(args.seeds)]
    per_epoch = [run_per_epoch(surface, s) for s in range(args.seeds)]
    pruners = {
        "+ Hyperband pruning (loratune default)": "hyperband",
        "+ median pruning (loratune's: 2 start-up trials, 1 warm-up epoch)": "median",
        "+ patient pruning (loratune's: stop 2 epochs after the peak)": "patient",
    }
    pruned = {label: [run_per_epoch(surface, s, name) for s in range(args.seeds)] for label, name in pruners.items()}
    table = Table(title=f"Training compute for {N_TRIALS} configs (TPE; epochs counted; median over {args.seeds} seeds)")
    for col in ("strategy", "epochs trained", "saved vs one run per epochs value", "median regret"):
        table.add_column(col, justify="right" if col != "strategy" else "left")
    table.add_row(f"one run per epochs value ({EPOCH_RANGE[0]}..{EPOCH_RANGE[1]}) per config", f"{per_value_cost}",
                  "0%", "same checkpoints as the next-but-one row")
    table.add_row("TPE with epochs as a parameter (1 run, scored once)",
                  f"{np.median([s for _, s in tpe_value]):.0f}",
                  f"{1 - np.median([s for _, s in tpe_value]) / per_value_cost:.0%}",
                  f"{np.median([optimum - v for v, _ in tpe_value]):.4f}")
    for label, res in (("per-epoch scoring (1 run of 20 epochs, best epoch)", per_epoch), *pruned.items()):
        spent = float(np.median([s for _, s in res]))
        table.add_row(label, f"{spent:.0f}", f"{1 - spent / per_value_cost:.0%}",
                      f"{np.median([optimum - v for v, _ in res]):.4f}")
    console.print(table)
    console.print(f"[dim]total {time.perf_counter() - start:.1f} s[/dim]")


if __name__ == "__main__":
    main()
