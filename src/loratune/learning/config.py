"""The config fields of learning-vs-copying (pydantic only: importing it stays light).

``evaluation.learning`` holds the copy-risk embedder and thresholds, the CMMD embedder and the diagnosis thresholds;
``dataset.holdout`` (in ``loratune.config``) says which images never train. Embedders are written like an
``evaluation.backends`` entry (``{name: dino, model: ...}``) and validated as one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from loratune.config_base import resolve_model, resolve_path

# Consistency backends whose model is a plain image embedder (``embed``); ``sscd`` is a TorchScript copy detector.
EMBEDDERS = ("dino", "clip_i")


class SscdModel(BaseModel):
    """An SSCD-style copy-detection model: a TorchScript file mapping a normalised 288-px image to a descriptor."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["sscd"] = "sscd"
    model: str
    size: int = Field(288, ge=32, le=1024, description="the shorter side images are resized to")


def _backend(value: Any, info: ValidationInfo, field: str, names: tuple[str, ...]) -> Any:
    from loratune.metrics.config import BackendConfig

    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    backend = value if isinstance(value, BackendConfig) else BackendConfig.model_validate(value, context=info.context)
    if backend.name not in names:
        raise ValueError(f"{field}: {backend.name!r} is not an image embedder (choose: {', '.join(names)})")
    return backend


def check_holdout(v: float | str | None, info: ValidationInfo) -> float | str | None:
    """``dataset.holdout``: a fraction in (0, 0.5], or a folder (resolved next to the config)."""
    if isinstance(v, str):
        return resolve_path(v, info)
    if v is not None and not 0 < v <= 0.5:
        raise ValueError(f"a fraction must be in (0, 0.5] (got {v}), or give a folder")
    return v


class LearningSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    copy_embedder: Any = Field(
        default_factory=lambda: {"name": "dino", "model": "facebook/dinov2-base"}, validate_default=True,
        description="embedder for copy risk: a dino / clip_i backend entry, or {name: sscd, model: FILE.pt} "
                    "(a TorchScript copy-detection model); null: copy risk off")
    copy_threshold: float = Field(
        0.9, ge=-1.0, le=1.0,
        description="a sample whose cosine to its nearest training image is at least this is a copy (DINOv2: 0.9; "
                    "SSCD: 0.5, Somepalli et al. 2023)")
    max_copy_rate: float = Field(0.2, ge=0.0, le=1.0,
                                 description="the search constraint: an epoch copying more samples is infeasible")
    cmmd_embedder: Any = Field(
        default_factory=lambda: {"name": "clip_i", "model": "ViT-L-14-336", "pretrained": "openai"},
        validate_default=True,
        description="CLIP for CMMD against the held-out images (Jayasumana et al. 2024: ViT-L/14@336); null: off")
    identity_low: float = Field(0.5, ge=0.0, le=1.0,
                                description="normalised consistency below this: the epoch is underfit")
    overfit_drop: float = Field(0.05, ge=0.0, le=1.0,
                                description="alignment or diversity this far below its best earlier epoch, while "
                                            "consistency still rises: the epoch is overfit")
    validation_rise: float | None = Field(
        0.10, gt=0.0, le=10.0,
        description="validation loss this share above the trial's lowest earlier one: the LoRA is leaving the data; "
                    "the epoch is overfit and no candidate for RUN/best (null: off)")

    @field_validator("copy_embedder", mode="before")
    @classmethod
    def _copy(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, dict) and v.get("name") == "sscd":
            if not v.get("model"):
                raise ValueError("copy_embedder: sscd needs model: the TorchScript file (e.g. sscd_disc_mixup.torchscript.pt)")
            return SscdModel.model_validate({**v, "model": resolve_model(str(v["model"]), info)})
        return _backend(v, info, "copy_embedder", EMBEDDERS)

    @field_validator("cmmd_embedder", mode="before")
    @classmethod
    def _cmmd(cls, v: Any, info: ValidationInfo) -> Any:
        return _backend(v, info, "cmmd_embedder", ("clip_i",))
