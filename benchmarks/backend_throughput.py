"""Per-backend throughput of the issue-3 scorers, each alone: VQAScore, VLM traits, MUSIQ, PIQE, InsightFace, dlib,
cafe_aesthetic (and DreamSim with ``--dreamsim``).

Each backend is built through the registry, loaded once (load time reported), warmed up on the same images, then
timed on ``--images`` generated images (update + compute). Tiny stand-in models come from ``loratune.tiny``; PIQE and
dlib are the real offline metrics. Images/s on stand-in models measure the pipeline, not a real model's cost.

Run: ``python benchmarks/backend_throughput.py [--images 16] [--size 128] [--dreamsim]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from loratune.config import BackendConfig
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.registry import create_backend
from loratune.modelref import write_stand_in_marker

REPO = Path(__file__).resolve().parents[1]


def tiny_classifier(folder: Path) -> Path:
    """A cafe_aesthetic-shaped image classifier (labels aesthetic / not_aesthetic) with random weights."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label={0: "aesthetic", 1: "not_aesthetic"},
        label2id={"aesthetic": 0, "not_aesthetic": 1},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    write_stand_in_marker(folder, "random cafe_aesthetic-shaped classifier")
    return folder


def images_of(tiny: Any, count: int, size: int) -> list[EvalImage]:
    """The tiny dataset's drawings (faces the stand-in SCRFD can find), resized, with their captions as prompts."""
    paths = sorted(Path(tiny.dataset).rglob("*.png"))
    out = []
    for i in range(count):
        path = paths[i % len(paths)]
        character = path.parent.name.split("_", 1)[1]
        prompt = path.with_suffix(".txt").read_text().strip()
        out.append(EvalImage(path, Image.open(path).convert("RGB").resize((size, size)), prompt, i, character))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dreamsim", type=Path, help="a DreamSim checkpoint folder (see dreamsim_identity) to include")
    args = parser.parse_args()
    torch.manual_seed(0)

    from loratune.tiny import build_tiny_models

    tiny = build_tiny_models(REPO / ".cache" / "tiny-models")
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=args.batch)
    items = images_of(tiny, args.images, args.size)
    refs = References(
        images={
            c: [Image.open(p).convert("RGB") for p in sorted((Path(tiny.references) / c).glob("*.png"))]
            for c in ("lucaboy", "albertoboy")
        },
        traits={"lucaboy": ["curly brown hair", "a teal shirt"], "albertoboy": ["spiky black hair", "a yellow shirt"]},
    )
    with tempfile.TemporaryDirectory() as tmp:
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("alignment", "vqascore", {"model": str(tiny.vlm), "traits": False}),
            ("alignment", "vqascore", {"model": str(tiny.vlm), "traits": True}),
            ("consistency", "traits", {"model": str(tiny.vlm)}),
            ("quality", "musiq", {}),
            ("quality", "piqe", {}),
            ("consistency", "insightface", {"model": str(Path(tiny.arcface).parent), "fallback": None}),
            ("consistency", "insightface", {"model": str(tiny.arcface), "recogniser_only": True, "fallback": None}),
            ("consistency", "dlib_face", {"fallback": None}),
            ("aesthetics", "cafe_aesthetic", {"model": str(tiny_classifier(Path(tmp) / "cafe"))}),
        ]
        if args.dreamsim:
            cases.append(
                ("consistency", "dreamsim", {"model": str(args.dreamsim), "dreamsim_type": "open_clip_vitb32"})
            )
        table = Table(
            title=f"Backend throughput: {len(items)} images of {args.size}x{args.size}, CPU, "
            f"batch {args.batch}, {torch.get_num_threads()} threads"
        )
        for column in ("backend", "options", "load s", "images/s", "stand-in", "value"):
            table.add_column(column, justify="left" if column in ("backend", "options") else "right")
        for axis, name, options in cases:
            started = time.perf_counter()
            backend = create_backend(BackendConfig(name=name, **options), runtime, axis)
            backend.load()
            backend.setup(refs)
            load_s = time.perf_counter() - started
            backend.reset()
            backend.update(items[: args.batch])  # warm-up: kernels are built per input shape on first use
            backend.reset()
            started = time.perf_counter()
            for start in range(0, len(items), args.batch):
                backend.update(items[start : start + args.batch])
            result = backend.compute()
            seconds = time.perf_counter() - started
            shown = {k: v for k, v in options.items() if k != "model" and v is not None}
            table.add_row(
                name,
                ", ".join(f"{k}={v}" for k, v in shown.items()),
                f"{load_s:.2f}",
                f"{len(items) / seconds:.2f}",
                "yes" if result.stand_in else "no",
                "-" if result.value is None else f"{result.value:.3f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
