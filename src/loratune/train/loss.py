"""The training objective: the base's family's loss (``loratune.families``) on the denoiser the LoRA is attached to
-- SD1.5/SDXL's noise prediction at random timesteps, Flux's flow matching."""

from __future__ import annotations

from typing import Any


def diffusion_loss(models: Any, latents: Any, cond: Any, bucket: tuple[int, int], t: Any, generator: Any) -> Any:
    """The family's loss for one batch of latents (``t``: the train section; ``generator``: the run's noise)."""
    return models.family.loss(models, latents, cond, bucket, t, generator)
