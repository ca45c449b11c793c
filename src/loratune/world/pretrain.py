"""Pre-train the world's tiny SD1.5-layout base model on the non-target characters, deterministically on the CPU.

Two stages, each a plain loop you can read top to bottom:

1. the VAE (3 blocks: a 64-px image is a 16×16×4 latent) on reconstruction + a small KL term, over the base
   characters and as many anonymous figures in random colours (a VAE trained on the base characters alone
   cannot draw the targets' teal and purple shirts, so no LoRA could);
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

from loratune.world.scene import BASE_CHARACTERS, SCENES, Character, render, sample_jitters, world_batch

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


VAE_STAGE = "vae-stage.json"
UNET_STAGE = "unet-stage.json"


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    n_images: int = 4000
    vae_steps: int = 1200
    vae_batch: int = 16
    vae_crop: int = 32  # the VAE is fully convolutional: 32-px crops train it at a quarter of the cost
    vae_lr: float = 1e-3
    unet_steps: int = 1500
    unet_rounds: int = 2  # warm restarts: measured, round 1 alone left the night scene undrawn
    unet_batch: int = 16
    unet_lr: float = 1e-3
    text_encoder_lr: float = 3e-4
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    save_every: int = 250


def random_figures(seed: int, n: int, crop: int) -> np.ndarray:
    """``crop``-px windows around anonymous figures whose hair, shirt, pants and details take random colours (VAE
    data only: a random window of a whole image mostly misses the figure, and the figure is what must keep its colours).
    """
    import random

    rng = random.Random(seed)
    scenes = list(SCENES.values())

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    windows = []
    for jitter in sample_jitters(seed, n):
        figure = Character(
            "someone",
            "boy",
            "any",
            colour(),
            "any",
            colour(),
            colour(),
            head=rng.choice(("round", "square")),
            stripe=colour() if rng.random() < 0.3 else None,
            hat=colour() if rng.random() < 0.3 else None,
        )
        image = render(figure, rng.choice(scenes), jitter)[0]
        top = min(max(jitter.feet - crop + rng.randint(-4, 4), 0), image.shape[0] - crop)
        left = min(max(jitter.cx - crop // 2 + rng.randint(-6, 6), 0), image.shape[1] - crop)
        windows.append(image[top : top + crop, left : left + crop])
    return np.stack(windows)


def _to_tensor(images: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(pixels: Any, figures: Any, s: Settings, log: Callable[[dict], None]) -> Any:
    """Each batch: half random windows of world images, half windows around random-colour figures."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(s.seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.Adam(vae.parameters(), lr=s.vae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.vae_steps, eta_min=s.vae_lr / 10)
    gen = torch.Generator().manual_seed(s.seed)
    half = s.vae_batch // 2
    for step in range(1, s.vae_steps + 1):
        batch = pixels[torch.randint(0, len(pixels), (half,), generator=gen)]
        y, x = torch.randint(0, pixels.shape[-1] - s.vae_crop + 1, (2,), generator=gen).tolist()
        batch = torch.cat(
            [
                batch[:, :, y : y + s.vae_crop, x : x + s.vae_crop],
                figures[torch.randint(0, len(figures), (half,), generator=gen)],
            ]
        )
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        mse = torch.nn.functional.mse_loss(recon, batch)
        loss = mse + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == s.vae_steps:
            log({"stage": "vae", "step": step, "mse": round(mse.item(), 5)})
    vae.requires_grad_(False)
    return vae


def train_unet(
    pipe: Any,
    latents: Any,
    captions: list[str],
    s: Settings,
    log: Callable[[dict], None],
    snapshot: Callable[[], None],
    round_: int = 0,
) -> None:
    """One round of ``unet_steps``: a fresh optimizer with warm-up, its own random stream (``seed + 1 + round_``)."""
    import torch
    from diffusers.training_utils import compute_snr

    unet, text_encoder, tokenizer, scheduler = pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    unet.train()
    text_encoder.train()
    unet.requires_grad_(True)  # a later round starts from the frozen models an earlier round left
    text_encoder.requires_grad_(True)
    ids = tokenizer(
        captions + [""],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    empty = ids[-1]
    ids = ids[:-1]
    # Adam without weight decay: token embeddings the world never uses (the targets' tokens) stay as initialised.
    opt = torch.optim.Adam(
        [{"params": unet.parameters(), "lr": s.unet_lr}, {"params": text_encoder.parameters(), "lr": s.text_encoder_lr}]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 200))
    gen = torch.Generator().manual_seed(s.seed + 1 + round_)
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
            log({"stage": "unet", "round": round_ + 1, "step": step, "loss_ema": round(running, 5)})
        if step % s.save_every == 0:
            snapshot()
    unet.eval()
    text_encoder.eval()
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)


def pretrain(out_dir: str | Path, settings: Settings | None = None, log: Callable[[dict], None] | None = None) -> Path:
    """Train and save the base pipeline at ``out_dir`` (``StableDiffusionPipeline.from_pretrained(out_dir)``)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

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
    # Stage 1 is deterministic: a VAE already trained here with the same settings is reused, not retrained.
    vae_settings = {k: v for k, v in asdict(s).items() if k.startswith("vae") or k in ("seed", "n_images")}
    marker = out / VAE_STAGE
    reuse = marker.is_file() and json.loads(marker.read_text()) == vae_settings
    if reuse:
        vae = AutoencoderKL.from_pretrained(str(out / "vae"))
        note({"stage": "vae", "reused": str(out / "vae")})
    else:
        vae = train_vae(pixels, _to_tensor(random_figures(s.seed + 7, s.n_images, s.vae_crop)), s, note)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    if not reuse:
        # SD's convention: latents * scaling_factor have unit variance (SD1.5's own is 0.18215).
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        vae.save_pretrained(str(out / "vae"), safe_serialization=True)
        marker.write_text(json.dumps(vae_settings))
    latents = latents * vae.config.scaling_factor
    with tempfile.TemporaryDirectory() as tmp:
        build_sd15(Path(tmp), s.seed)
        base = StableDiffusionPipeline.from_pretrained(tmp)
    torch.manual_seed(s.seed)
    pipe = StableDiffusionPipeline(**{**base.components, "unet": UNet2DConditionModel(**UNET_CONFIG), "vae": vae})

    def save(folder: Path) -> None:
        pipe.save_pretrained(str(folder), safe_serialization=True)
        write_slow_tokenizer_files(folder / "tokenizer")

    # Rounds already trained here with the same settings are reused (each round is deterministic).
    unet_settings = {k: v for k, v in asdict(s).items() if k not in ("unet_rounds", "save_every")}
    stage = out / UNET_STAGE
    done = json.loads(stage.read_text()) if stage.is_file() else {}
    rounds_done = done.get("rounds_done", 0) if done.get("settings") == unet_settings else 0
    if rounds_done:
        pipe.unet = UNet2DConditionModel.from_pretrained(str(out), subfolder="unet")
        pipe.text_encoder = CLIPTextModel.from_pretrained(str(out), subfolder="text_encoder")
        records[:0] = done.get("log", [])
        note({"stage": "unet", "reused_rounds": rounds_done})
    for round_ in range(rounds_done, s.unet_rounds):
        train_unet(pipe, latents, captions, s, note, lambda: save(out / "snapshot"), round_)
        save(out)
        stage.write_text(json.dumps({"settings": unet_settings, "rounds_done": round_ + 1, "log": records}))
    (out / "training.json").write_text(
        json.dumps({"settings": asdict(s), "seconds": round(time.perf_counter() - start, 1), "log": records}, indent=1)
    )
    return out


def base_report(folder: str | Path, seeds: tuple[int, ...] = (0, 1)) -> dict[str, Any]:
    """The oracle on the base model: every base character in every scene (and the targets), ``seeds`` each."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    from loratune.world.oracle import has_character, judge
    from loratune.world.scene import CHARACTERS, TARGETS, caption

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    report: dict[str, Any] = {"sampler": "dpm++ 20 steps, cfg 7.0, 64 px", "seeds": list(seeds)}
    for group, tokens in (("base_characters", BASE_CHARACTERS), ("targets", TARGETS)):
        prompts = [
            caption(CHARACTERS[t], scene, "standing", describe=t in BASE_CHARACTERS)
            for t in tokens
            for scene in SCENES.values()
        ]
        owners = [t for t in tokens for _ in SCENES]
        images = []
        for seed in seeds:
            out = pipe(
                prompts,
                num_inference_steps=20,
                guidance_scale=7.0,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(seed),
                output_type="np",
            ).images
            images += list((out * 255).round().astype(np.uint8))
        verdict = judge(images, prompts * len(seeds))
        present = [has_character(i, t) for i, t in zip(images, owners * len(seeds))]
        report[group] = {**verdict.as_dict(), "character_present": float(np.mean(present))}
    return report


def _report_installed(base: Path) -> dict[str, Any]:
    """``base_report`` on the installed weights, completed with the tokenizer the way ``write_world`` does."""
    import shutil
    import tempfile

    from loratune.world.folder import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "base"
        shutil.copytree(base, folder)
        write_tokenizer(folder / "tokenizer")
        return base_report(folder)


def finalize(trained: str | Path, weights: str | Path) -> dict[str, Any]:
    """Copy a trained pipeline into ``weights/base`` (UNet and VAE in fp16, which diffusers upcasts on load; the text
    encoder stays fp32 because transformers 5 would load fp16 as fp16; no tokenizer: ``write_world`` rebuilds the real
    CLIP one offline instead of committing 5 MB of vocabulary) and write ``weights/base.json`` with each
    file's sha256, the training settings and seconds, and the oracle's report on the base model."""
    import hashlib
    import shutil

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    trained, weights = Path(trained), Path(weights)
    target = weights / "base"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(
        trained,
        target,
        ignore=shutil.ignore_patterns("training.json", VAE_STAGE, UNET_STAGE, "snapshot", "tokenizer"),
    )
    for cls, part in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        model = cls.from_pretrained(str(trained), subfolder=part)
        shutil.rmtree(target / part)
        model.to(torch.float16).save_pretrained(str(target / part), safe_serialization=True)
    training = json.loads((trained / "training.json").read_text())
    (weights / "training-log.json").write_text(json.dumps(training, indent=1) + "\n")
    files = {
        str(p.relative_to(target)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(target.rglob("*"))
        if p.is_file()
    }
    # A run resumed from reused stages logs each process's own clock: add up the segments.
    seconds, last = 0.0, 0.0
    for entry in training["log"]:
        if entry["seconds"] < last:
            seconds += last
        last = entry["seconds"]
    info = {
        "settings": training["settings"],
        "training_seconds": round(seconds + training["seconds"], 1),
        "oracle": _report_installed(target),
        "sha256": files,
    }
    (weights / "base.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
