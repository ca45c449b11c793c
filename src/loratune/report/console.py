"""Terminal tables for scores (rich)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from loratune.evaluation import EvaluationResult


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_scores(result: EvaluationResult, json_path: Path | None = None, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"loratune evaluate — {len(result.samples)} images", title_justify="left")
    for col in ("axis", "backend", "model", "raw", "normalised", "weight", "note"):
        table.add_column(col, overflow="fold")
    for axis, r in result.axes.items():
        note = []
        if r.stand_in:
            note.append("[yellow]stand-in weights[/]")
        if r.value is None:
            note.append(f"[red]missing[/]: {r.missing_reason}")
        table.add_row(axis, r.backend, str(r.model_id or ""), _fmt(r.value), _fmt(result.normalised.get(axis)),
                      _fmt(result.weights_used.get(axis, 0.0), 2), " ".join(note))
    table.add_row("[bold]composite[/]", "", "", "", f"[bold]{_fmt(result.composite)}[/]", "1.00",
                  f"renormalised without {', '.join(result.missing)}" if result.missing else "")
    console.print(table)
    if result.stand_in:
        console.print("[bold yellow]warning:[/] some backends ran on stand-in (random) weights; their scores mean nothing.")
    if json_path is not None:
        console.print(f"wrote {json_path} and {json_path.with_name('per_image.csv')}")


def print_ranking(ranked: list, ranking_path: Path | None = None, console: Console | None = None) -> None:
    """The LoRA ranking of ``loratune evaluate LORAS``: composite and normalised axes, best first."""
    console = console or Console()
    axes = list(ranked[0].result.normalised) if ranked else []
    table = Table(title=f"loratune evaluate — {len(ranked)} LoRA files ranked by composite", title_justify="left")
    for col in ("rank", "LoRA", "epoch", "composite", *axes):
        table.add_column(col, overflow="fold")
    for i, r in enumerate(ranked, 1):
        table.add_row(str(i), r.path.name, "" if r.epoch is None else str(r.epoch), _fmt(r.result.composite),
                      *(_fmt(r.result.normalised.get(a)) for a in axes))
    console.print(table)
    if any(r.result.stand_in for r in ranked):
        console.print("[bold yellow]warning:[/] some backends ran on stand-in (random) weights; their scores mean nothing.")
    if ranking_path is not None:
        console.print(f"wrote {ranking_path} (samples and scores.json per LoRA beside it)")
