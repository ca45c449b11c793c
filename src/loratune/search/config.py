"""The ``search`` config section (pydantic only: importing it must stay light)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SearchSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    n_trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "gp", "random", "grid"] = "tpe"
    seed: int = 0
