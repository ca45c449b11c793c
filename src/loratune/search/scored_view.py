"""Let the sampler learn from pruned trials: each is shown to it as completed at its best epoch's composite.

In loratune a trial's value is its best epoch, and a pruned trial has one: it is a real candidate for RUN/best
(``selection``). Optuna's samplers do not see that value: ``GPSampler`` models COMPLETE trials only, so under pruning
(most trials pruned) it never leaves its random start-up phase, and TPE ranks every pruned trial below every completed
one, so a region whose runs peak early and are stopped looks bad however high they peaked. ``ScoredTrialsSampler``
wraps any sampler and hands it a view of the study in which a pruned trial with a scored epoch reads as COMPLETE with
that epoch's composite. The study itself, the pruner, the report and the savings still see PRUNED.
"""

from __future__ import annotations

import copy
from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def as_scored(trial: FrozenTrial) -> FrozenTrial:
    """A pruned trial with a scored epoch as the sampler should see it: completed at its best composite."""
    composite = trial.user_attrs.get("composite")
    if trial.state != TrialState.PRUNED or composite is None:
        return trial
    seen = copy.copy(trial)
    seen.state = TrialState.COMPLETE
    seen.values = [float(composite)]
    return seen


class _StudyView:
    """The study with pruned trials read through ``as_scored``; everything else is the study's own."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = [as_scored(t) for t in self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)]
        return [t for t in trials if states is None or t.state in states]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class ScoredTrialsSampler(BaseSampler):
    """``base`` sampling over a view where pruned trials count with their best epoch (single objective only)."""

    def __init__(self, base: BaseSampler) -> None:
        self.base = base

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(_StudyView(study), trial)  # type: ignore[arg-type]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(_StudyView(study), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(_StudyView(study), trial, param_name,  # type: ignore[arg-type]
                                            param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
