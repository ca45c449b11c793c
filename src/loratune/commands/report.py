"""``loratune report RUN``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN", help="run directory written by `loratune optimize`")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="where to write the page [default: RUN/report.html]")] = None,
    thumb_size: Annotated[int, typer.Option(help="longest side of the inline sample thumbnails, pixels")] = 128,
    all_epochs_for: Annotated[int, typer.Option(help="the best N trials show every epoch; the rest their best one")] = 5,
    max_images: Annotated[int, typer.Option(help="cap on inline thumbnails (keeps huge runs quick to open)")] = 1500,
) -> None:
    """Write one self-contained HTML report of a run (plots, trials, sample grids, audit, models); opens offline."""
    from loratune.report import build_report

    result = build_report(run_dir, out, thumb_size=thumb_size, all_epochs_for=all_epochs_for, max_images=max_images)
    warn = ""
    if result.stand_in:
        warn = (" — on the procedural world: some models world-trained, some random stand-ins (see the banner)"
                if result.world else " — stand-in weights: scores are meaningless")
    typer.echo(f"report: {result.path} ({result.trials} trials, {result.figures} plots, {result.images} images, "
               f"{result.size_bytes / 1e6:.1f} MB){warn}")
