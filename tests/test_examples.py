"""Every shipped example config loads, and every parameter set its search space can draw applies to it."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from loratune.config import load_config
from loratune.search.space import apply_params, check_space, is_active, ordered

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def draws(space: dict[str, Any]) -> list[dict[str, Any]]:
    """Parameter sets covering every categorical choice and both ends of every range, conditionals made active.

    Categorical combinations are taken in full (they decide which conditionals are active); for each one, every
    active range is taken at its low end and at its high end, so each value meets every choice it can occur with.
    """
    names = ordered(space)
    categorical = [n for n in names if space[n].type == "categorical"]
    sets = []
    for combo in itertools.product(*(space[n].choices or [] for n in categorical)):
        chosen = dict(zip(categorical, combo))
        for end in ("low", "high"):
            params: dict[str, Any] = {}
            for name in names:
                spec = space[name]
                if not is_active(spec, params):
                    continue
                if spec.type == "categorical":
                    params[name] = chosen[name]
                else:
                    value = getattr(spec, end)
                    params[name] = int(value) if spec.type == "int" else value
            sets.append(params)
    return sets


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_draw_of_an_example_space_applies(path: Path) -> None:
    config = load_config(path)
    space = config.search.space
    check_space(config, space)
    for params in draws(space):
        trial = apply_params(config, params, space)
        for name, value in params.items():
            target = space[name].target
            if target is not None:  # the value lands where the space says
                node: Any = trial
                for part in target.split("."):
                    node = getattr(node, part)
                assert node == value, (path.name, name)


def test_draws_reach_every_choice_both_ends_and_conditionals() -> None:
    space = load_config(EXAMPLES[0].parent / "sd15.yaml").search.space
    sets = draws(space)
    assert {s["optimizer"] for s in sets} == {"adamw", "prodigy", "lion"}
    assert {s["rank"] for s in sets} == {8, 16, 32, 64}
    lr = [s["learning_rate"] for s in sets if "learning_rate" in s]
    assert min(lr) == 5e-5 and max(lr) == 5e-4
    assert {s["d_coef"] for s in sets if "d_coef" in s} == {0.5, 2.0}
    assert all(("d_coef" in s) == (s["optimizer"] == "prodigy") for s in sets)
