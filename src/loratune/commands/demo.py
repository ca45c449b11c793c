"""``loratune demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the world (base model, dataset, scorers) and the runs")] = Path(
        "demo-run"),
) -> None:
    """Run the whole loop offline on the known-truth world (a tiny base model trained here); writes an HTML report."""
    from rich.console import Console

    from loratune.demo import print_summary, run_demo

    result = run_demo(out, console=Console(stderr=True))
    print_summary(result, Console())
