"""An epoch's checkpoint as the built-in trainer writes it, and what it takes back from one on ``--resume``.

At a checkpoint epoch ``save_epoch_checkpoint`` gathers the running trainer's state into one checkpoint folder: the
LoRA (diffusers and kohya files, the kohya one carrying ``checkpoint_metadata``), ``info.json`` (epoch, rank,
resolution, the strategies' settings) and the resume state (optimizer, LR schedule, random generator, step). On resume
``restore_training_state`` puts that state back into a run whose rank already matches the checkpoint's, and
``drop_log_after`` drops the log lines of the steps that will be trained again. The folder's layout is
``loratune.train.checkpoint``'s; the loop that calls these is ``loratune.train.loop``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.atomic import atomic_write_text
from loratune.train.records import CheckpointInfo

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.train.data import Item
    from loratune.train.model import Precision


def save_epoch_checkpoint(
    config: Config,
    out_dir: Path,
    models: Any,
    rank: int,
    resolution: int,
    strategies: list[Any],
    epoch: int,
    step: int,
    optimizer: Any,
    lr_scheduler: Any,
    generator: Any,
    precision: Precision,
    items: list[Item],
    batches_per_epoch: int,
    started: float,
) -> CheckpointInfo:
    """Write the epoch's checkpoint (sampled by the caller, after its validation loss)."""
    from loratune.train import checkpoint as ckpt
    from loratune.train.metadata import checkpoint_metadata

    t = config.train
    alpha = float(models.denoiser.peft_config["default"].lora_alpha)
    now = time.time()
    metadata = checkpoint_metadata(config, models, out_dir, rank, resolution, strategies, epoch, step, items,
                                   batches_per_epoch, started, now, precision.mixed)
    info = {
        "epoch": epoch,
        "step": step,
        "rank": rank,
        "alpha": alpha,
        "resolution": resolution,
        "optimizer": t.optimizer,
        "family": config.model.family,
        "time": time.time(),
        "curriculum": {str(k): v for k, v in t.curriculum.items()},
        "rank_schedule": {str(k): v for k, v in t.rank_schedule.items()},
    }
    state = {
        "epoch": epoch,
        "step": step,
        "rank": rank,
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "generator": generator.get_state(),
    }
    folder, diffusers_path, kohya_path = ckpt.save_checkpoint(
        out_dir, models, epoch, t.output_name, info, metadata, state
    )
    return CheckpointInfo(
        epoch, step, diffusers_path, kohya_path, [], rank=rank, resolution=resolution, folder=folder
    )


def restore_training_state(state: dict[str, Any], models: Any, optimizer: Any, lr_scheduler: Any,
                           generator: Any) -> tuple[int, int]:
    """Load a checkpoint's LoRA weights, optimizer, schedule and random state; returns (step, first epoch to train).

    The run's rank must already be the checkpoint's: growing it rebuilds the optimizer, so the caller grows it first
    and passes the optimizer and schedule that result."""
    from loratune.train.model import load_state_dict
    from loratune.train.optim import restore_scheduler

    load_state_dict(models.denoiser, state["lora"]["unet"])
    for i in models.trained_text_encoders:
        load_state_dict(models.text_encoders[i], state["lora"][f"te{i}"])
    optimizer.load_state_dict(state["optimizer"])
    restore_scheduler(lr_scheduler, state["lr_scheduler"])
    generator.set_state(state["generator"])
    return int(state["step"]), int(state["epoch"]) + 1


def drop_log_after(history: Path, step: int) -> None:
    """Steps after the checkpoint are trained again: drop their old lines from ``train_log.jsonl``."""
    if history.is_file():
        kept = [line for line in history.read_text(encoding="utf-8", errors="replace").splitlines()
                if _logged_step(line) <= step]
        atomic_write_text(history, "".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    """A train_log.jsonl line's step; a line cut off by a kill (normal after Ctrl-C or OOM) counts as after any."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
