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


def test_composite_se_is_the_standard_error_of_the_per_image_composite() -> None:
    # Linear normalisations (nothing clipped): the composite is the mean of per-image composites, so its standard
    # error is their spread / sqrt(n) (the bootstrap's plug-in: the population spread).
    import numpy as np

    from loratune.metrics.composite import composite_se

    rng = np.random.default_rng(3)
    n = 16
    raw = {"alignment": rng.uniform(20, 40, n), "consistency": (rng.random(n) < 0.6).astype(float),
           "quality": rng.uniform(0, 10, n)}
    norms = {"alignment": lambda v: None if v is None else (v - 10.0) / 40.0,
             "consistency": lambda v: v,
             "quality": lambda v: None if v is None else 1.0 - v / 20.0}
    weights = {"alignment": 0.5, "consistency": 0.3, "quality": 0.2}
    per_image = sum(w * np.array([norms[a](float(x)) for x in raw[a]]) for a, w in weights.items())
    exact = per_image.std(ddof=0) / np.sqrt(n)
    lists = {a: v.tolist() for a, v in raw.items()}
    assert composite_se(lists, norms, weights, resamples=4000) == pytest.approx(exact, rel=0.05)
    # deterministic: the same images give the same number
    assert composite_se(lists, norms, weights) == composite_se(lists, norms, weights)
    # an axis without per-image values (a set-level one) adds no spread; its weight still scales the others'
    halved = {**{a: w / 2 for a, w in weights.items()}, "diversity": 0.5}
    held = composite_se({**lists, "diversity": None}, norms, halved, resamples=4000)
    assert held == pytest.approx(exact / 2, rel=0.05)
    # missing images are left out of an axis's mean; too little to say anything gives None
    assert composite_se({"alignment": [30.0, None, 25.0, 35.0]}, norms, {"alignment": 1.0}) > 0
    assert composite_se({"alignment": [30.0]}, norms, {"alignment": 1.0}) is None
    assert composite_se({"alignment": None}, norms, {"alignment": 1.0}) is None
