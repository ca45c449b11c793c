"""One module per CLI command; each defines ``command`` with typer annotations and imports heavy code lazily."""

from __future__ import annotations

import importlib

import typer

# (command name, module): order is the order of ``loratune --help``.
COMMANDS = [
    ("evaluate", "evaluate"),
    ("audit", "audit"),
    ("train", "train"),
    ("optimize", "optimize"),
    ("ensemble", "ensemble"),
    ("report", "report"),
    ("dashboard", "dashboard"),
    ("demo", "demo"),
    ("tiny-models", "tiny_models"),
    ("world", "world"),
]


def register_all(app: typer.Typer) -> None:
    for name, module in COMMANDS:
        mod = importlib.import_module(f"loratune.commands.{module}")
        app.command(name=name, help=mod.command.__doc__)(mod.command)
