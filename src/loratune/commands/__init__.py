"""One module per CLI command; each defines ``command`` with typer annotations and imports heavy code lazily."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

import typer

# (command name, module, one-line summary for ``loratune --help``): order is the order of the listing. The summary
# is short enough for an 80-column terminal, so click never cuts it mid-sentence.
COMMANDS = [
    ("evaluate", "evaluate", "Score images, or sample and rank LoRA files."),
    ("audit", "audit", "Check a training set before training."),
    ("caption", "caption", "Write missing captions: trigger first, then the scene."),
    ("train", "train", "Train one LoRA and sample every checkpoint."),
    ("optimize", "optimize", "Search hyperparameters; the best LoRA lands in RUN/best."),
    ("ensemble", "ensemble", "Merge LoRA files into one."),
    ("report", "report", "Write a run's self-contained HTML report."),
    ("dashboard", "dashboard", "Serve optuna-dashboard for a run (loopback only)."),
    ("calibrate", "calibrate", "Teach the ranking your taste: which sample grid is better?"),
    ("demo", "demo", "Run the whole loop offline on tiny models."),
    ("tiny-models", "tiny_models", "Build the tiny stand-in models and dataset."),
    ("world", "world", "Write the known-truth world: base model, dataset, config."),
]


def register_all(app: typer.Typer) -> None:
    for name, module, summary in COMMANDS:
        mod = importlib.import_module(f"loratune.commands.{module}")
        app.command(name=name, help=mod.command.__doc__, short_help=summary)(interruptible(mod.command))


def interruptible(command: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C inside a command: one line and exit 130 (typer would otherwise exit 130 without a word).

    Commands with more to say (where the work is, how to resume) catch the interrupt themselves first.
    """

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            print("loratune: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return run
