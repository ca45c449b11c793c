"""The ``train`` section's learning-rate rule: unset means the optimizer's default (Prodigy 1.0), in every path."""

from __future__ import annotations

import logging

import pytest
import yaml

from loratune.config import dump_config, load_config
from loratune.search.config import ParamSpec, default_space
from loratune.search.space import apply_params
from loratune.train import config as train_config


@pytest.fixture
def warnings_once(monkeypatch, caplog):
    """A process that has not warned yet; the log lines it writes."""
    monkeypatch.setattr(train_config, "_warned_prodigy_lr", False)
    caplog.set_level(logging.WARNING, logger="loratune")
    return caplog


def test_unset_learning_rate_follows_the_optimizer(tiny_models, warnings_once) -> None:
    prodigy = load_config(tiny_models.config, ["train.optimizer=prodigy", "train.learning_rate=null"])
    adamw = load_config(tiny_models.config, ["train.learning_rate=null"])
    assert prodigy.train.learning_rate is None and prodigy.train.effective_learning_rate == 1.0
    assert prodigy.train.effective_text_encoder_lr == 1.0
    assert adamw.train.effective_learning_rate == 1e-4
    # A dump shows the rate that trains; config.yaml (None left out) keeps it unset, so it reloads the same way.
    assert prodigy.train.model_dump()["learning_rate"] == 1.0
    assert "learning_rate" not in yaml.safe_load(dump_config(prodigy))["train"]
    assert warnings_once.records == []


def test_a_search_trial_that_picks_prodigy_trains_at_1(tiny_models, warnings_once) -> None:
    config = load_config(tiny_models.config, ["train.learning_rate=null"])
    optimizer_only = {"optimizer": ParamSpec(type="categorical", choices=["adamw", "prodigy"])}
    for space in (optimizer_only, default_space()):
        trial = apply_params(config, {"optimizer": "prodigy", "d_coef": 1.0}, {**space, **optimizer_only})
        assert trial.train.optimizer == "prodigy" and trial.train.effective_learning_rate == 1.0
    assert apply_params(config, {"optimizer": "adamw"}, optimizer_only).train.effective_learning_rate == 1e-4
    assert warnings_once.records == []


def test_prodigy_with_a_small_learning_rate_warns_once_per_process(tiny_models, warnings_once) -> None:
    for _ in range(3):
        config = load_config(tiny_models.config, ["train.optimizer=prodigy", "train.learning_rate=1e-4"])
    assert config.train.effective_learning_rate == 1e-4  # explicit is kept, only warned about
    message = (
        "loratune: warning: train.learning_rate=0.0001 with optimizer prodigy multiplies Prodigy's own step size, "
        "so training barely moves; leave it unset (prodigy: 1)"
    )
    assert [r.getMessage() for r in warnings_once.records] == [message]


def test_prodigy_at_its_own_scale_does_not_warn(tiny_models, warnings_once) -> None:
    load_config(tiny_models.config, ["train.optimizer=prodigy", "train.learning_rate=0.5"])
    load_config(tiny_models.config, ["train.optimizer=adamw", "train.learning_rate=1e-4"])
    assert warnings_once.records == []
