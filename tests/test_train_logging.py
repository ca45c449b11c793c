"""Per-step training curves: TensorBoard event files that TensorBoard's own reader loads back, step for step."""

from __future__ import annotations

import importlib.util
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_train import make_config

from loratune.errors import LoratuneError
from loratune.train import train
from loratune.train.logging import LOG_DIR

pytestmark = pytest.mark.slow


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_prodigy_run_logs_loss_lr_and_d_per_step(tiny_models, small_dataset_factory, tmp_path) -> None:
    config = make_config(tiny_models, small_dataset_factory(1), "train.optimizer=prodigy", "train.learning_rate=1.0",
                         "train.epochs=3")
    train(config, tmp_path)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    scalars = _scalars(tmp_path / LOG_DIR)
    assert [s for s, _ in scalars["loss/current"]] == [1, 2, 3]
    assert [v for _, v in scalars["loss/current"]] == pytest.approx([r["loss"] for r in log], rel=1e-6)
    assert [v for _, v in scalars["lr/unet"]] == pytest.approx([1.0] * 3)
    # Prodigy's d grows from d0 = 1e-6; the jsonl log carries it too, and d*lr is the step it really takes.
    assert [v for _, v in scalars["prodigy/d"]] == pytest.approx([r["d"] for r in log], rel=1e-6)
    assert log[0]["d"] >= 1e-6 and log[-1]["d"] >= log[0]["d"]
    assert [v for _, v in scalars["lr/d*lr"]] == pytest.approx([r["d"] * r["lr"] for r in log], rel=1e-6)
    assert scalars["loss/average"][-1][1] == pytest.approx(sum(r["loss"] for r in log) / 3, rel=1e-6)


def test_adamw_has_no_d_and_logging_can_be_off(tiny_models, small_dataset_factory, tmp_path) -> None:
    dataset = small_dataset_factory(1)
    train(make_config(tiny_models, dataset), tmp_path / "on")
    assert "prodigy/d" not in _scalars(tmp_path / "on" / LOG_DIR)
    assert "d" not in json.loads((tmp_path / "on" / "train_log.jsonl").read_text().splitlines()[0])
    train(make_config(tiny_models, dataset, "train.log_with=[]"), tmp_path / "off")
    assert not (tmp_path / "off" / LOG_DIR).exists()


def test_wandb_asked_for_but_not_installed_is_one_line(tiny_models, small_dataset_factory, tmp_path) -> None:
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = make_config(tiny_models, small_dataset_factory(1), "train.log_with=[tensorboard, wandb]")
    with pytest.raises(LoratuneError, match=r"train.log_with: wandb is not installed"):
        train(config, tmp_path)
    assert not (tmp_path / LOG_DIR).exists()
