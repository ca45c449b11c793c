"""The ``train`` config section (pydantic only: importing it must stay light)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rank: int = Field(16, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default = rank")
    learning_rate: float = Field(1e-4, gt=0, le=10)
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "lion"] = "adamw"
    epochs: int = Field(10, ge=1, le=10000)
    batch_size: int = Field(1, ge=1, le=1024)
    seed: int = 0
