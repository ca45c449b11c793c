"""A deterministic validation loss per epoch, as kohya's sd-scripts logs it (``loss/validation/epoch_average``).

The training loss is a noisy number: random timesteps, random noise, a different batch at every step. The validation
loss removes all three: the same images (the held-out ones when ``dataset.holdout`` is set, else
``train.validation_images`` training images picked by seed), the same ``train.validation_timesteps`` stratified
timesteps (the midpoints of equal strata of the schedule), the same noise (drawn once from a fixed seed), plain MSE
(no min-SNR weighting, so runs with other settings compare), at the training resolution, centre-cropped. So two epochs
differ only by their LoRA weights, and a rising value means the LoRA moved away from the data. Nothing here touches
the training's random state: the noise comes from a generator of its own and torch's global state is restored.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loratune.train.data import Item
from loratune.train.encode import encode_images, encode_text, load_pixels

if TYPE_CHECKING:
    from loratune.config import Config

VALIDATION_SEED = 20_240_607  # any fixed number: the noise must not depend on the training seed


@dataclass(frozen=True)
class ValidationImages:
    items: list[Item]
    source: str  # "held-out" or "training subset"


def validation_images(config: Config, training: list[Item]) -> ValidationImages | None:
    """The held-out images (with their captions) when the dataset has any, else a seeded subset of the training
    images; None when ``train.validation_images`` is 0 or there is nothing to validate on."""
    from loratune.learning.holdout import split_items
    from loratune.train.data import scan_dataset

    count = config.train.validation_images
    if count == 0:
        return None
    if config.dataset.holdout is not None:
        characters = list(config.dataset.characters.values())
        every = scan_dataset(config.dataset.path, config.dataset.caption_extension, config.dataset.missing_caption,
                             class_token=characters[0].token if len(characters) == 1 else None)
        held = set(split_items(config, every)[1])
        items = sorted((it for it in every if it.image in held), key=lambda it: str(it.image))
        if items:
            return ValidationImages(items[:count], "held-out")
    pool = sorted((it for it in training if not it.is_reg), key=lambda it: str(it.image))
    if not pool:
        return None
    return ValidationImages(random.Random(config.train.seed).sample(pool, min(count, len(pool))), "training subset")


class ValidationLoss:
    """Latents, text conditions, timesteps and noise fixed once; ``__call__`` gives the loss of the current weights."""

    def __init__(self, config: Config, models: Any, images: ValidationImages, device: Any, dtype: Any,
                 autocast: Any) -> None:
        import torch

        self.models, self.autocast, self.source = models, autocast, images.source
        resolution = config.dataset.resolution
        self.device, self.captions = device, [it.caption for it in images.items]
        with torch.no_grad():
            pixels = torch.stack([load_pixels(it, (resolution, resolution), False) for it in images.items])
            self.latents = encode_images(models.vae, pixels.to(device, models.vae.dtype), sample=False).to(device, dtype)
            # A trained text encoder changes every epoch: its condition is encoded at each call instead.
            self.cond = None if models.trained_text_encoders else self._encode()
        k = config.train.validation_timesteps
        self.levels = [(i + 0.5) / k for i in range(k)]  # the midpoints of k equal strata of the noise schedule
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        self.noise = [torch.randn(self.latents.shape, generator=generator).to(self.latents) for _ in self.levels]
        self.bucket = (resolution, resolution)
        self.count = len(images.items)

    def _encode(self) -> Any:
        with self.autocast():
            return encode_text(self.models, self.captions, self.device)

    def __call__(self) -> float:
        """The mean plain MSE over images × timesteps with the LoRA as it is now (modules' modes restored)."""
        import torch

        modules = [self.models.denoiser, *self.models.text_encoders]
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), self.autocast():
                cond = self.cond if self.cond is not None else encode_text(self.models, self.captions, self.device)
                losses = []
                for level, noise in zip(self.levels, self.noise):
                    losses.append(self.models.family.validation_loss(self.models, self.latents, cond, self.bucket,
                                                                     level, noise))
                return float(torch.cat(losses).float().mean())
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)


def run_validation_loss(config: Config, models: Any, items: list[Item], device: Any, dtype: Any,
                        accelerator: Any) -> Callable[[], float] | None:
    """The run's deterministic validation loss, or None when it is off."""
    from loratune.families.base import Family

    images = validation_images(config, items)
    if images is None or type(models.family).validation_loss is Family.validation_loss:  # the family has none
        return None
    return ValidationLoss(config, models, images, device, dtype, accelerator.autocast)
