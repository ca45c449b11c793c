"""Normalisation and the composite: exact formulas, missing axes renormalised, never zero-filled."""

from __future__ import annotations

import pytest

from loratune.metrics.composite import composite, normalise

SEED = {"alignment": 0.30, "consistency": 0.25, "aesthetics": 0.20, "quality": 0.15, "diversity": 0.10}


def test_normalise_linear_clipped_and_flipped():
    assert normalise(25.0, 15.0, 40.0) == pytest.approx(0.4)
    assert normalise(50.0, 15.0, 40.0) == 1.0 and normalise(0.0, 15.0, 40.0) == 0.0
    assert normalise(25.0, 0.0, 100.0, higher_is_better=False) == pytest.approx(0.75)
    assert normalise(None, 0, 1) is None and normalise(float("nan"), 0, 1) is None
    with pytest.raises(ValueError):
        normalise(1.0, 2.0, 1.0)


def test_composite_weighted_mean():
    axes = {"alignment": 0.8, "consistency": 0.6, "aesthetics": 0.5, "quality": 0.4, "diversity": 0.2}
    expected = 0.30 * 0.8 + 0.25 * 0.6 + 0.20 * 0.5 + 0.15 * 0.4 + 0.10 * 0.2
    result = composite(axes, SEED)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert result.missing == []


def test_missing_axis_renormalises_instead_of_zero():
    axes = {"alignment": 0.8, "consistency": 0.6, "aesthetics": 0.5, "quality": None, "diversity": 0.2}
    result = composite(axes, SEED)
    expected = (0.30 * 0.8 + 0.25 * 0.6 + 0.20 * 0.5 + 0.10 * 0.2) / 0.85
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert result.missing == ["quality"]
    assert sum(result.weights_used.values()) == pytest.approx(1.0)
    assert "quality" not in result.weights_used


def test_all_missing_gives_none():
    result = composite({"alignment": None}, {"alignment": 1.0})
    assert result.value is None and result.missing == ["alignment"]
