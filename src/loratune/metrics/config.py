"""The ``evaluation`` config section (pydantic only: importing it must stay light).

Which metric backend scores each of the five axes (``BackendConfig``, checked against ``loratune.metrics.registry``),
the weights that combine the axes into the composite (starting from ``SEED_WEIGHTS``), the scorers' device, precision
and residency, and the identity-rate and learning-vs-copying settings. ``loratune.config`` puts it into ``Config``
and re-exports its names; paths given in it resolve against the config file's folder like the rest of the config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from loratune.config_base import Strict, resolve_model
from loratune.learning.config import LearningSection
from loratune.metrics.registry import BACKENDS, backends_for_axis

AxisName = Literal["alignment", "consistency", "aesthetics", "quality", "diversity"]


SEED_WEIGHTS: dict[str, float] = {"alignment": 0.30, "consistency": 0.25, "aesthetics": 0.20, "quality": 0.15, "diversity": 0.10}


class BackendConfig(BaseModel):
    """A backend by registry name, with its model reference and backend-specific options (validated by the backend)."""

    model_config = ConfigDict(extra="allow")
    name: str
    model: str | None = None
    norm_range: tuple[float, float] | None = Field(None, description="raw scores mapped onto [0, 1]; registry default")

    _resolve = field_validator("model")(resolve_model)

    @model_validator(mode="before")
    @classmethod
    def _resolve_model_options(cls, data: Any, info: ValidationInfo) -> Any:
        """Every option value that names a file or folder next to the config (``clip_model``, ``detector``, a nested
        ``fallback.model``, ...) resolves like ``model``, so a config folder can be moved as a whole. Values that
        are not such paths (hub ids, tags, choices) stay as written."""

        def resolve(value: Any) -> Any:
            if isinstance(value, str):
                return resolve_model(value, info)
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            return value

        if isinstance(data, dict):
            return {k: v if k == "name" else resolve(v) for k, v in data.items()}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown backend {v!r} (known: {', '.join(sorted(BACKENDS))})")
        return v

    @field_validator("norm_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[1] <= v[0]:
            raise ValueError(f"norm_range must be [low, high] with high > low (got {list(v)})")
        return v

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _default_backends() -> dict[str, BackendConfig | None]:
    return {
        "alignment": BackendConfig(name="vqascore", model="OpenGVLab/InternVL3-1B-hf"),
        "consistency": BackendConfig(name="clip_i", model="ViT-L-14", pretrained="openai"),
        "aesthetics": BackendConfig(name="laion_aesthetic"),
        "quality": BackendConfig(name="musiq"),
        "diversity": BackendConfig(name="lpips"),
    }


class IdentitySection(Strict):
    """Identity as a rate (``loratune.metrics.identity_rate``)."""

    rate: bool = Field(
        True,
        description="consistency = share of samples that pass a 'character present' threshold learned from the "
        "references and the base model's own samples; false: the mean similarity to the references",
    )
    min_auc: float = Field(
        0.8, ge=0.5, le=1.0,
        description="below this separation of references from the base model's samples the study warns that the "
        "identity scorer cannot see the character",
    )


class EvaluationSection(Strict):
    backends: dict[AxisName, BackendConfig | None] = Field(default_factory=_default_backends)
    weights: dict[AxisName, float] = Field(default_factory=lambda: dict(SEED_WEIGHTS))
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="scorer precision. auto: bfloat16 on a CUDA GPU that supports it, else float32 (always float32 "
        "on CPU and MPS); float16 is opt-in. Scores keep float32 math where it matters (P(yes), the aesthetic MLP)",
    )
    batch_size: int = Field(8, ge=1, le=1024)
    trust_remote_code: bool = Field(False, description="allow models whose code ships with the checkpoint")
    residency: Literal["auto", "keep", "swap"] = Field(
        "auto", description="keep: trainer and scorers stay on the device; swap: they take turns (scorers off it "
        "while training, the trainer while scoring); auto: keep when the estimate fits the free memory, else swap")
    learning: LearningSection = Field(default_factory=LearningSection)
    identity: IdentitySection = Field(default_factory=IdentitySection)

    @field_validator("backends", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        merged: dict[str, Any] = {k: b.model_dump(exclude_none=True) for k, b in _default_backends().items() if b}
        for axis, backend in v.items():
            if isinstance(backend, str):
                backend = {"name": backend}
            elif isinstance(backend, BackendConfig):
                backend = backend.model_dump(exclude_none=True)
            # Keys given without a name refine the default backend of that axis (e.g. only its model).
            if isinstance(backend, dict) and "name" not in backend and isinstance(merged.get(axis), dict):
                backend = {**merged[axis], **backend}
            merged[axis] = backend
        return merged

    @field_validator("backends")
    @classmethod
    def _on_their_axis(cls, v: dict[AxisName, BackendConfig | None]) -> dict[AxisName, BackendConfig | None]:
        for axis, backend in v.items():
            if backend is not None and BACKENDS[backend.name].axis != axis:
                choose = ", ".join(spec.name for spec in backends_for_axis(axis))
                raise ValueError(
                    f"{axis}: backend {backend.name!r} scores {BACKENDS[backend.name].axis}, not {axis} (choose: {choose})"
                )
        return v

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_merge_defaults(cls, v: Any) -> Any:
        # Weights given refine the seed weights; set an axis to 0 to leave it out of the composite.
        return {**SEED_WEIGHTS, **v} if isinstance(v, dict) else v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[AxisName, float]) -> dict[AxisName, float]:
        for axis, w in v.items():
            if w < 0:
                raise ValueError(f"weight of {axis} must be >= 0 (got {w})")
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one axis weight must be > 0")
        return v
