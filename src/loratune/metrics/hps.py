"""HPSv2 / HPSv2.1 (Wu et al. 2023): OpenCLIP ViT-H-14 fine-tuned on human preference pairs (HPD v2).

The score is the ``hpsv2`` package's (hpsv2/img_score.py, ``score``): the cosine of the L2-normalised image and
prompt embeddings (``image_features @ text_features.T`` of the model's normalised outputs; no logit scale, no x100),
so a typical value is 0.2-0.35. The network is open_clip's own ViT-H-14 (the package ships an older open_clip copy
with the same modules); the checkpoint, ``{"state_dict": ...}``, is read by open_clip with ``weights_only=True``.

The image goes through the package's preprocessing, not open_clip's default: ``create_model_and_transforms(...,
light_augmentation=True)`` gives ``ToTensor`` -> ``ResizeMaxSize`` (bicubic resize of the *long* side on the tensor,
then zero padding to a centred square) -> CLIP normalisation. The package leaves an image whose long side already
equals the model size unpadded (a non-square tensor its model cannot take); it is padded here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from loratune.errors import LoratuneError
from loratune.metrics.aesthetic import resolve_hub_file
from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.embedding_cache import PromptEmbeddings
from loratune.metrics.openclip_models import OpenClipModel, OpenClipSource, load_open_clip, resolve_open_clip

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the package's image_mean=None falls back to these
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def hps_pixels(image: Any, size: int) -> torch.Tensor:
    """One image as the package's ``preprocess_val`` makes it (hpsv2/src/open_clip/transform.py, ResizeMaxSize)."""
    import torchvision.transforms.functional as F

    tensor = F.to_tensor(image.convert("RGB"))
    height, width = tensor.shape[1:]
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    if (new_h, new_w) != (height, width):
        tensor = F.resize(tensor, [new_h, new_w], F.InterpolationMode.BICUBIC)
    pad_h, pad_w = size - new_h, size - new_w
    tensor = F.pad(tensor, padding=[pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return F.normalize(tensor, OPENAI_MEAN, OPENAI_STD)


def _is_hub_file(ref: str) -> bool:
    return not Path(ref).expanduser().exists() and not ref.startswith((".", "/", "~", "hf-hub:")) and ref.count("/") >= 2


class HpsV2Score(Backend):
    """Mean HPSv2 score (image-prompt cosine of the preference-tuned CLIP) over the prompted images."""

    class Options(Backend.Options):
        architecture: str = Field("ViT-H-14", description="open_clip model name the checkpoint was trained as")

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_field = f"{self.field_path}.model"
        ref = self.model_id or ""
        # A checkpoint in a hub repo (owner/repo/file.pt) is downloaded at load; anything else is checked now.
        self.source: OpenClipSource | None = None
        if not _is_hub_file(ref):
            self.source = self._resolve(ref)
            self.stand_in = self.source.stand_in
        self._prompts = PromptEmbeddings()
        self.reset()

    def _resolve(self, ref: str) -> OpenClipSource:
        return resolve_open_clip(
            ref, None, self.options.architecture, self.model_field, options_field=self.field_path
        )

    def load(self) -> None:
        if self.source is None:
            self.source = self._resolve(resolve_hub_file(self.model_id or "", self.model_field))
        self.encoder: OpenClipModel = load_open_clip(
            self.source, self.runtime.device, self.runtime.dtype, self.model_field
        )
        size = self.encoder.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        if isinstance(size, (tuple, list)) and size[0] != size[1]:
            raise LoratuneError(f"{self.model_field}: {self.source.label} takes {size} images; HPSv2 needs square ones")

    def reset(self) -> None:
        self._scores: list[float | None] = []

    def _text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        return self._prompts.embed(self.encoder, prompts, self.runtime.batch_size)

    def image_embeddings(self, images: list[Any]) -> torch.Tensor:
        enc = self.encoder
        pixels = torch.stack([hps_pixels(img, self.image_size) for img in images]).to(enc.device, enc.dtype)
        with torch.inference_mode():
            features = enc.model.encode_image(pixels).float()
        return (features / torch.linalg.vector_norm(features, dim=-1, keepdim=True)).cpu()

    def update(self, batch: list[EvalImage]) -> None:
        scored = [img for img in batch if img.prompt]
        values: dict[int, float] = {}
        if scored:
            images = self.image_embeddings([img.image for img in scored])
            texts = self._text_embeddings([img.prompt for img in scored])  # type: ignore[misc]
            values = {id(img): float(s) for img, s in zip(scored, (images * texts).sum(-1))}
        self._scores.extend(values.get(id(img)) for img in batch)

    def compute(self) -> AxisResult:
        return self.prompted_mean(self._scores)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.source.label if self.source else self.model_id}
