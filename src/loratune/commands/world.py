"""``loratune world DIR``: the known-truth world (pre-trained base model, target-character dataset, config)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    out_dir: Annotated[Path, typer.Argument(metavar="DIR", help="folder to write the world into (new, empty, or an earlier world)")],
    target: Annotated[str, typer.Option(help="target character the LoRA learns: lucaboy or albertoboy")] = "lucaboy",
) -> None:
    """Write the known-truth world: a world-trained tiny base model, a dataset of a target character, a config."""
    from loratune.world.folder import write_world

    world = write_world(out_dir, target=target)
    typer.echo(f"base model: {world.base}")
    typer.echo(f"dataset: {world.dataset}")
    typer.echo(f"references: {world.references}")
    typer.echo(f"config: {world.config}")
