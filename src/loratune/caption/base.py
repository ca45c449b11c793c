"""What a captioner is: a loaded model that looks at images and says what it sees, as prose or as tags.

``describe`` returns raw observations; ``loratune.caption.compose`` turns them into training captions (the trigger
first, identity removed), so every backend obeys the same caption rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from loratune.errors import LoratuneError

if TYPE_CHECKING:
    from PIL import Image

    from loratune.caption.registry import CaptionerSpec
    from loratune.config import Config
    from loratune.metrics.base import Runtime


class Captioner:
    """Base class of every captioner. Subclasses set ``Options`` and implement ``load`` and ``describe``."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    spec: ClassVar[CaptionerSpec]
    field_path = "caption"

    def __init__(self, config: Config) -> None:
        from loratune.evaluation import evaluation_runtime
        from loratune.modelref import check_model_ref

        section = config.caption
        try:
            self.options = self.Options.model_validate(section.options())
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            shown = f" (got {first['input']!r})" if not isinstance(first.get("input"), dict) else ""
            raise LoratuneError(f"caption.{loc}: {first['msg']} (captioner {section.backend!r}){shown}") from None
        self.config = config
        self.model_id = check_model_ref(section.model or self.default_model(config), "caption.model")
        self.runtime: Runtime = evaluation_runtime(config)
        self.stand_in = False

    def default_model(self, config: Config) -> str:
        return self.spec.default_model or ""

    def load(self) -> None:
        """Load the model (once; a second call is free)."""
        raise NotImplementedError

    def describe(self, images: Sequence[Image.Image]) -> list[Any]:
        """One observation per image: a string for prose captioners, a list of tags (most confident first) for
        taggers."""
        raise NotImplementedError
