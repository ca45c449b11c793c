"""Terminal tables for scores (rich)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.table import Table

from loratune.world.folder import find_world

if TYPE_CHECKING:
    from loratune.evaluation import EvaluationResult
    from loratune.train.records import TrainResult


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def learning_lines(result: EvaluationResult) -> list[str]:
    """Copy risk and CMMD, beside the axes (neither is one): one line each where measured."""
    lines = []
    risk = result.copy_risk
    if risk is not None and risk.rate is not None:
        copies = sum(s >= risk.threshold for s in risk.similarities)
        over = risk.rate > risk.max_rate
        lines.append(f"{'[bold red]' if over else ''}copy risk{'[/]' if over else ''}: {copies}/{len(risk.similarities)} "
                     f"images at cosine >= {risk.threshold:.2f} to a training image (rate {risk.rate:.2f}, "
                     f"max {risk.max_rate:.2f}{', over: copying' if over else ''}; {risk.embedder})")
    if result.cmmd is not None:
        lines.append(f"CMMD to the {result.cmmd['held_out_images']} held-out images: {result.cmmd['value']:.3f} "
                     "(lower is closer)")
    return lines


def print_scores(result: EvaluationResult, json_path: Path | None = None, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"loratune evaluate — {len(result.samples)} images", title_justify="left")
    for col in ("axis", "backend", "model", "raw", "normalised", "weight", "note"):
        table.add_column(col, overflow="fold")
    for axis, r in result.axes.items():
        note = []
        if r.stand_in:
            note.append("[yellow]stand-in weights[/]")
        elif find_world(r.model_id):
            note.append("world-trained")
        if r.value is None:
            note.append(f"[red]missing[/]: {r.missing_reason}")
        table.add_row(axis, r.backend, str(r.model_id or ""), _fmt(r.value), _fmt(result.normalised.get(axis)),
                      _fmt(result.weights_used.get(axis, 0.0), 2), " ".join(note))
    note = []
    if result.composite_se is not None:
        note.append(f"± {result.composite_se:.3f} (standard error)")
    if result.missing:
        note.append(f"renormalised without {', '.join(result.missing)}")
    table.add_row("[bold]composite[/]", "", "", "", f"[bold]{_fmt(result.composite)}[/]", "1.00", "; ".join(note))
    console.print(table)
    for line in learning_lines(result):
        console.print(line, soft_wrap=True)
    if result.stand_in:
        console.print("[bold yellow]warning:[/] some backends ran on stand-in (random) weights; their scores mean nothing.")
    if any(find_world(r.model_id) for r in result.axes.values()):
        console.print("note: world-trained backends were trained by loratune on its procedural world; their scores "
                      "mean something about that world only.")
    if json_path is not None:
        console.print(f"wrote {json_path} and {json_path.with_name('per_image.csv')}")


def _ranking_table(ranked: list, axes: list[str], names: bool) -> Table:
    table = Table(title=f"loratune evaluate — {len(ranked)} LoRA files ranked by composite", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("rank", justify="right")
    if names:
        table.add_column("LoRA", no_wrap=True)
    table.add_column("epoch", justify="right")
    for col in ("composite", *axes):
        table.add_column(col, justify="right", no_wrap=True)
    for i, r in enumerate(ranked, 1):
        cells = [str(i), *([r.path.name] if names else []), "" if r.epoch is None else str(r.epoch)]
        table.add_row(*cells, _fmt(r.result.composite), *(_fmt(r.result.normalised.get(a)) for a in axes))
    return table


def print_ranking(ranked: list, ranking_path: Path | None = None, console: Console | None = None) -> None:
    """The LoRA ranking of ``loratune evaluate LORAS``: composite and normalised axes, best first.

    A file name is never broken across lines: when the names do not fit beside the scores (an 80-column terminal,
    kohya's long per-epoch names), they are listed by rank under the table instead.
    """
    from rich.measure import Measurement

    console = console or Console()
    axes = list(ranked[0].result.normalised) if ranked else []
    table = _ranking_table(ranked, axes, names=True)
    if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
        console.print(table)
    else:
        console.print(_ranking_table(ranked, axes, names=False))
        console.print("[bold]rank  LoRA file")
        for i, r in enumerate(ranked, 1):
            console.print(f"{i:>4}  {r.path.name}", soft_wrap=True)
    spreads = sorted(r.result.composite_se for r in ranked if r.result.composite_se is not None)
    if spreads:
        typical = spreads[len(spreads) // 2]
        console.print(f"composite's standard error over the images: {typical:.3f} (median); two LoRAs closer than "
                      f"about {typical * 2 ** 0.5:.3f} are not told apart by these samples")
    if any(r.result.stand_in for r in ranked):
        console.print("[bold yellow]warning:[/] some backends ran on stand-in (random) weights; their scores mean nothing.")
    if ranking_path is not None:
        console.print(f"wrote {ranking_path} (samples and scores.json per LoRA beside it)", soft_wrap=True)


def print_skipped(skipped: list, console: Console | None = None) -> None:
    """The LoRA files a ranking left out, each with its reason (one line per file, never cut)."""
    if not skipped:
        return
    console = console or Console()
    console.print(f"[bold yellow]skipped {len(skipped)} file{'s' * (len(skipped) != 1)}[/] (--strict stops instead):")
    for item in skipped:
        console.print(f"  {item.reason}", soft_wrap=True, markup=False, highlight=False)


def print_train_summary(out_dir: Path, result: TrainResult, console: Console | None = None) -> None:
    """``loratune train``'s closing table: one row per checkpoint, with paths that are never cut.

    Paths are shown relative to the run folder (named once above the table, wrapping whole when long), so the table
    fits 80 columns; a path that still does not fit wraps onto the next line rather than losing its end.
    """
    console = console or Console()
    loss = "–" if result.final_loss is None else f"{result.final_loss:.4f}"
    console.print(f"[bold]trained[/] {result.steps} steps, {result.epochs} epochs, final loss {loss}")
    console.print(f"run folder: {out_dir}", soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for column in ("epoch", "step", "rank", "res", "samples"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("kohya file", overflow="fold")
    for c in result.checkpoints:
        path = Path(c.kohya_path)
        shown = path.relative_to(out_dir) if path.is_relative_to(out_dir) else path
        table.add_row(str(c.epoch), str(c.step), str(c.rank), str(c.resolution), str(len(c.samples)), str(shown))
    console.print(table)
