"""Image embeddings shared by the backends of one evaluation.

The consistency (CLIP-I) and aesthetics (LAION MLP) backends, and CLIPScore or CLIP diversity, often embed the same
images with the same CLIP model. The process-wide model cache hands every backend that asks for the same model (same
reference, device and dtype) the same loaded object, preprocessing included, so an embedding keyed by (that object,
the decoded image) is the same number whichever backend asks: the first computes it, the others read it.

``Evaluator.score`` opens one ``EmbeddingCache`` per call (``Runtime.embeddings``) and drops it afterwards; a backend
used on its own (``Runtime.embeddings is None``) embeds as before.

>>> cache = EmbeddingCache()
>>> cache.embed(encoder, [img.image for img in batch], 8)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from loratune.metrics.base import Runtime
    from loratune.metrics.openclip_models import ImageEmbedder


class EmbeddingCache:
    """Embedding rows per (encoder object, image object) for the length of one evaluation."""

    def __init__(self) -> None:
        # Values hold the encoder and the image too: the ids in the key stay theirs while the entry lives.
        self._rows: dict[tuple[int, int], tuple[Any, Any, torch.Tensor]] = {}

    def embed(self, encoder: ImageEmbedder, images: Sequence[Image.Image], batch_size: int) -> torch.Tensor:
        """``encoder.embed_images(images)``, computing only the images this encoder has not embedded yet."""
        import torch

        missing = list({id(img): img for img in images if (id(encoder), id(img)) not in self._rows}.values())
        if missing:
            for img, row in zip(missing, encoder.embed_images(missing, batch_size)):
                self._rows[(id(encoder), id(img))] = (encoder, img, row)
        if not images:
            return encoder.embed_images(images, batch_size)
        return torch.stack([self._rows[(id(encoder), id(img))][2] for img in images])


class PromptEmbeddings:
    """Text embeddings per prompt for a backend's lifetime: a study scores the same prompts at every epoch, so each
    prompt is encoded once."""

    def __init__(self) -> None:
        self._rows: dict[str, torch.Tensor] = {}

    def embed(self, encoder: Any, prompts: Sequence[str], batch_size: int) -> torch.Tensor:
        """``encoder.embed_texts(prompts)``, encoding only the prompts not seen before."""
        import torch

        new = sorted({p for p in prompts if p not in self._rows})
        if new:
            for prompt, row in zip(new, encoder.embed_texts(new, batch_size)):
                self._rows[prompt] = row
        return torch.stack([self._rows[p] for p in prompts])


def embed_images(runtime: Runtime, encoder: ImageEmbedder, images: Sequence[Image.Image]) -> torch.Tensor:
    """The images' embeddings: through the evaluation's shared cache when there is one."""
    if runtime.embeddings is None:
        return encoder.embed_images(images, runtime.batch_size)
    return runtime.embeddings.embed(encoder, images, runtime.batch_size)
