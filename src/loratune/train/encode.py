"""Turning captions and images into what the denoiser reads, with the caches used when the encoders are frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loratune.train.data import Item
from loratune.train.model import Models


@dataclass
class TextCondition:
    """Text conditioning for a batch: hidden states, plus a pooled embedding where the family uses one (SDXL, Flux)."""

    hidden: Any
    pooled: Any | None = None


def tokenize(tokenizer: Any, captions: list[str]) -> Any:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def encode_text(models: Models, captions: list[str], device: Any) -> TextCondition:
    """The family's text conditioning for ``captions`` (``Family.encode_text``)."""
    return models.family.encode_text(models, captions, device)


class TextCache:
    """Memoised text conditioning per caption: valid only while every text encoder is frozen.

    ``store`` (caption -> condition) may outlive the run: a later run on the same frozen base reuses it.
    """

    def __init__(self, models: Models, device: Any, store: dict[str, TextCondition] | None = None) -> None:
        self.models, self.device = models, device
        self._cache: dict[str, TextCondition] = {} if store is None else store

    def __call__(self, captions: list[str]) -> TextCondition:
        import torch

        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            with torch.no_grad():
                cond = encode_text(self.models, missing, self.device)
            for i, caption in enumerate(missing):
                self._cache[caption] = TextCondition(
                    cond.hidden[i : i + 1], None if cond.pooled is None else cond.pooled[i : i + 1]
                )
        rows = [self._cache[c] for c in captions]
        pooled = None if rows[0].pooled is None else torch.cat([r.pooled for r in rows])
        return TextCondition(torch.cat([r.hidden for r in rows]), pooled)


def load_pixels(item: Item, bucket: tuple[int, int], flip: bool) -> Any:
    """The image resized to cover ``bucket`` (width, height), centre-cropped, as a [-1, 1] CHW float tensor."""
    import numpy as np
    import torch
    from PIL import Image

    from loratune.images import load_image

    width, height = bucket
    with load_image(item.image) as img:
        scale = max(width / img.width, height / img.height)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        img = img.crop((left, top, left + width, top + height))
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def encode_images(vae: Any, pixels: Any, sample: bool, generator: Any | None = None) -> Any:
    """VAE latents as the denoiser reads them; ``sample`` draws from the posterior (uncached), else takes its mean.

    Shifted then scaled, as the pipelines undo it when decoding (``latents / scaling + shift``); SD's VAEs have no
    shift, Flux's has one.
    """
    dist = vae.encode(pixels).latent_dist
    latents = dist.sample(generator) if sample else dist.mean
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


class LatentCache:
    """Latents per (image file, bucket, flipped), encoded once with the frozen VAE and kept in memory.

    A file is known by path, size and modification time, so ``store`` may outlive the run: a later run on the same
    VAE reuses every latent whose image, bucket and flip it draws again.
    """

    def __init__(
        self, vae: Any, items: list[Item], device: Any, dtype: Any, store: dict[Any, Any] | None = None
    ) -> None:
        self.vae, self.items, self.device, self.dtype = vae, items, device, dtype
        self._cache: dict[Any, Any] = {} if store is None else store
        self._files = []
        for item in items:
            stat = item.image.stat()
            self._files.append((str(item.image), stat.st_size, stat.st_mtime_ns))

    def __call__(self, indices: list[int], bucket: tuple[int, int], flips: list[bool]) -> Any:
        import torch

        keys = [(i, bucket, f) for i, f in zip(indices, flips)]
        missing = [k for k in dict.fromkeys(keys) if self._key(k) not in self._cache]
        if missing:
            pixels = torch.stack([load_pixels(self.items[i], b, f) for i, b, f in missing])
            with torch.no_grad():
                latents = encode_images(self.vae, pixels.to(self.device, self.dtype), sample=False)
            for key, latent in zip(missing, latents):
                self._cache[self._key(key)] = latent
        return torch.stack([self._cache[self._key(k)] for k in keys])

    def _key(self, key: tuple[int, tuple[int, int], bool]) -> tuple[Any, ...]:
        index, bucket, flip = key
        return (*self._files[index], bucket, flip, str(self.dtype))
