"""The audit's terminal output: a summary line and a table of flagged files (rich)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loratune.audit.run import AuditResult


def print_audit(result: AuditResult, console: Console | None = None) -> None:
    console = console or Console()
    data, summary = result.data, result.data["summary"]
    console.print(
        f"[bold]loratune audit[/] {escape(data['dataset'])} ({data['layout']} layout): {data['images']} images, "
        f"{summary['flagged_images']} flagged, {summary['near_duplicate_pairs']} near-duplicate pair(s), "
        f"{summary['caption_problems']} caption problem(s)"
    )
    if result.flagged:
        table = Table(title_justify="left", show_lines=False)
        table.add_column("file", overflow="fold")
        table.add_column("problems", overflow="fold")
        for row in result.flagged:
            table.add_row(escape(row["file"]), escape("; ".join(row["problems"])))
        console.print(table)
    else:
        console.print("[green]nothing flagged[/]")
    for warning in data["warnings"]:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    if result.path is not None:
        console.print(f"wrote {escape(str(Path(result.path)))}")
