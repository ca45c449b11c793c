"""The world's evidence, measured: the oracle's verdict on the base model and on each epoch of a LoRA run.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/world_loop.py [--epochs 4] [--set train.learning_rate=1e-3 ...]

Writes the world into a temporary folder (``loratune.world.write_world``), samples the base model with the config's
prompts and seeds, trains a LoRA of the target with loratune's own trainer, and prints per epoch: the oracle's identity
rate (target present with shirt, hair above it), mean trait share, scene accuracy, quality and diversity.
Still to come (issue 11): Spearman of the composite against the oracle over a search, TPE/GP/random regret.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. a.b=1")
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from PIL import Image

    from loratune.config import load_config
    from loratune.sampling import load_pipeline, render
    from loratune.train import train
    from loratune.world.folder import write_world
    from loratune.world.oracle import judge

    overrides = list(args.overrides) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    with tempfile.TemporaryDirectory() as tmp:
        world = write_world(Path(tmp) / "world")
        config = load_config(world.config, overrides)
        rows = []

        def verdict(epoch: int, samples: list, seconds: float) -> None:
            images = [Image.open(s.path).convert("RGB") for s in samples]
            v = judge(images, [s.prompt for s in samples], world.target)
            rows.append({"epoch": epoch, **v.as_dict(), "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]) if args.json else _row(rows[-1]), flush=True)

        start = time.perf_counter()
        pipe = load_pipeline(config)
        verdict(0, render(pipe, config, Path(tmp) / "base-samples"), time.perf_counter() - start)
        del pipe
        start = time.perf_counter()
        train(
            config,
            Path(tmp) / "run",
            on_checkpoint=lambda info: verdict(info.epoch, info.samples, time.perf_counter() - start),
        )


def _row(r: dict) -> str:
    return (
        f"epoch {r['epoch']:>2}  identity {r['identity_rate']:.2f}  traits {r['identity_mean']:.2f}  "
        f"scene {r['scene_accuracy']:.2f}  quality {r['quality']:.2f}  diversity {r['diversity']:.3f}  "
        f"({r['n']} images, {r['seconds']} s)"
    )


if __name__ == "__main__":
    main()
