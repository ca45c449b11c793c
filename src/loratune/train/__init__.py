"""LoRA training: the built-in diffusers+peft trainer and the external-command adapter.

The front door is ``train(config, out_dir, on_checkpoint=None) -> TrainResult``. This package's ``__init__`` stays
light (``loratune.config`` imports ``loratune.train.config``): the trainer and torch load on the first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.train.records import CheckpointInfo, StopTraining, TrainingDiverged, TrainResult

if TYPE_CHECKING:
    from loratune.config import Config

__all__ = ["CheckpointInfo", "StopTraining", "TrainResult", "TrainingDiverged", "train"]


def train(config: Config, out_dir: str | Path, on_checkpoint: Any = None, **kwargs: Any) -> TrainResult:
    """Train one LoRA as ``config`` says (built-in trainer, or ``train.external``'s command); see ``loop.train``.

    ``on_checkpoint(info)`` runs after each saved and sampled checkpoint and may raise ``StopTraining``; keyword
    arguments ``resume=True`` (continue from the newest checkpoint) and ``progress=callable`` (per step) pass on.

    >>> result = train(load_config("loratune.yaml"), "runs/luca")  # doctest: +SKIP
    >>> result.last.kohya_path  # doctest: +SKIP
    PosixPath('runs/luca/checkpoints/epoch-0010/lora-000010.safetensors')
    """
    if config.train.external is not None:
        from loratune.train.external import train_external

        return train_external(config, out_dir, on_checkpoint=on_checkpoint, **kwargs)
    from loratune.train.loop import train as train_builtin

    return train_builtin(config, out_dir, on_checkpoint=on_checkpoint, **kwargs)
