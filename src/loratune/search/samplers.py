"""Optuna samplers and pruners as the ``search`` section names them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from loratune.config import Config
from loratune.search.config import ParamSpec, SearchSection
from loratune.search.pruning import NoisyPatientPruner
from loratune.search.scored_view import ScoredTrialsSampler


def max_epochs(config: Config) -> int:
    """The most epochs any trial trains: the top of a searched ``epochs`` range, else the config's own."""
    spec = config.search.space.get("epochs")
    return int(spec.high) if spec is not None and spec.high is not None else config.train.epochs


def make_pruner(search: SearchSection, epochs: int) -> optuna.pruners.BasePruner:
    if search.directions or search.pruner == "none":
        # Optuna cannot prune multi-objective studies (should_prune raises NotImplementedError).
        return optuna.pruners.NopPruner()
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    # search.patience counts epochs; the pruner counts reported (scored) epochs: every k-th with a gate.
    return NoisyPatientPruner(math.ceil(search.patience / search.gating.every), margin=search.noise_margin)


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


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a study seeded ``seed``: a hash of both (NumPy's ``SeedSequence``).
    ``seed + number`` would give study ``s``'s trial ``n`` the draws of study ``s + 1``'s trial ``n - 1``, so
    studies with neighbouring seeds would search nearly the same points.

    >>> trial_seed(0, 1) == trial_seed(1, 0)
    False
    """
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**64, number]).generate_state(1)[0])


def make_sampler(search: SearchSection, phase: str, number: int, n_startup: int,
                 fixed: dict[str, Any] | None = None,
                 warm: Sequence[FrozenTrial] = ()) -> optuna.samplers.BaseSampler:
    """The sampler for trial ``number``, seeded by it so resumed runs and parallel workers draw fresh suggestions;
    ``fixed`` pins the refine phase's categorical choices. Model-based samplers see pruned trials at their best
    epoch (``ScoredTrialsSampler``): GP would otherwise never leave its start-up phase under pruning; and the
    warm-start trials (``warm.warm_trials``), which also count towards their start-up trials."""
    seed = trial_seed(search.seed, number)
    base: optuna.samplers.BaseSampler
    if search.sampler == "grid" and phase == "search":
        return optuna.samplers.GridSampler(_grid(search.space), seed=search.seed)
    if search.directions:
        base = optuna.samplers.NSGAIISampler(seed=seed) if search.sampler != "random" else \
            optuna.samplers.RandomSampler(seed=seed)
    elif search.sampler == "gp":
        base = ScoredTrialsSampler(optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup), warm)
    elif search.sampler == "random":
        base = optuna.samplers.RandomSampler(seed=seed)
    else:
        # multivariate + group: the space is conditional (lr for adamw/lion, d_coef for prodigy) and its dimensions
        # interact (the best lr depends on rank and alpha).
        base = ScoredTrialsSampler(optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup,
                                                               multivariate=True, group=True), warm)
    if phase == "refine" and fixed:
        return optuna.samplers.PartialFixedSampler(fixed, base)
    return base
