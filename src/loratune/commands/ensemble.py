"""``loratune ensemble``: merge LoRA files into one (weighted average, exact rank concatenation, SVD to a rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    loras: Annotated[list[Path], typer.Argument(metavar="LORA", help="kohya-format .safetensors LoRAs to merge")],
    out: Annotated[Path, typer.Option("--out", "-o", help="merged .safetensors file (written atomically)")],
    method: Annotated[str, typer.Option(help="avg (same ranks, parameter average) | concat (exact) | svd (to --rank)")] = "concat",
    weights: Annotated[str | None, typer.Option(help="comma-separated weights, one per LoRA (default 1/n each)")] = None,
    rank: Annotated[int | None, typer.Option(help="svd: target rank (default the largest input rank)")] = None,
) -> None:
    """Merge LoRAs: concat computes exactly the weighted sum of the inputs; svd is its best rank-k approximation."""
    from loratune.errors import LoratuneError
    from loratune.lora.merge import METHODS, merge_files

    if method not in METHODS:
        raise LoratuneError(f"--method: unknown merge method {method!r} (use {', '.join(METHODS)})")
    if rank is not None and method != "svd":
        raise LoratuneError("--rank: only used with --method svd")
    parsed: list[float] | None = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise LoratuneError(f"--weights: expected comma-separated numbers (got {weights!r})") from None
    if out.suffix != ".safetensors":
        raise LoratuneError(f"--out: {out} must end in .safetensors")
    path = merge_files(loras, out, method=method, weights=parsed, rank=rank)  # type: ignore[arg-type]
    print(f"wrote {path} ({method} of {len(loras)} LoRAs)")
