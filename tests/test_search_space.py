"""Search space: YAML -> Optuna suggestions (conditional params), refinement narrowing, params -> Config."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.search.config import ParamSpec, SearchSection, default_space
from loratune.search.space import apply_params, check_space, config_values, narrow, ordered, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[1]


def test_default_space_follows_practice() -> None:
    space = default_space()
    lr = space["learning_rate"]
    assert (lr.low, lr.high, lr.log) == (5e-5, 5e-4, True)
    assert space["rank"].choices == [8, 16, 32, 64]
    assert space["alpha_ratio"].choices == [0.5, 1.0]
    assert space["optimizer"].choices == ["adamw", "prodigy", "lion"]
    assert space["d_coef"].when == {"optimizer": "prodigy"}
    assert space["min_snr_gamma"].choices == [None, 5.0]


def test_conditional_params_are_suggested_only_when_active() -> None:
    space = default_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        params = suggest(trial, space)
        assert params == trial.params
        seen.add(params["optimizer"])
        assert ("d_coef" in params) == (params["optimizer"] == "prodigy")
        assert ("learning_rate" in params) == (params["optimizer"] != "prodigy")
        if "learning_rate" in params:
            assert 5e-5 <= params["learning_rate"] <= 5e-4
        assert "epochs" not in params  # every epoch is scored: trials train to train.epochs, pruning stops them
        study.tell(trial, 0.0)
    assert seen == {"adamw", "prodigy", "lion"}
    assert ordered(space).index("optimizer") < ordered(space).index("d_coef")


def test_config_values_scale_lion_prodigy_lr_and_alpha_ratio() -> None:
    space = default_space()
    lion = config_values({"optimizer": "lion", "learning_rate": 1e-4, "rank": 32, "alpha_ratio": 0.5}, space)
    assert lion["train.learning_rate"] == pytest.approx(3e-5)
    assert lion["train.alpha"] == 16.0 and lion["train.rank"] == 32
    prodigy = config_values({"optimizer": "prodigy", "d_coef": 1.5, "rank": 8, "alpha_ratio": 1.0}, space)
    assert prodigy["train.learning_rate"] == 1.0 and prodigy["train.prodigy.d_coef"] == 1.5


def test_apply_params_writes_train_fields_and_validates() -> None:
    config = load_config()
    space = {k: default_space()[k] for k in ("learning_rate", "rank", "alpha_ratio", "optimizer")}
    space["epochs"] = ParamSpec(type="int", low=6, high=20)  # the seed's space searches epochs too
    out = apply_params(config, {"learning_rate": 2e-4, "rank": 16, "alpha_ratio": 0.5, "optimizer": "adamw",
                                "epochs": 7}, space)
    assert (out.train.learning_rate, out.train.rank, out.train.alpha, out.train.epochs) == (2e-4, 16, 8.0, 7)
    assert config.train.epochs != 7 or config.train.rank != 16  # input untouched
    check_space(config, space)
    check_space(config, default_space())
    prodigy = apply_params(config, {"optimizer": "prodigy", "d_coef": 1.5, "rank": 8, "alpha_ratio": 1.0, "epochs": 6,
                                    "min_snr_gamma": 5.0}, default_space())
    assert (prodigy.train.prodigy.d_coef, prodigy.train.learning_rate, prodigy.train.min_snr_gamma) == (1.5, 1.0, 5.0)
    with pytest.raises(LoratuneError, match="search.space"):
        check_space(config, {"not_a_field": ParamSpec(type="float", low=0, high=1)})
    with pytest.raises(LoratuneError, match="search.space"):
        apply_params(config, {"epochs": 0}, {"epochs": ParamSpec(type="int", low=0, high=3)})


def test_target_key_writes_any_config_field() -> None:
    space = {"cfg": ParamSpec(type="float", low=3, high=9, target="sampling.cfg")}
    assert apply_params(load_config(), {"cfg": 4.5}, space).sampling.cfg == 4.5


def test_narrow_shrinks_numeric_ranges_and_fixes_categoricals() -> None:
    space = default_space() | {"epochs": ParamSpec(type="int", low=6, high=20)}
    best = {"learning_rate": 1e-4, "rank": 32, "alpha_ratio": 1.0, "optimizer": "adamw", "epochs": 18,
            "min_snr_gamma": 5.0}
    narrowed, fixed = narrow(space, best, 0.25)
    assert fixed == {"rank": 32, "alpha_ratio": 1.0, "optimizer": "adamw", "min_snr_gamma": 5.0}
    lr = narrowed["learning_rate"]
    span = math.log(5e-4) - math.log(5e-5)
    assert math.log(lr.high) - math.log(lr.low) == pytest.approx(0.25 * span)
    assert math.sqrt(lr.low * lr.high) == pytest.approx(1e-4)
    assert (narrowed["epochs"].low, narrowed["epochs"].high) == (16, 20)  # clipped at the top
    assert narrowed["d_coef"] == space["d_coef"]  # inactive in the best trial: unchanged


def test_yaml_errors_name_the_field(tmp_path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("search:\n  space:\n    lr: {type: float, low: 0, high: 1, log: true}\n")
    with pytest.raises(LoratuneError, match="search.space.lr.*log scale needs low > 0"):
        load_config(bad)
    bad.write_text("search:\n  space:\n    d: {type: float, low: 0, high: 1, when: {opt: prodigy}}\n")
    with pytest.raises(LoratuneError, match="unknown parameter 'opt'"):
        load_config(bad)
    bad.write_text("search:\n  space:\n    r: {type: categorical}\n")
    with pytest.raises(LoratuneError, match="choices"):
        load_config(bad)


def test_seed_example_parses_into_the_seed_space() -> None:
    config = load_config(REPO / "examples" / "seed-search.yaml")
    space = config.search.space
    assert (space["learning_rate"].low, space["learning_rate"].high) == (5e-5, 2e-4)
    assert (space["rank"].low, space["rank"].high) == (16, 64)
    assert (space["epochs"].low, space["epochs"].high) == (10, 20)
    check_space(config, space)
    assert isinstance(config.search, SearchSection)
