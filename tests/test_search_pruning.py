"""The noise-aware patient pruner: Optuna's PatientPruner where no noise is known, a decline beyond the noise else."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from loratune.search.pruning import COMPOSITE_SE, NoisyPatientPruner


def _asks(pruner: optuna.pruners.BasePruner, values: list[float], spreads: list[float | None] | None = None,
          direction: str = "maximize") -> list[bool]:
    """should_prune after each report of one trial in a real Optuna study."""
    study = optuna.create_study(direction=direction, pruner=pruner)
    trial = study.ask()
    answers = []
    for step, value in enumerate(values, 1):
        if spreads is not None:
            trial.set_user_attr(COMPOSITE_SE, {str(s): v for s, v in enumerate(spreads[:step], 1)})
        trial.report(value, step)
        answers.append(trial.should_prune())
    return answers


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_without_standard_errors_it_is_optunas_patient_pruner(direction: str) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    for patience in (0, 1, 2, 3):
        for _ in range(25):
            values = [float(v) for v in rng.normal(0.5, 0.1, size=8)]
            ours = _asks(NoisyPatientPruner(patience), values, direction=direction)
            theirs = _asks(optuna.pruners.PatientPruner(None, patience=patience), values, direction=direction)
            assert ours == theirs
            # margin 0 ignores recorded standard errors: again Optuna's rule
            assert _asks(NoisyPatientPruner(patience, margin=0), values, [0.2] * 8, direction) == theirs


def test_a_decline_counts_only_beyond_the_noise_of_both_scores() -> None:
    # patience 1: at epoch 3 the window is epochs 2-3 against epoch 1's 0.80.
    se = 0.03  # the difference's standard error: 0.03 * sqrt(2) = 0.0424
    one_se = NoisyPatientPruner(1, margin=1)
    assert _asks(one_se, [0.80, 0.76, 0.77], [se] * 3) == [False, False, False]  # 0.03 < 0.0424
    assert _asks(one_se, [0.80, 0.74, 0.75], [se] * 3) == [False, False, True]  # 0.05 > 0.0424
    # two standard errors: 0.05 is within the noise again
    assert _asks(NoisyPatientPruner(1, margin=2), [0.80, 0.74, 0.75], [se] * 3) == [False, False, False]
    # the margin uses the two scores compared (the earlier best and the window's best), not the others
    noisy_other = [se, se, 1.0]  # epoch 3 is very noisy, but epoch 2 (0.70) is the window's best
    assert _asks(one_se, [0.80, 0.70, 0.69], noisy_other) == [False, False, True]


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="patience"):
        NoisyPatientPruner(-1)
    with pytest.raises(ValueError, match="margin"):
        NoisyPatientPruner(1, margin=-0.5)
