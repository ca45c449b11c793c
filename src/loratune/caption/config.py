"""The ``caption`` section of the config: which captioner writes the missing captions, and its options."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loratune.config_base import resolve_model


class CaptionSection(BaseModel):
    """``backend`` names a captioner of ``loratune.caption.registry``; keys besides those below are its options
    (checked by the captioner, e.g. ``general_threshold`` of ``wd14``)."""

    model_config = ConfigDict(extra="allow")
    backend: str = Field("vlm", description="vlm (the VQAScore model), florence2 or wd14")
    model: str | None = Field(None, description="hub id or local path; default: the backend's (vlm: VQAScore's)")
    max_tokens: int = Field(77, ge=8, le=512, description="captions are cut to this many CLIP tokens (77: what SD "
                                                          "reads, BOS and EOS included)")

    @field_validator("backend")
    @classmethod
    def _known(cls, v: str) -> str:
        from loratune.caption.registry import CAPTIONERS

        if v not in CAPTIONERS:
            raise ValueError(f"unknown captioner {v!r} (known: {', '.join(CAPTIONERS)})")
        return v

    _resolve = field_validator("model")(resolve_model)

    @model_validator(mode="before")
    @classmethod
    def _backend_shorthand(cls, data: Any) -> Any:
        # `caption: wd14` is `caption: {backend: wd14}`.
        return {"backend": data} if isinstance(data, str) else data

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
