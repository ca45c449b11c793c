"""Which trained LoRA is best: the product's one ranking rule, used for RUN/best, the ensemble, refinement and the
benchmarks.

Every trial with at least one scored epoch is a candidate with its best epoch, whatever its state: COMPLETE, PRUNED
(the over-trained run that peaked at epoch 2 and was stopped at epoch 5 is exactly what pruning exists to catch), or
FAIL after scoring (NaN at epoch 6 after a good epoch 4). The runner records the best epoch's scores as user attrs
after every epoch (``composite``, ``axes``, ``best_epoch``, ``lora``), so a candidate's value comes from them, not
from Optuna's ``value``, which a pruned or failed trial does not have.

>>> from optuna.trial import create_trial, TrialState
>>> from loratune.search.config import SearchSection
>>> done = create_trial(value=0.6, user_attrs={"composite": 0.6, "lora": "a.safetensors"})
>>> pruned = create_trial(state=TrialState.PRUNED, user_attrs={"composite": 0.7, "lora": "b.safetensors"})
>>> [t.user_attrs["lora"] for t in ranked([done, pruned], SearchSection())]
['b.safetensors', 'a.safetensors']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from loratune.search.config import SearchSection

# States whose recorded best epoch is final (a RUNNING trial's folder is still being built).
_ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def objective_values(search: SearchSection, composite: float | None,
                     axes: dict[str, Any] | None) -> list[float] | None:
    """The study's objective(s) for one scored epoch: the composite, or one value per ``search.directions`` axis.
    None when a needed value is missing (an axis that could not be computed is never 0)."""
    if not search.directions:
        return None if composite is None else [float(composite)]
    values = []
    for axis in search.directions:
        v = composite if axis == "composite" else (axes or {}).get(axis)
        if v is None:
            return None
        values.append(float(v))
    return values


def candidate_values(t: FrozenTrial, search: SearchSection) -> list[float] | None:
    """A trial's best-epoch objective values, or None when it is no candidate (nothing scored, no LoRA kept, a crash
    whose folder went to trials/partial, or even its best epoch over the copy constraint: ``trial.best_epoch`` picks a
    feasible epoch whenever there is one)."""
    if t.state not in _ENDED or not t.user_attrs.get("lora") or _crashed(t):
        return None
    if (t.user_attrs.get("constraint") or 0.0) > 0:  # its best epoch copies: never RUN/best, nor in the ensemble
        return None
    return objective_values(search, t.user_attrs.get("composite"), t.user_attrs.get("axes"))


def _crashed(t: FrozenTrial) -> bool:
    """Its process died or was interrupted mid-trial: the folder its attrs point to was never published (it went to
    ``trials/partial``), and a retry runs the trial again."""
    return t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") in (None, "interrupted")


def ranked(trials: Sequence[FrozenTrial], search: SearchSection) -> list[FrozenTrial]:
    """Candidates, best first. Single objective: by best-epoch composite (ties: the earlier trial). Multi-objective:
    the Pareto front first, each group by composite."""
    scored = [(t, v) for t in trials if (v := candidate_values(t, search)) is not None]
    if not search.directions:
        return [t for t, v in sorted(scored, key=lambda tv: (-tv[1][0], tv[0].number))]
    signs = [1.0 if d == "maximize" else -1.0 for d in search.directions.values()]
    points = {t.number: [s * x for s, x in zip(signs, v)] for t, v in scored}
    front = {n for n, p in points.items() if not any(_dominates(q, p) for m, q in points.items() if m != n)}

    def key(tv: tuple[FrozenTrial, list[float]]) -> tuple[bool, float, int]:
        t = tv[0]
        composite = t.user_attrs.get("composite")
        return (t.number not in front, -(composite if composite is not None else -math.inf), t.number)

    return [t for t, _ in sorted(scored, key=key)]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
