"""Evaluation throughput: the ``Evaluator`` against the bare model compute it wraps and against a naive loop.

1. **Evaluator**: ``Evaluator.score`` on N generated images (decode once, every backend batched, models loaded once;
   load time reported separately), after one warm-up call on the same images; best of ``--repeat`` runs.
2. **Raw forward passes**: the sum of the wall time spent inside the backends' ``torch.nn.Module`` forward calls
   during an identical ``score`` call (forward hooks on every module, outermost call counted once), i.e. the model
   compute alone. Evaluator seconds / forward seconds is the pipeline's overhead ratio (decoding, preprocessing,
   Python, non-module math; non-torch models such as ONNX count as overhead).
3. **Naive loop**: per image, drop the model cache, build a fresh ``Evaluator`` (loading every model again) and score
   that one image: what a script that calls a scorer per file does. Timed on a few images and reported per image.

4. **Per backend** (the issue-3 scorers, each alone, beside the per-axis table): VQAScore with and without trait
   checks, VLM traits, MUSIQ, PIQE, InsightFace (pack and bare recogniser), dlib, cafe_aesthetic (and DreamSim with
   ``--dreamsim``), each built through the registry on the evaluator's runtime, loaded once (load time reported), warmed
   up on two images, then timed on ``--backend-images`` drawings of the tiny dataset (update + compute). Tiny stand-in
   models from ``loratune.tiny``; PIQE and dlib are the real offline metrics. Images/s on stand-in models measure the
   pipeline, not a real model's cost (MUSIQ's random multi-scale ViT is the slow row on a CPU).

Default: the tiny models' config (``loratune tiny-models``), so it runs offline on a CPU in a few minutes.
Run: ``python benchmarks/eval_throughput.py [--images 16] [--naive-images 2] [--config loratune.yaml] [--size 64]
[--axes consistency,aesthetics,diversity] [--backend-images 8] [--no-backends] [--dreamsim DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image
from rich.columns import Columns
from rich.console import Console
from rich.table import Table

from loratune.config import BackendConfig, Config, load_config
from loratune.evaluation import Evaluator, load_references
from loratune.records import Sample
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.cache import clear_model_cache
from loratune.metrics.registry import AXES, create_backend
from loratune.tiny import TinyModels, build_tiny_models
from loratune.tiny.classifier import build_image_classifier

REPO = Path(__file__).resolve().parents[1]


def make_samples(config: Config, folder: Path, count: int, size: int) -> list[Sample]:
    """``count`` images spread over the config's prompts (several seeds each, so diversity has groups)."""
    prompts = config.sampling.prompts or []
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        prompt = prompts[i % len(prompts)] if prompts else None
        base = rng.integers(0, 256, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 50, (size, size, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.png"
        Image.fromarray(pixels).save(path)
        samples.append(
            Sample(
                path,
                prompt.text if prompt else "a picture",
                seed=i // max(1, len(prompts)),
                character=prompt.character if prompt else None,
            )
        )
    return samples


def _modules(obj: Any, depth: int = 0, seen: set[int] | None = None) -> Iterator[torch.nn.Module]:
    """Every ``nn.Module`` a backend holds, however its wrappers nest them (attributes, lists, dicts, tuples)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        yield obj
        return
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        yield from _modules(child, depth + 1, seen)


@contextmanager
def forward_timer(evaluator: Evaluator) -> Iterator[tuple[dict[str, float], dict[str, float]]]:
    """Per axis: seconds inside module forwards (outermost call only, so nested modules are not counted twice) and
    seconds inside the backend's update/compute calls."""
    totals: dict[str, float] = defaultdict(float)
    walls: dict[str, float] = defaultdict(float)
    state = {"depth": 0, "start": 0.0, "axis": ""}
    handles = []

    def pre(_module: Any, _args: Any) -> None:
        if state["depth"] == 0:
            state["start"] = time.perf_counter()
        state["depth"] += 1

    def post(_module: Any, _args: Any, _out: Any) -> None:
        state["depth"] -= 1
        if state["depth"] == 0:
            totals[state["axis"]] += time.perf_counter() - state["start"]

    originals = {}
    for axis, backend in evaluator.backends.items():
        for root in _modules(backend):
            for module in root.modules():
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post))
        # A model shared by two backends (e.g. one CLIP) is credited to whichever backend is running.
        for name in ("update", "compute"):
            method = getattr(backend, name)
            originals[(axis, name)] = method

            def wrapped(*args: Any, _axis: str = axis, _method: Any = method) -> Any:
                state["axis"] = _axis
                started = time.perf_counter()
                try:
                    return _method(*args)
                finally:
                    walls[_axis] += time.perf_counter() - started

            setattr(backend, name, wrapped)
    try:
        yield totals, walls
    finally:
        for handle in handles:
            handle.remove()
        for (axis, name), method in originals.items():
            setattr(evaluator.backends[axis], name, method)


def tiny_drawings(tiny: TinyModels, count: int, size: int) -> list[EvalImage]:
    """The tiny dataset's drawings (faces the stand-in SCRFD can find), resized, with their captions as prompts."""
    paths = sorted(Path(tiny.dataset).rglob("*.png"))
    out = []
    for i in range(count):
        path = paths[i % len(paths)]
        character = path.parent.name.split("_", 1)[1]
        prompt = path.with_suffix(".txt").read_text().strip()
        out.append(EvalImage(path, Image.open(path).convert("RGB").resize((size, size)), prompt, i, character))
    return out


def backend_table(tiny: TinyModels, runtime: Runtime, count: int, size: int, dreamsim: Path | None) -> Table:
    """Load time and images/s of each issue-3 scorer alone, on the tiny models."""
    items = tiny_drawings(tiny, count, size)
    refs = References(
        images={
            c: [Image.open(p).convert("RGB") for p in sorted((Path(tiny.references) / c).glob("*.png"))]
            for c in ("lucaboy", "albertoboy")
        },
        traits={"lucaboy": ["curly brown hair", "a teal shirt"], "albertoboy": ["spiky black hair", "a yellow shirt"]},
    )
    table = Table(title=f"Per backend, alone: {len(items)} drawings of {size}x{size}, tiny models")
    for column in ("backend", "options", "load s", "images/s", "stand-in", "value"):
        table.add_column(column, justify="left" if column in ("backend", "options") else "right")
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
            ("aesthetics", "cafe_aesthetic", {"model": str(build_image_classifier(Path(tmp) / "cafe"))}),
        ]
        if dreamsim:
            cases.append(("consistency", "dreamsim", {"model": str(dreamsim), "dreamsim_type": "open_clip_vitb32"}))
        for axis, name, options in cases:
            started = time.perf_counter()
            backend = create_backend(BackendConfig(name=name, **options), runtime, axis)
            backend.load()
            backend.setup(refs)
            load_s = time.perf_counter() - started
            backend.reset()
            backend.update(items[:2])  # warm-up: kernels are built per input shape on first use
            backend.reset()
            started = time.perf_counter()
            for start in range(0, len(items), runtime.batch_size):
                backend.update(items[start : start + runtime.batch_size])
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
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a loratune.yaml (default: the tiny models' config)")
    parser.add_argument("--images", type=int, default=16, help="images scored by the evaluator")
    parser.add_argument("--naive-images", type=int, default=2, help="images scored by the reload-per-image loop")
    parser.add_argument("--size", type=int, default=64, help="side of the generated test images in pixels")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of each kind (the fastest is reported)")
    parser.add_argument("--axes", help="comma-separated axes to keep (default: every configured backend)")
    parser.add_argument("--backend-images", type=int, default=8, help="drawings each backend alone is timed on")
    parser.add_argument("--backend-size", type=int, default=128, help="side of those drawings in pixels")
    parser.add_argument("--no-backends", action="store_true", help="skip the per-backend table")
    parser.add_argument("--dreamsim", type=Path, help="a DreamSim checkpoint folder (see dreamsim_identity) to include")
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:  # piped into a file or CI log: room for the full column names, tables side by side
        console.width = 200
    torch.manual_seed(0)

    # The tiny models: the default config, and the per-backend rows (which always run on stand-ins).
    tiny = build_tiny_models(REPO / ".cache" / "tiny-models") if args.config is None or not args.no_backends else None
    if args.config is None:
        assert tiny is not None
        args.config = tiny.config
    keep = set(args.axes.split(",")) if args.axes else set(AXES)
    config = load_config(args.config, [f"evaluation.backends.{axis}=null" for axis in AXES if axis not in keep])

    with tempfile.TemporaryDirectory() as tmp:
        samples = make_samples(config, Path(tmp), args.images, args.size)
        references = load_references(config)

        clear_model_cache()
        started = time.perf_counter()
        evaluator = Evaluator(config, references=references, show_progress=False)
        evaluator.load()
        load_seconds = time.perf_counter() - started
        evaluator.score(samples)  # warm-up: CPU conv kernels are built per input shape on first use (seconds)

        # Best of --repeat runs each: on a shared machine the minimum is the least disturbed measurement.
        eval_seconds = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            result = evaluator.score(samples)
            eval_seconds = min(eval_seconds, time.perf_counter() - started)

        forward_seconds = float("inf")
        for _ in range(args.repeat):
            with forward_timer(evaluator) as (axis_forwards, axis_walls):
                evaluator.score(samples)
            if sum(axis_forwards.values()) < forward_seconds:
                forward_seconds, per_axis, backend_walls = sum(axis_forwards.values()), axis_forwards, axis_walls

        naive = samples[: max(1, min(args.naive_images, len(samples)))]
        started = time.perf_counter()
        for sample in naive:
            clear_model_cache()
            fresh = Evaluator(config, references=load_references(config), show_progress=False)
            fresh.score([sample])
        naive_seconds = time.perf_counter() - started

    n = len(samples)
    table = Table(
        title=f"Evaluation throughput: {n} images of {args.size}x{args.size}, device {evaluator.runtime.device}, "
        f"batch {evaluator.runtime.batch_size}, {torch.get_num_threads()} threads"
    )
    table.add_column("what")
    table.add_column("images", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("images/s", justify="right")
    table.add_column("vs evaluator", justify="right")
    eval_rate = n / eval_seconds
    rows = [
        ("Evaluator.score (models loaded once)", n, eval_seconds),
        ("raw model forward passes (sum)", n, forward_seconds),
        ("naive loop: reload models per image", len(naive), naive_seconds),
    ]
    for label, count, seconds in rows:
        rate = count / seconds if seconds > 0 else float("inf")
        table.add_row(label, str(count), f"{seconds:.2f}", f"{rate:.2f}", f"{rate / eval_rate:.2f}x")
    console.print(table)
    ratio = eval_seconds / forward_seconds if forward_seconds > 0 else float("nan")
    console.print(
        f"overhead ratio (evaluator / raw forwards): [bold]{ratio:.2f}[/bold]   "
        f"one-off model load: {load_seconds:.2f} s   "
        f"naive loop is {eval_rate / (len(naive) / naive_seconds):.0f}x slower per image"
    )

    axes = Table(title="Per backend, during one Evaluator.score: time in update/compute and inside model forwards")
    axes.add_column("axis")
    axes.add_column("backend")
    axes.add_column("backend s", justify="right")
    axes.add_column("forward s", justify="right")
    axes.add_column("overhead", justify="right")
    axes.add_column("share of forwards", justify="right")
    axes.add_column("stand-in", justify="center")
    for axis, backend in evaluator.backends.items():
        seconds = per_axis.get(axis, 0.0)
        wall = backend_walls.get(axis, 0.0)
        axes.add_row(
            axis,
            backend.spec.name,
            f"{wall:.3f}",
            f"{seconds:.3f}",
            f"{wall / seconds:.2f}x" if seconds else "-",
            f"{seconds / forward_seconds:.0%}" if forward_seconds else "-",
            "yes" if result.axes[axis].stand_in else "no",
        )
    if tiny is None:
        console.print(axes)
        return
    clear_model_cache()  # each backend's load time below includes its own models
    per_backend = backend_table(tiny, evaluator.runtime, args.backend_images, args.backend_size, args.dreamsim)
    console.print(Columns([axes, per_backend], padding=(0, 4)))


if __name__ == "__main__":
    main()
