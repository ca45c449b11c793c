"""The records that cross parts: a generated sample, a saved checkpoint, an epoch's score.

Plain dataclasses that import nothing heavy, so that training, sampling, evaluation and search can name each other's
results without importing each other (``train/`` never imports a metric to name a ``Sample``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Sample:
    """A generated image and what it was generated from."""

    path: Path
    prompt: str | None = None
    seed: int | None = None
    character: str | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)


@dataclass
class CheckpointInfo:
    """One saved training checkpoint and the samples rendered from it."""

    epoch: int
    step: int
    diffusers_path: Path | None
    kohya_path: Path | None
    samples: list[Sample] = field(default_factory=list)
    rank: int | None = None
    resolution: int | None = None
    folder: Path | None = None
    validation_loss: float | None = None  # ``loratune.train.validation``: same images, timesteps and noise each epoch
    train_loss: float | None = None  # the mean training loss of the epoch's steps
    # Seconds of this checkpoint's setup (the first only: loading, base samples), training (steps and the checkpoint's
    # files), validation and sampling (``loratune.timing``), and the device they ran on.
    seconds: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    # sample_more(seeds) -> the checkpoint's samples for more seeds, drawn into the same folder (its manifest then
    # lists all of them): what a search's race (``search.gating.race``) asks for an epoch still in it.
    sample_more: Callable[[list[int]], list[Sample]] | None = field(default=None, repr=False, compare=False)


@dataclass
class EpochScore:
    """An epoch's (or a merged LoRA's) scores: the composite, the normalised axes and where its files are."""

    epoch: int
    composite: float | None
    normalised: dict[str, float | None] = field(default_factory=dict)
    lora: Path | None = None  # the checkpoint's kohya file
    samples_dir: Path | None = None
    stand_in: bool = False
    result: Any = None  # the EvaluationResult, when there is one
    backends: dict[str, str] = field(default_factory=dict)  # axis -> backend that produced its number
    copy_rate: float | None = None  # share of samples that copy a training image (loratune.learning.copy_risk)
    constraint: float | None = None  # copy_rate - max_copy_rate: feasible when <= 0 (None: not measured)
    cmmd: float | None = None  # CMMD of the samples to the held-out images
    validation_loss: float | None = None  # the checkpoint's deterministic validation loss (``CheckpointInfo``)
    diverged: str | None = None  # why its validation loss says it is leaving the data (``learning.diagnosis``)
    # The checkpoint's seconds (``CheckpointInfo.seconds``) plus ``score``; the device they ran on.
    seconds: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    skipped: str | None = None  # why the epoch was not sampled and scored (``loratune.search.gating``): no candidate
    composite_se: float | None = None  # the composite's standard error over its images (what the pruner allows for)
    raced: str | None = None  # why it was scored on the gate's first seeds only (``search.gating.race``)

    @property
    def feasible(self) -> bool:
        """Within the copy constraint (or not measured) and not diverging: only a feasible epoch can be a trial's
        best or RUN/best."""
        return (self.constraint is None or self.constraint <= 0) and self.diverged is None
