"""The patient pruner, made aware of how noisy each epoch's composite is.

A trial's per-epoch composite comes from a handful of samples (16 by default), so it jitters by a few hundredths
from seed to seed: its standard error, which the evaluator measures from the images themselves (``composite_se`` in
``scores.json``, a bootstrap over the epoch's images). Optuna's ``PatientPruner`` stops a trial once none of its last
``patience + 1`` epochs beat the best one before them, by any amount. On noisy scores that stops a good run after one
lucky epoch: a high that later epochs only tie within the noise looks like a decline.

``NoisyPatientPruner`` keeps Optuna's rule and its windows, and can ask for a decline larger than the noise: the trial
is stopped only when the earlier best exceeds the recent best by more than ``margin`` standard errors of their
difference, ``margin * sqrt(se_before**2 + se_after**2)`` (``search.noise_margin``; 1 is the usual yardstick for
"different", not a number fitted to any benchmark). An epoch whose standard error is unknown adds none, so with no
standard errors recorded, or ``margin`` 0 (the default), it prunes exactly where ``PatientPruner`` does.

Measured (README, *Cost*): a margin of 1 keeps good runs that one lucky epoch would have stopped, and so also lets
over-trained runs reach the epochs a biased composite favours; on the known-truth world and the synthetic surface
it did not beat the plain rule on both counts, so it is opt-in.

The standard errors reach the pruner as the trial's ``composite_se`` user attribute ({epoch: se}), written by the
trial runner before each report, so the rule works the same in every process of a distributed study.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection

COMPOSITE_SE = "composite_se"  # the trial user attribute: {str(epoch): the epoch composite's standard error}


class NoisyPatientPruner(optuna.pruners.BasePruner):
    """Prune a trial whose last ``patience + 1`` reported epochs all fall short of its earlier best by more than the
    noise in the two scores (see the module docstring)."""

    def __init__(self, patience: int, margin: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0 (got {patience})")
        if margin < 0:
            raise ValueError(f"margin must be >= 0 (got {margin})")
        self.patience = patience
        self.margin = margin

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        values = {s: v for s, v in trial.intermediate_values.items() if v is not None and not math.isnan(v)}
        if len(values) <= self.patience + 1:
            return False
        steps = sorted(values)
        before, after = steps[: -self.patience - 1], steps[-self.patience - 1 :]
        sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
        best_before = max(before, key=lambda s: sign * values[s])
        best_after = max(after, key=lambda s: sign * values[s])
        spreads = trial.user_attrs.get(COMPOSITE_SE) or {}

        def se(step: int) -> float:
            value = spreads.get(str(step))
            return float(value) if value is not None else 0.0

        allowed = self.margin * math.hypot(se(best_before), se(best_after))
        return sign * (values[best_before] - values[best_after]) > allowed
