"""Building the report file: read the run, draw the figures, assemble the page, write it atomically."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from loratune import chatter
from loratune.errors import LoratuneError


@dataclass
class ReportResult:
    path: Path
    trials: int
    figures: int
    images: int
    stand_in: bool
    size_bytes: int
    seconds: float
    world: bool = False  # the run is on ``loratune world``'s folder: world-trained models beside the stand-ins


def build_report(run_dir: str | Path, out: str | Path | None = None, thumb_size: int = 128,
                 all_epochs_for: int = 5, max_images: int = 1500) -> ReportResult:
    """Write ``RUN/report.html`` (or ``out``) for the run in ``run_dir`` and return what went into it.

    ``all_epochs_for``: how many of the best trials show every epoch's samples (the others show their best epoch);
    ``max_images``: a cap on inline thumbnails, so a very large run still gives a file a browser opens quickly.
    """
    from plotly.offline import get_plotlyjs

    from loratune.atomic import atomic_write_text
    from loratune.report.figures import build_figures
    from loratune.report.page import render_page
    from loratune.report.rundir import load_run

    if thumb_size < 16 or thumb_size > 1024:
        raise LoratuneError(f"--thumb-size: must be between 16 and 1024 pixels (got {thumb_size})")
    if max_images < 0:
        raise LoratuneError(f"--max-images: must be >= 0 (got {max_images})")
    if out is not None and Path(out).is_dir():
        raise LoratuneError(f"--out: {out} is a directory; give the HTML file to write (e.g. {Path(out) / 'report.html'})")
    start = time.perf_counter()
    run = load_run(run_dir)
    if not chatter.verbose():  # optuna's plots log "no complete trials" and the like at WARNING: not the reader's news
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
    figures = build_figures(run)
    target = Path(out) if out is not None else run.run_dir / "report.html"
    html = render_page(run, figures, get_plotlyjs(), thumb=thumb_size, all_epochs_for=all_epochs_for,
                       max_images=max_images, page_dir=target.parent)
    atomic_write_text(target, html)
    return ReportResult(
        path=target, trials=len(run.trials), figures=sum(f.html is not None for f in figures),
        images=html.count('class="sample"'), stand_in=run.any_stand_in, size_bytes=len(html.encode("utf-8")),
        seconds=time.perf_counter() - start, world=bool(run.world_notes),
    )
