"""The training objective: the noise-prediction (or v-prediction) loss at random timesteps, with min-SNR
weighting and noise offset, on the UNet the LoRA is attached to."""

from __future__ import annotations

from typing import Any


def diffusion_loss(models: Any, latents: Any, cond: Any, bucket: tuple[int, int], t: Any, generator: Any) -> Any:
    """Noise-prediction loss at random timesteps (epsilon or v target; min-SNR weighting; noise offset)."""
    import torch

    scheduler = models.noise_scheduler
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if t.noise_offset:
        noise = noise + t.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=generator).to(latents)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    return per_sample_loss(models, latents, cond, bucket, timesteps, noise, t.min_snr_gamma).mean()


def per_sample_loss(models: Any, latents: Any, cond: Any, bucket: tuple[int, int], timesteps: Any, noise: Any,
                    min_snr_gamma: float | None) -> Any:
    """Each sample's loss at the given timesteps and noise (training draws them; validation fixes them)."""
    import torch
    import torch.nn.functional as F
    from diffusers.training_utils import compute_snr

    scheduler = models.noise_scheduler
    b = latents.shape[0]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    extra: dict[str, Any] = {}
    if models.family == "sdxl":
        width, height = bucket
        # original size, crop top-left, target size: we train on the resized, centred crop at bucket size
        time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=cond.hidden.dtype, device=latents.device)
        extra["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": time_ids.repeat(b, 1)}
    pred = models.unet(noisy, timesteps, cond.hidden, **extra).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    if min_snr_gamma:
        snr = compute_snr(scheduler, timesteps)
        clipped = torch.minimum(snr, torch.full_like(snr, min_snr_gamma))
        weights = clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr
        loss = loss * weights
    return loss
