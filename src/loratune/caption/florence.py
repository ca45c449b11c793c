"""Prose captions from Florence-2 (transformers-native checkpoints, e.g. florence-community/Florence-2-large).

The model card's usage: ``AutoProcessor`` turns a task token (``<DETAILED_CAPTION>``) and the image into inputs,
``generate`` (beam search) writes the caption, and ``batch_decode(skip_special_tokens=True)`` is the text — what the
processor's ``post_process_generation`` returns for the pure-text caption tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from loratune.caption.base import Captioner
from loratune.errors import LoratuneError, first_line
from loratune.metrics.cache import cached_model
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    from PIL import Image


class Florence2Captioner(Captioner):
    class Options(Captioner.Options):
        task: Literal["<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"] = "<DETAILED_CAPTION>"
        max_new_tokens: int = Field(96, ge=1, le=1024)
        num_beams: int = Field(3, ge=1, le=16)

    options: Options

    def load(self) -> None:
        from loratune.metrics.vlm_models import needs_remote_code

        ref, rt = self.model_id, self.runtime
        remote = needs_remote_code(ref) if Path(ref).exists() else ref.lower().startswith("microsoft/florence-2")
        if remote:
            raise LoratuneError(f"caption.model: {ref!r} is a remote-code Florence-2 checkpoint; use a "
                                "transformers-native one (e.g. florence-community/Florence-2-large)")
        self.processor, self.model = cached_model(("florence2", ref, str(rt.device), str(rt.dtype)), self._load)
        self.stand_in = is_stand_in(ref)

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        ref, rt = self.model_id, self.runtime
        try:
            processor = AutoProcessor.from_pretrained(ref)
            model = AutoModelForImageTextToText.from_pretrained(ref, dtype=rt.dtype or "auto")
        except Exception as err:  # noqa: BLE001  (missing files, no network, not a Florence-2 checkpoint)
            raise LoratuneError(f"caption.model: cannot load Florence-2 model {ref!r}: {first_line(err)}") from None
        return processor, model.to(rt.device).eval()

    def describe(self, images: Sequence[Image.Image]) -> list[Any]:
        import torch

        task = self.options.task
        inputs = self.processor(text=[task] * len(images), images=list(images), return_tensors="pt").to(
            self.runtime.device
        )
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens,
                                      num_beams=self.options.num_beams, do_sample=False)
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]
