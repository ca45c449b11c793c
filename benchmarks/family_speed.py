"""Training speed per model family: loratune's trainer on each family's tiny model, side by side with SD1.5.

Every family trains the same LoRA recipe (rank 4, AdamW, fp32, 64 px, cached latents and text embeddings) on the
same images (the tiny dataset, one repeat) with its own default target modules; Flux also with SD's attention-only
names (``to_q``, ``to_k``, ``to_v``, ``to_out.0``), the closest like-for-like. Each variant runs in its own process
(peak RSS is its own); steps/s counts only steps after the first epoch (loading and cache filling excluded). The
variants run interleaved for several rounds; the table shows the best run (the least disturbed, used for the ratio)
and the median. The tiny models are toy-width: the ratio says what the family's code path costs per step (packing,
two text encoders, joint attention over text and image tokens), not what the real models cost on a GPU.

    .venv/bin/python benchmarks/family_speed.py [--steps 20] [--rounds 3] [--batch-size 4] [--tiny-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

from train_speed import interleaved_runs, one_repeat_dataset, parse_args, run_loratune, warmup_steps

# name -> (family, train.target_modules override or None for the family's default set)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "sd15": ("sd15", None),
    "sdxl": ("sdxl", None),
    "flux": ("flux", None),
    "flux, attention only": ("flux", "[to_q, to_k, to_v, to_out.0]"),
}


def child(args: argparse.Namespace) -> None:
    import tempfile

    from safetensors.torch import load_file

    from loratune.tiny.factory import config_name

    tiny = Path(args.tiny_dir)
    family, targets = VARIANTS[args.variant]
    extra = [f"train.target_modules={targets}"] if targets else []
    with tempfile.TemporaryDirectory(prefix="loratune-bench-") as tmp:
        dataset = one_repeat_dataset(tiny / "dataset" / "train", Path(tmp) / "dataset")
        out = Path(tmp) / "out"
        times = run_loratune(tiny / config_name(family), dataset, args.steps, args.batch_size, True, out, extra)
        lora = next(out.glob("checkpoints/*/pytorch_lora_weights.safetensors"))
        parameters = sum(t.numel() for t in load_file(str(lora)).values())
    measured = times[warmup_steps(tiny, args.batch_size):]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": args.variant, "steps_per_s": len(measured) / sum(measured), "peak_rss_mb": rss_mb,
                      "lora_parameters": parameters}))


def main() -> None:
    args = parse_args(__doc__, list(VARIANTS))
    if args.variant:
        child(args)
        return

    import statistics

    from rich.console import Console
    from rich.table import Table

    runs = interleaved_runs(__file__, list(VARIANTS), args)
    speed = {v: sorted(r["steps_per_s"] for r in rs) for v, rs in runs.items()}
    table = Table(
        title=f"LoRA training per family on the tiny models, 64 px, batch {args.batch_size}, rank 4, cached latents and "
        f"text: best and median of {args.rounds} runs x {args.steps} steps ({os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    for column in ("family (targets)", "LoRA params", "best steps/s", "median", "vs sd15", "peak RSS (MB)"):
        table.add_column(column, justify="left" if column.startswith("family") else "right")
    for variant in VARIANTS:
        best = speed[variant][-1]
        table.add_row(
            variant,
            f"{runs[variant][0]['lora_parameters']:,}",
            f"{best:.2f}",
            f"{statistics.median(speed[variant]):.2f}",
            f"{best / speed['sd15'][-1]:.2f}x",
            f"{max(r['peak_rss_mb'] for r in runs[variant]):.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
