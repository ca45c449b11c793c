"""cafe_aesthetic: an image classifier with labels ``aesthetic`` / ``not_aesthetic``, scored as P(label == aesthetic).

The transformers ``image-classification`` pipeline returns the winning label first; its ``score`` is the winner's
probability, which for a "not_aesthetic" image would wrongly count as high aesthetics. We ask for every label
(``top_k=None``) and read the probability of the ``aesthetic`` label itself, whatever its rank.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.cache import cached_model
from loratune.metrics.openclip_models import first_line
from loratune.modelref import check_model_ref, is_stand_in


def _load_pipeline(ref: str, device: Any, dtype: Any, field: str) -> Any:
    from transformers import pipeline

    try:
        return pipeline("image-classification", model=ref, device=device, dtype=dtype)
    except Exception as err:  # noqa: BLE001  (missing files, no network, not an image classifier)
        raise LoratuneError(f"{field}: cannot load image classifier {ref!r}: {first_line(err)}") from None


class CafeAesthetic(Backend):
    """Mean P(aesthetic) from an image-classification model (default cafeai/cafe_aesthetic)."""

    class Options(Backend.Options):
        label: str = Field("aesthetic", description="the label whose probability is the score")

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_id = check_model_ref(self.model_id or "", f"{self.field_path}.model")
        self.reset()

    def load(self) -> None:
        ref = self.model_id or ""
        field = f"{self.field_path}.model"
        key = ("image-classification", ref, str(self.runtime.device), str(self.runtime.dtype))
        self.pipe = cached_model(key, lambda: _load_pipeline(ref, self.runtime.device, self.runtime.dtype, field))
        labels = set(self.pipe.model.config.id2label.values())
        if self.options.label not in labels:
            known = ", ".join(sorted(labels))
            raise LoratuneError(
                f"{self.field_path}.label: {self.options.label!r} is not a label of {ref} (labels: {known})"
            )
        self.stand_in = is_stand_in(ref)

    def reset(self) -> None:
        self.per_image: list[float | None] = []

    def update(self, batch: list[EvalImage]) -> None:
        outputs = self.pipe([item.image for item in batch], top_k=None, batch_size=self.runtime.batch_size)
        for scores in outputs:
            self.per_image.append(next(float(s["score"]) for s in scores if s["label"] == self.options.label))

    def compute(self) -> AxisResult:
        scores = [s for s in self.per_image if s is not None]
        if not scores:
            return self.missing("no images")
        return self.result(sum(scores) / len(scores), per_image=self.per_image, details={"label": self.options.label})
