"""Pre-train the world's tiny SD1.5-layout base model on the non-target characters, deterministically on the CPU.

Two stages, each a plain loop you can read top to bottom:

1. the VAE (3 blocks: a 64-px image is a 16×16×4 latent) on reconstruction + a small KL term;
2. the UNet and the CLIP text encoder together on the VAE's latents with DDPM's epsilon loss; 10% of captions are
   dropped to "" so classifier-free guidance works at sampling time.

The pipeline starts from ``loratune.tiny.sd.build_sd15`` (same tokenizer, scheduler and text-encoder shape) and only
the VAE and UNet are re-shaped. Run through ``scripts/pretrain_world.py``; the result is committed under
``loratune/world/weights``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loratune.world.scene import BASE_CHARACTERS, world_batch

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    # cross-attention only at 8×8: attention at 16×16 cost a third more per step on 2 cores
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 16,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
}


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    n_images: int = 4000
    vae_steps: int = 600
    vae_batch: int = 16
    vae_crop: int = 32  # the VAE is fully convolutional: 32-px crops train it at a quarter of the cost
    vae_lr: float = 2e-3
    unet_steps: int = 1500
    unet_batch: int = 16
    unet_lr: float = 1e-3
    text_encoder_lr: float = 3e-4
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    save_every: int = 250


def _to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(pixels: Any, s: Settings, log: Callable[[dict], None]) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(s.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.Adam(vae.parameters(), lr=s.vae_lr)
    gen = torch.Generator().manual_seed(s.seed)
    for step in range(1, s.vae_steps + 1):
        batch = pixels[torch.randint(0, len(pixels), (s.vae_batch,), generator=gen)]
        y, x = torch.randint(0, pixels.shape[-1] - s.vae_crop + 1, (2,), generator=gen).tolist()
        batch = batch[:, :, y : y + s.vae_crop, x : x + s.vae_crop]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        mse = torch.nn.functional.mse_loss(recon, batch)
        loss = mse + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == s.vae_steps:
            log({"stage": "vae", "step": step, "mse": round(mse.item(), 5)})
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    # SD's convention: latents * scaling_factor have unit variance (SD1.5's own is 0.18215).
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    vae.requires_grad_(False)
    return vae


def train_unet(
    pipe: Any, latents: Any, captions: list[str], s: Settings, log: Callable[[dict], None], save: Callable[[], None]
) -> None:
    import torch
    from diffusers.training_utils import compute_snr

    unet, text_encoder, tokenizer, scheduler = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    unet.train()
    text_encoder.train()
    ids = tokenizer(
        captions + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    empty = ids[-1]
    ids = ids[:-1]
    # Adam without weight decay: token embeddings the world never uses (the targets' tokens) stay as initialised.
    opt = torch.optim.Adam(
        [{"params": unet.parameters(), "lr": s.unet_lr}, {"params": text_encoder.parameters(), "lr": s.text_encoder_lr}]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 200))
    gen = torch.Generator().manual_seed(s.seed + 1)
    running = 0.0
    for step in range(1, s.unet_steps + 1):
        index = torch.randint(0, len(latents), (s.unet_batch,), generator=gen)
        x0 = latents[index]
        batch_ids = ids[index].clone()
        drop = torch.rand(s.unet_batch, generator=gen) < s.caption_dropout
        batch_ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (s.unet_batch,), generator=gen)
        hidden = text_encoder(batch_ids)[0]
        pred = unet(scheduler.add_noise(x0, noise, t), t, hidden).sample
        # min-SNR weighting (gamma 5): converges several times faster than the plain loss
        snr = compute_snr(scheduler, t)
        weight = torch.minimum(snr, torch.full_like(snr, s.min_snr_gamma)) / snr
        loss = (torch.nn.functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*unet.parameters(), *text_encoder.parameters()], 1.0)
        opt.step()
        sched.step()
        running = loss.item() if step == 1 else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == s.unet_steps:
            log({"stage": "unet", "step": step, "loss_ema": round(running, 5)})
        if step % s.save_every == 0:
            save()
    unet.eval()
    text_encoder.eval()
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)


def pretrain(out_dir: str | Path, settings: Settings | None = None, log: Callable[[dict], None] | None = None) -> Path:
    """Train and save the base pipeline at ``out_dir`` (``StableDiffusionPipeline.from_pretrained(out_dir)``)."""
    import tempfile

    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from loratune.tiny.clip_tokenizer import write_slow_tokenizer_files
    from loratune.tiny.sd import build_sd15

    s = settings or Settings()
    out = Path(out_dir)
    records: list[dict] = []
    start = time.perf_counter()

    def note(entry: dict) -> None:
        entry = {**entry, "seconds": round(time.perf_counter() - start, 1)}
        records.append(entry)
        if log:
            log(entry)

    images, captions = world_batch(BASE_CHARACTERS, s.seed, s.n_images)
    pixels = _to_tensor(images)
    vae = train_vae(pixels, s, note)
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]
        ) * vae.config.scaling_factor
    with tempfile.TemporaryDirectory() as tmp:
        build_sd15(Path(tmp), s.seed)
        base = StableDiffusionPipeline.from_pretrained(tmp)
    torch.manual_seed(s.seed)
    pipe = StableDiffusionPipeline(**{**base.components, "unet": UNet2DConditionModel(**UNET_CONFIG), "vae": vae})

    def save() -> None:
        pipe.save_pretrained(str(out), safe_serialization=True)
        write_slow_tokenizer_files(out / "tokenizer")

    train_unet(pipe, latents, captions, s, note, save)
    save()
    (out / "training.json").write_text(
        json.dumps({"settings": asdict(s), "seconds": round(time.perf_counter() - start, 1), "log": records}, indent=1)
    )
    return out
