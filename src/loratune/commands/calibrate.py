"""``loratune calibrate RUN``: teach the composite your taste on a local page; ``--apply`` re-ranks the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="run directory written by loratune optimize")],
    apply: Annotated[bool, typer.Option("--apply", help="re-rank RUN with the calibrated weights (no page)")] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="port on 127.0.0.1 (0: any free one)")] = 8765,
    who: Annotated[str | None, typer.Option(help="name recorded with each answer [default: your login]")] = None,
) -> None:
    """Show pairs of checkpoints' samples side by side and ask which is better (keys: left, right, down = can't
    tell); the weights are refitted to your answers as you go (RUN/preferences.jsonl; stop and resume any time).
    --apply rewrites the ranking, RUN/best and the report with the fitted weights and writes an evaluation.weights
    snippet (RUN/calibrated-weights.yaml) for the next study's config."""
    if apply:
        from loratune.calibrate.apply import apply_calibration

        done = apply_calibration(run)
        shown = ", ".join(f"{a} {w:.2f}" for a, w in done.weights.items())
        change = "the ranking changed" if done.moved else "the ranking is unchanged"
        typer.echo(f"calibrate: {done.answers} answers -> weights {shown}; {change}; RUN/best is trial "
                   f"#{done.best['trial']} epoch {done.best['epoch']}; report: {done.report}")
        return
    import getpass

    from loratune.calibrate.server import serve
    from loratune.calibrate.session import Session

    session = Session(run, who or getpass.getuser())
    try:
        serve(session, port, typer.echo)
    except KeyboardInterrupt:
        # Nothing is lost on Ctrl-C (each answer was saved when given): say where the answers are, exit cleanly.
        typer.echo(f"calibrate: stopped; {len(session.answers)} answers in {session.path} "
                   f"(`loratune calibrate {run} --apply` re-ranks the run)")
