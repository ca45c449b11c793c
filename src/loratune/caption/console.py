"""The terminal table of ``loratune caption``: what was written where, and what was kept."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loratune.caption.run import CaptionResult

STYLE = {"written": "green", "overwritten": "yellow", "would write": "cyan", "kept": "dim"}


def print_captions(result: CaptionResult, console: Console | None = None) -> None:
    console = console or Console()
    stand_in = " [yellow](stand-in weights)[/]" if result.stand_in else ""
    table = Table(title=f"loratune caption — {escape(result.backend)} {escape(result.model)}{stand_in}",
                  title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("", no_wrap=True)
    table.add_column("caption", overflow="fold", ratio=1)
    for row in result.rows:
        text = escape(row.caption or "") + (f" [dim]({escape(row.note)})[/]" if row.note else "")
        table.add_row(escape(row.file), f"[{STYLE[row.action]}]{row.action}[/]", text)
    console.print(table)
    kept = sum(r.action == "kept" for r in result.rows)
    verb = "would write" if any(r.action == "would write" for r in result.rows) else "wrote"
    count = sum(r.action != "kept" for r in result.rows)
    console.print(f"{verb} {count} caption{'s' * (count != 1)}, kept {kept} (--overwrite replaces them) in "
                  f"{escape(str(result.dataset))}", soft_wrap=True)
    if result.stand_in:
        console.print("[bold yellow]warning:[/] the captioner ran on stand-in (random) weights: its captions mean "
                      "nothing.")
