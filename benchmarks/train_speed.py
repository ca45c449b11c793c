"""Training speed and peak memory: loratune's trainer vs a minimal loop after diffusers' train_text_to_image_lora.py.

Both train the same LoRA (rank 4 on to_q/to_k/to_v/to_out.0, AdamW, fp32) on the same tiny SD1.5 and images (the
tiny dataset, one repeat), with and without latent caching. Each variant runs in its own process, so peak RSS is that
variant's alone; steps/s counts only steps after the first epoch (model loading and cache filling excluded). A shared
machine is noisy: the variants run interleaved for several rounds; the table shows the best run (the least disturbed,
used for the ratio) and the median.

    .venv/bin/python benchmarks/train_speed.py [--steps 20] [--rounds 3] [--batch-size 4] [--tiny-dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ["reference", "reference+cache", "loratune", "loratune+cache"]


def _batches(dataset: Path, batch_size: int, resolution: int):
    """The reference's data path: torchvision transforms as in train_text_to_image_lora.py, captions from .txt."""
    from PIL import Image
    from torchvision import transforms

    files = sorted(dataset.glob("*/*.png"))  # one repeat each, like the loratune variant
    tf = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    rows = [(tf(Image.open(f).convert("RGB")), f.with_suffix(".txt").read_text().strip()) for f in files]
    while True:
        for i in range(0, len(rows) - batch_size + 1, batch_size):
            chunk = rows[i : i + batch_size]
            yield [c[0] for c in chunk], [c[1] for c in chunk]


def run_reference(base: Path, dataset: Path, steps: int, batch_size: int, cache: bool) -> list[float]:
    """The minimal loop; returns the wall time of each step."""
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    data = _batches(dataset, batch_size, 64)
    cached: list = []
    if cache:
        with torch.no_grad():
            for _ in range(len(sorted(dataset.glob("*/*.png"))) // batch_size):
                pixels, captions = next(data)
                cached.append(
                    (vae.encode(torch.stack(pixels)).latent_dist.sample() * vae.config.scaling_factor, captions)
                )
    times = []
    for step in range(steps):
        start = time.perf_counter()
        if cache:
            latents, captions = cached[step % len(cached)]
        else:
            pixels, captions = next(data)
            latents = vae.encode(torch.stack(pixels)).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        ids = tokenizer(
            captions, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
        ).input_ids
        hidden = text_encoder(ids, return_dict=False)[0]
        pred = unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times


def run_loratune(
    config_path: Path, dataset: Path, steps: int, batch_size: int, cache: bool, out: Path, extra: list[str] | None = None
) -> list[float]:
    """loratune's trainer on ``config_path`` with this benchmark's recipe (plus ``extra`` overrides); step times."""
    from loratune.config import load_config
    from loratune.train import train

    config = load_config(
        config_path,
        [
            f"dataset.path={dataset}",
            "dataset.resolution=64",
            "dataset.buckets=false",
            "train.rank=4",
            "train.alpha=4",
            "train.optimizer=adamw",
            "train.learning_rate=1e-4",
            f"train.batch_size={batch_size}",
            "train.epochs=1000",
            f"train.max_steps={steps}",
            f"train.cache_latents={str(cache).lower()}",
            "train.sample_checkpoints=false",
            "train.mixed_precision=no",
            "train.device=cpu",
            *(extra or []),
        ],
    )
    stamps: list[float] = []
    train(config, out, progress=lambda record: stamps.append(time.perf_counter()))
    return [b - a for a, b in itertools.pairwise(stamps)]


def one_repeat_dataset(tiny_dataset: Path, out: Path) -> Path:
    """The tiny dataset's images and captions with one repeat per epoch (``1_<token>/``)."""
    import shutil

    for folder in sorted(p for p in tiny_dataset.iterdir() if p.is_dir()):
        target = out / f"1_{folder.name.split('_', 1)[1]}"
        target.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            shutil.copy(f, target / f.name)
    return out


def warmup_steps(tiny_dir: Path, batch_size: int) -> int:
    """The first epoch (it fills the caches) plus one step."""
    return len(list((tiny_dir / "dataset" / "train").glob("*/*.png"))) // batch_size + 1


def child(args: argparse.Namespace) -> None:
    import tempfile

    tiny = Path(args.tiny_dir)
    cache = args.variant.endswith("+cache")
    # The dataset copy and the run's outputs live in one temporary folder, removed however the child ends.
    with tempfile.TemporaryDirectory(prefix="loratune-bench-") as tmp:
        dataset = one_repeat_dataset(tiny / "dataset" / "train", Path(tmp) / "dataset")
        if args.variant.startswith("reference"):
            times = run_reference(tiny / "sd15", dataset, args.steps, args.batch_size, cache)
        else:
            times = run_loratune(
                tiny / "loratune.yaml", dataset, args.steps, args.batch_size, cache, Path(tmp) / "out"
            )
    measured = times[warmup_steps(tiny, args.batch_size) :]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": args.variant, "steps_per_s": len(measured) / sum(measured), "peak_rss_mb": rss_mb}))


def parse_args(doc: str, variants: list[str]) -> argparse.Namespace:
    """The options every training benchmark takes (``--variant`` is how the parent starts each child)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--tiny-dir",
        default=os.environ.get("LORATUNE_TINY_CACHE"),
        help="the tiny models' folder (default: $LORATUNE_TINY_CACHE, else built in a temporary folder)",
    )
    parser.add_argument("--variant", choices=variants, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


def interleaved_runs(script: str, variants: list[str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each variant of ``script`` in its own process, ``args.rounds`` times, interleaved so that a burst of load
    elsewhere hits every variant alike; the JSON line each child prints, per variant."""
    import tempfile

    from loratune.tiny import build_tiny_models

    with tempfile.TemporaryDirectory(prefix="loratune-tiny-") as scratch:  # never the repository's .cache
        tiny_dir = args.tiny_dir or str(Path(scratch) / "tiny-models")
        build_tiny_models(tiny_dir)
        total = args.steps + warmup_steps(Path(tiny_dir), args.batch_size) + 1
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            for variant in variants:
                cmd = [sys.executable, script, "--variant", variant, "--steps", str(total)]
                cmd += ["--batch-size", str(args.batch_size), "--tiny-dir", tiny_dir]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    return runs


def main() -> None:
    args = parse_args(__doc__, VARIANTS)
    if args.variant:
        child(args)
        return

    import statistics

    from rich.console import Console
    from rich.table import Table

    runs = interleaved_runs(__file__, VARIANTS, args)
    speed = {v: sorted(r["steps_per_s"] for r in rs) for v, rs in runs.items()}
    table = Table(
        title=f"LoRA training on the tiny SD1.5, 64 px, batch {args.batch_size}, rank 4: best and median of {args.rounds} "
        f"runs x {args.steps} steps ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )
    for column in ("trainer", "latent cache", "best steps/s", "median", "vs reference", "peak RSS (MB)"):
        table.add_column(column, justify="right" if column != "trainer" else "left")
    for variant in VARIANTS:
        best = speed[variant][-1]
        ref = speed["reference+cache" if variant.endswith("+cache") else "reference"][-1]
        table.add_row(
            variant.split("+")[0],
            "yes" if variant.endswith("+cache") else "no",
            f"{best:.2f}",
            f"{statistics.median(speed[variant]):.2f}",
            f"{best / ref:.2f}x",
            f"{max(r['peak_rss_mb'] for r in runs[variant]):.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
