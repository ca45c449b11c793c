"""``loratune tiny-models OUT_DIR``: build the tiny stand-in models, the procedural dataset and a config using them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="folder to write the models, dataset and loratune.yaml into")],
    family: Annotated[str, typer.Option("--family", help="the model family whose config the `config:` line names "
                                                         "(every family's pipeline and config are built)")] = "sd15",
    force: Annotated[bool, typer.Option("--force", help="rebuild even when a complete build is there")] = False,
) -> None:
    """Build tiny random-weight models (a pipeline per model family, CLIP, aesthetic MLP, ArcFace, InternVL) and a
    dataset, offline."""
    import time

    from loratune.families import get_family

    get_family(family)  # an unknown family is an error before minutes of building

    from rich.console import Console
    from rich.table import Table

    from loratune.tiny import build_tiny_models

    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("building tiny models", spinner="dots") as status:

        def progress(what: str) -> None:
            status.update(f"building: {what}")
            console.log(what)

        models = build_tiny_models(out_dir, force=force, progress=progress)
    console.log(f"ready in {time.perf_counter() - start:.1f} s (random weights: scores from these models mean nothing)")
    table = Table(show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("path")
    for name, path in models.as_dict().items():
        if name != "root":
            table.add_row(name, path)
    Console().print(table)
    # Plain lines (no wrapping) so scripts can pick the configs out: `config:` is the chosen family's.
    typer.echo(f"config: {models.configs[family]}")
    for name, path in models.configs.items():
        typer.echo(f"config ({get_family(name).label}): {path}")
