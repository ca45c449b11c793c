"""CLIPScore (Hessel et al. 2021, torchmetrics' convention): per image ``100 * max(cos(image, prompt), 0)``.

Two backends over the same formula: any open_clip model (incl. EVA02-CLIP, hf-hub repos, local folders/checkpoints)
and any transformers CLIP-style model. Each distinct prompt is embedded once per evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.embedding_cache import PromptEmbeddings, embed_images
from loratune.metrics.openclip_models import HFClipModel, OpenClipModel, load_hf_clip, load_open_clip, resolve_open_clip
from loratune.modelref import check_model_ref, is_stand_in

if TYPE_CHECKING:
    import torch


def clip_scores(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> list[float]:
    """Row-wise CLIPScore of L2-normalised embedding pairs."""
    cosine = (image_embeddings.float() * text_embeddings.float()).sum(-1)
    return (100.0 * cosine.clamp_min(0.0)).tolist()


class _ClipScore(Backend):
    encoder: OpenClipModel | HFClipModel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prompts = PromptEmbeddings()
        self.reset()

    @property
    def model_field(self) -> str:
        return f"{self.field_path}.model"

    def reset(self) -> None:
        self._scores: list[float | None] = []

    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        return self._prompts.embed(self.encoder, prompts, self.runtime.batch_size)

    def update(self, batch: list[EvalImage]) -> None:
        scored = [img for img in batch if img.prompt]
        values: dict[int, float] = {}
        if scored:
            images = embed_images(self.runtime, self.encoder, [img.image for img in scored])
            texts = self._text_embeddings([img.prompt for img in scored])  # type: ignore[misc]
            values = {id(img): s for img, s in zip(scored, clip_scores(images, texts))}
        self._scores.extend(values.get(id(img)) for img in batch)

    def compute(self) -> AxisResult:
        return self.prompted_mean(self._scores)


class OpenClipScore(_ClipScore):
    """CLIPScore with an open_clip model: a built-in name + ``pretrained`` tag/file, ``hf-hub:`` repo, or local path."""

    class Options(Backend.Options):
        pretrained: str | None = Field(
            None,
            description="open_clip pretrained tag (e.g. openai, merged2b_s4b_b131k), a checkpoint file, or 'random'",
        )
        architecture: str | None = Field(None, description="open_clip model name when `model` is a checkpoint file")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.model_id is not None
        self.source = resolve_open_clip(
            self.model_id, self.options.pretrained, self.options.architecture, self.model_field
        )
        self.stand_in = self.source.stand_in

    def load(self) -> None:
        self.encoder = load_open_clip(self.source, self.runtime.device, self.runtime.dtype, self.model_field)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.source.label}


class HFClipScore(_ClipScore):
    """CLIPScore with a Hugging Face transformers CLIP-style model (hub id or local folder)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.model_id is not None
        self.model_id = check_model_ref(self.model_id, self.model_field)
        self.stand_in = is_stand_in(self.model_id)

    def load(self) -> None:
        assert self.model_id is not None
        self.encoder = load_hf_clip(
            self.model_id, self.runtime.device, self.runtime.dtype, self.model_field, self.runtime.trust_remote_code
        )
