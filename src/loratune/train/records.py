"""What a training run hands back: the result, and the two ways a run ends early (checkpoints: ``loratune.records``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loratune.records import CheckpointInfo


class StopTraining(Exception):
    """Raised by an ``on_checkpoint`` callback (e.g. an Optuna pruner) to end the run after this checkpoint."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; ``marker`` is the FAILED.json written into the run folder."""

    def __init__(self, message: str, marker: Path | None = None) -> None:
        super().__init__(message)
        self.marker = marker


FAILED_MARKER = "FAILED.json"

# sample_when(epoch, validation_loss, last) -> whether to sample this checkpoint (a search's gate; the trainer samples
# its last checkpoint whatever the gate says).
SampleWhen = Callable[[int, "float | None", bool], bool]


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
