"""Let the sampler learn from pruned trials: each is shown to it as completed at its best epoch's composite.

In loratune a trial's value is its best epoch, and a pruned trial has one: it is a real candidate for RUN/best
(``selection``). Optuna's samplers do not see that value: ``GPSampler`` models COMPLETE trials only, so under pruning
(most trials pruned) it never leaves its random start-up phase, and TPE ranks every pruned trial below every completed
one, so a region whose runs peak early and are stopped looks bad however high they peaked. ``ScoredTrialsSampler``
wraps any sampler and hands it a view of the study in which a pruned trial with a scored epoch reads as COMPLETE with
that epoch's composite. The study itself, the pruner, the report and the savings still see PRUNED.

With a warm start (``loratune.search.warm``) the view also holds the earlier runs' trials, numbered below 0 and valued
at their quantile within their own run; this run's scored trials are then shown at their quantile among themselves,
so both are on one scale (ranks within a run) whatever character or scorers each run had.
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


def on_run_scale(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """This run's completed trials valued at their quantile among themselves (``warm.quantiles``), the scale of
    warm-start trials."""
    from loratune.search.warm import quantiles

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    ranks = dict(zip((t.number for t in done), quantiles([float(t.values[0]) for t in done])))
    out = []
    for t in trials:
        if t.number in ranks:
            t = copy.copy(t)
            t.values = [ranks[t.number]]
        out.append(t)
    return out


class _StudyView:
    """The study with pruned trials read through ``as_scored`` and the warm-start trials added; everything else
    is the study's own."""

    def __init__(self, study: optuna.Study, warm: Sequence[FrozenTrial] = ()) -> None:
        self._study = study
        self._warm = list(warm)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = [as_scored(t) for t in self._study._get_trials(deepcopy=deepcopy, states=None, use_cache=use_cache)]
        if self._warm:
            trials = self._warm + on_run_scale(trials)
        return [t for t in trials if states is None or t.state in states]

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class ScoredTrialsSampler(BaseSampler):
    """``base`` sampling over a view where pruned trials count with their best epoch (single objective only), and
    ``warm`` (``warm.warm_trials``) count as earlier trials."""

    def __init__(self, base: BaseSampler, warm: Sequence[FrozenTrial] = ()) -> None:
        self.base = base
        self.warm = list(warm)

    def _view(self, study: optuna.Study) -> optuna.Study:
        return _StudyView(study, self.warm)  # type: ignore[return-value]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.base.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
