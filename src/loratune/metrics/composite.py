"""Normalisation of raw backend scores to [0, 1] and the weighted composite over the five axes (plain math)."""

from __future__ import annotations

import math
from collections.abc import Mapping
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
