"""The sampler learns from pruned trials (ScoredTrialsSampler), and the synthetic LoRA surface the search benchmark
drives has the shape it claims."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from loratune.search.scored_view import ScoredTrialsSampler, as_scored
from loratune.search.synthetic import LoraSurface, Point


def _study_with_pruned_trials(n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0.0, 1.0)}
    for i in range(n):
        x = (i + 0.5) / n
        study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=dist,
                                     intermediate_values={1: 1 - (x - 0.3) ** 2}, user_attrs={"composite": 1 - (x - 0.3) ** 2}))
    return study


def test_pruned_trials_count_for_the_gp_sampler() -> None:
    study = _study_with_pruned_trials(6)
    trial = study.ask()
    space = {"x": FloatDistribution(0.0, 1.0)}
    frozen = study._storage.get_trial(trial._trial_id)
    # Plain GP sees no COMPLETE trial: still in its random start-up phase (no relative sample).
    assert optuna.samplers.GPSampler(seed=0, n_startup_trials=3).sample_relative(study, frozen, space) == {}
    wrapped = ScoredTrialsSampler(optuna.samplers.GPSampler(seed=0, n_startup_trials=3))
    suggestion = wrapped.sample_relative(study, frozen, space)
    assert set(suggestion) == {"x"} and 0.0 <= suggestion["x"] <= 1.0
    # The study itself is unchanged: its trials are still PRUNED.
    assert all(t.state == TrialState.PRUNED for t in study.get_trials()[:6])


def test_as_scored_changes_only_pruned_trials_with_a_score() -> None:
    scored = create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.4, 2: 0.7}, user_attrs={"composite": 0.7})
    unscored = create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.4})
    failed = create_trial(state=TrialState.FAIL, user_attrs={"composite": 0.9})
    done = create_trial(value=0.5, user_attrs={"composite": 0.5})
    seen = as_scored(scored)
    assert seen.state == TrialState.COMPLETE and seen.values == [0.7] and scored.state == TrialState.PRUNED
    assert as_scored(unscored) is unscored and as_scored(failed) is failed and as_scored(done) is done


def test_the_synthetic_surface_has_the_shape_it_claims() -> None:
    s = LoraSurface()
    _value, _best, epoch = s.optimum()
    assert 1 < epoch < 20  # an interior peak: over-training is visible
    adamw = Point(1.5e-4, 16, 1.0, "adamw")
    # Lion at 0.3x the lr (the default space's scale) lands near AdamW's step.
    assert s.true(Point(0.45e-4 * 1.0, 16, 1.0, "lion"), 8) == pytest.approx(s.true(adamw, 8), rel=0.05)
    # Higher rank wants a smaller step: at rank 64 the best lr is below rank 8's.
    lrs = np.geomspace(5e-5, 5e-4, 60)
    best_lr = {r: lrs[int(np.argmax([max(s.true(Point(lr, r, 1.0, "adamw"), e) for e in range(1, 21)) for lr in lrs]))]
               for r in (8, 64)}
    assert best_lr[64] < best_lr[8]
    # Over-training: identity keeps rising while alignment falls after the peak.
    late, peak = s.axes(Point(3e-4, 16, 1.0, "adamw"), 20), s.axes(Point(3e-4, 16, 1.0, "adamw"), 4)
    assert late["consistency"] > peak["consistency"] and late["alignment"] < peak["alignment"]
    # Noise is correlated across the epochs of one run (AR(1)): positive lag-1 autocorrelation of residuals.
    rng = np.random.default_rng(0)
    truth = np.array([s.true(adamw, e) for e in range(1, 21)])
    residuals = np.array([np.array(s.observed(rng, adamw, 20)) - truth for _ in range(300)])
    residuals -= residuals.mean(axis=1, keepdims=True)  # the per-run offset is shared by every epoch
    lag1 = np.mean(residuals[:, 1:] * residuals[:, :-1]) / np.mean(residuals**2)
    assert lag1 > 0.3


def test_studies_with_neighbouring_seeds_draw_different_points() -> None:
    """Each trial's sampler seed hashes (study seed, trial number): with ``seed + number`` study 1 drew study 0's
    points shifted by one trial, so benchmarks over seeds 0..19 measured nearly one study 20 times."""
    from loratune.config import validate_config
    from loratune.search.samplers import make_sampler

    def drawn(seed: int) -> list[float]:
        search = validate_config({"search": {"seed": seed, "sampler": "random"}}).search
        study = optuna.create_study()
        out = []
        for number in range(6):
            study.sampler = make_sampler(search, "search", number, n_startup=3)
            trial = study.ask({"lr": FloatDistribution(1e-5, 1e-2, log=True)})
            study.tell(trial, 0.0)
            out.append(trial.params["lr"])
        return out

    zero, one = drawn(0), drawn(1)
    assert not set(zero) & set(one)
    assert drawn(0) == zero  # still reproducible
    assert drawn(-1) != one
