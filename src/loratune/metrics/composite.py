"""Normalisation of raw backend scores to [0, 1] and the weighted composite over the five axes (plain math)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


def normalise(value: float | None, lo: float, hi: float, higher_is_better: bool = True) -> float | None:
    """Map ``value`` linearly from [lo, hi] to [0, 1], clipped; flipped when lower is better. None stays None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hi <= lo:
        raise ValueError(f"normalisation range must have hi > lo (got {lo}, {hi})")
    x = (float(value) - lo) / (hi - lo)
    x = min(1.0, max(0.0, x))
    return x if higher_is_better else 1.0 - x


@dataclass(frozen=True)
class Composite:
    value: float | None
    weights_used: dict[str, float]  # renormalised over the axes that were computed
    missing: list[str]  # axes with positive weight that could not be computed


def composite(normalised: Mapping[str, float | None], weights: Mapping[str, float]) -> Composite:
    """Weighted mean of the normalised axes; missing axes are left out and the remaining weights renormalised.

    >>> composite({"alignment": 1.0, "diversity": None}, {"alignment": 0.3, "diversity": 0.1}).value
    1.0
    """
    present = {a: w for a, w in weights.items() if w > 0 and normalised.get(a) is not None}
    missing = sorted(a for a, w in weights.items() if w > 0 and normalised.get(a) is None)
    total = sum(present.values())
    if total <= 0:
        return Composite(None, {}, missing)
    used = {a: w / total for a, w in present.items()}
    return Composite(sum(used[a] * float(normalised[a]) for a in used), used, missing)  # type: ignore[arg-type]


BOOTSTRAP_RESAMPLES = 200


def composite_se(
    per_image: Mapping[str, Sequence[float | None] | None],
    normalisations: Mapping[str, Callable[[float | None], float | None]],
    weights_used: Mapping[str, float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> float | None:
    """The composite's standard error over the sample images: how far it would move with other seeds.

    A bootstrap over images (``resamples`` draws with replacement from a fixed seed, so the same images give the same
    number): each draw recomputes every weighted axis as the mean of its per-image values, normalises it as the axis
    is normalised and takes the weighted sum. An axis without per-image values is held at its value: it adds no
    spread. None with fewer than two images or no weighted axis that has per-image values.

    >>> se = composite_se({"alignment": [0.0, 1.0] * 8}, {"alignment": lambda v: v}, {"alignment": 1.0})
    >>> round(se, 2)  # exactly: 0.5 / 4
    0.13
    """
    import numpy as np

    columns = {a: per_image.get(a) for a, w in weights_used.items() if w > 0}
    columns = {a: v for a, v in columns.items() if v is not None and sum(x is not None for x in v) >= 2}
    if not columns:
        return None
    n = len(next(iter(columns.values())))
    if any(len(v) != n for v in columns.values()):
        return None
    values = np.array([[np.nan if x is None else float(x) for x in v] for v in columns.values()])  # axes x images
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    picked = values[:, draws]  # axes x resamples x images
    present = (~np.isnan(picked)).sum(axis=2)
    means = np.where(present > 0, np.nansum(picked, axis=2) / np.maximum(present, 1), np.nan)
    totals = []
    for r in range(resamples):
        normed = [normalisations[a](None if np.isnan(m) else float(m)) for a, m in zip(columns, means[:, r])]
        if all(x is not None for x in normed):  # a draw with no value for an axis says nothing about its spread
            totals.append(sum(weights_used[a] * float(x) for a, x in zip(columns, normed)))  # type: ignore[arg-type]
    return float(np.std(totals, ddof=1)) if len(totals) >= 2 else None
