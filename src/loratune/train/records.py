"""What a training run hands back: checkpoint records, the result, and the two ways a run ends early."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StopTraining(Exception):
    """Raised by an ``on_checkpoint`` callback (e.g. an Optuna pruner) to end the run after this checkpoint."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; ``marker`` is the FAILED.json written into the run folder."""

    def __init__(self, message: str, marker: Path | None = None) -> None:
        super().__init__(message)
        self.marker = marker


FAILED_MARKER = "FAILED.json"


@dataclass
class CheckpointInfo:
    epoch: int
    step: int
    diffusers_path: Path | None
    kohya_path: Path | None
    samples: list[Any] = field(default_factory=list)
    rank: int | None = None
    resolution: int | None = None
    folder: Path | None = None


@dataclass
class TrainResult:
    out_dir: Path
    checkpoints: list[CheckpointInfo]
    steps: int
    epochs: int
    stopped_early: bool = False
    final_loss: float | None = None

    @property
    def last(self) -> CheckpointInfo | None:
        return self.checkpoints[-1] if self.checkpoints else None
