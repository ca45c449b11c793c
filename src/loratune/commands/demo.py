"""``loratune demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the tiny models, the dataset and the runs")] = Path(
        "demo-run"),
) -> None:
    """Run the whole loop offline on tiny models and a generated two-character dataset; writes an HTML report."""
    from rich.console import Console

    from loratune.demo import print_summary, run_demo

    result = run_demo(out, console=Console(stderr=True))
    print_summary(result, Console())
