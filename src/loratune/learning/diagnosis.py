"""Each epoch named for what it shows: ``underfit``, ``good``, ``overfit`` or ``copying``, with the rule that fired.

The rules, checked in this order (the thresholds are ``evaluation.learning.*``):

* ``copying``: the copy rate is over ``max_copy_rate`` (the search's constraint is violated);
* ``overfit`` (diverging): the deterministic validation loss is more than ``validation_rise`` above the lowest of the
  trial's earlier epochs — the LoRA predicts images worse than it did, it is leaving the data (such an epoch is no
  candidate for RUN/best: ``diverged``);
* ``underfit``: consistency (identity, normalised) is under ``identity_low``;
* ``overfit``: consistency still rises (above the previous scored epoch's) while alignment or diversity has fallen
  more than ``overfit_drop`` below its best earlier epoch;
* ``good``: none of these.

A rule that needs a number which was not measured does not fire (a missing axis is never 0).

>>> rows = [EpochMeasures(1, {"consistency": 0.3}), EpochMeasures(2, {"consistency": 0.6, "alignment": 0.8}),
...         EpochMeasures(3, {"consistency": 0.7, "alignment": 0.6}), EpochMeasures(4, {"consistency": 0.9}, 0.5)]
>>> [d.label for d in diagnose(rows, identity_low=0.5, overfit_drop=0.05, max_copy_rate=0.2)]
['underfit', 'good', 'overfit', 'copying']
>>> diagnose(rows, 0.5, 0.05, 0.2)[2].rule
'consistency rose 0.600 -> 0.700 while alignment fell 0.800 -> 0.600 (more than 0.05 below its best)'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LABELS = ("underfit", "good", "overfit", "copying")


@dataclass
class EpochMeasures:
    """What the diagnosis reads of one epoch: its normalised axes and its copy rate."""

    epoch: int
    axes: dict[str, float | None] = field(default_factory=dict)
    copy_rate: float | None = None
    validation_loss: float | None = None


@dataclass
class Diagnosis:
    label: str
    rule: str

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "rule": self.rule}


def diverged(validation_loss: float | None, earlier: list[float | None], rise: float | None) -> str | None:
    """Why an epoch counts as diverging (its validation loss more than ``rise`` above the lowest earlier one), or
    None.

    >>> diverged(0.046, [0.041, 0.040], 0.10)
    'validation loss rose 0.0400 -> 0.0460 (+15%, over validation_rise 10%)'
    >>> diverged(0.043, [0.041, 0.040], 0.10) is None
    True
    """
    lowest = min((v for v in earlier if v is not None), default=None)
    if rise is None or validation_loss is None or lowest is None or validation_loss <= lowest * (1 + rise):
        return None
    return (f"validation loss rose {lowest:.4f} -> {validation_loss:.4f} (+{validation_loss / lowest - 1:.0%}, "
            f"over validation_rise {rise:.0%})")


def diagnose(epochs: list[EpochMeasures], identity_low: float, overfit_drop: float,
             max_copy_rate: float, validation_rise: float | None = None) -> list[Diagnosis]:
    """One diagnosis per epoch, in epoch order; each epoch is judged against the epochs before it."""
    ordered = sorted(epochs, key=lambda e: e.epoch)
    out = []
    for i, e in enumerate(ordered):
        out.append(_one(e, ordered[:i], identity_low, overfit_drop, max_copy_rate, validation_rise))
    by_epoch = {e.epoch: d for e, d in zip(ordered, out)}
    return [by_epoch[e.epoch] for e in epochs]


def _one(e: EpochMeasures, earlier: list[EpochMeasures], identity_low: float, overfit_drop: float,
         max_copy_rate: float, validation_rise: float | None = None) -> Diagnosis:
    if e.copy_rate is not None and e.copy_rate > max_copy_rate:
        return Diagnosis("copying", f"copy rate {e.copy_rate:.2f} > max_copy_rate {max_copy_rate:.2f}")
    if (why := diverged(e.validation_loss, [p.validation_loss for p in earlier], validation_rise)) is not None:
        return Diagnosis("overfit", why)
    identity = e.axes.get("consistency")
    if identity is not None and identity < identity_low:
        return Diagnosis("underfit", f"consistency {identity:.3f} < identity_low {identity_low:.2f}")
    before = next((p.axes.get("consistency") for p in reversed(earlier) if p.axes.get("consistency") is not None), None)
    if identity is not None and before is not None and identity > before:
        for axis in ("alignment", "diversity"):
            now = e.axes.get(axis)
            peak = max((v for p in earlier if (v := p.axes.get(axis)) is not None), default=None)
            if now is not None and peak is not None and now < peak - overfit_drop:
                return Diagnosis("overfit", f"consistency rose {before:.3f} -> {identity:.3f} while {axis} fell "
                                            f"{peak:.3f} -> {now:.3f} (more than {overfit_drop:.2g} below its best)")
    measured = ([f"consistency {identity:.3f} >= {identity_low:.2f}"] if identity is not None else []) + (
        [f"copy rate {e.copy_rate:.2f} <= {max_copy_rate:.2f}"] if e.copy_rate is not None else [])
    return Diagnosis("good", "no rule fired" + (f" ({', '.join(measured)})" if measured else ""))
