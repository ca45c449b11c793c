"""``loratune caption``: write a training set's missing captions, the trigger words first."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    dataset: Annotated[
        Path | None,
        typer.Argument(metavar="DATASET", help="kohya-layout folder (N_name/ sub-folders) or plain folder; default: dataset.path"),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="loratune YAML config (captioner, characters)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a config key, e.g. caption.backend=wd14")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace existing captions too")] = False,
    trigger: Annotated[str | None, typer.Option(help="trigger words for every image (default: the character's token, or the kohya folder's words)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the captions without writing them")] = False,
) -> None:
    """Caption the images that have none: the trigger words first, then pose, framing, background and clothing —
    never the character's traits, so the look binds to the trigger.

    The captioner is the config's `caption.backend`: `vlm` (the VQAScore model), `florence2` or `wd14` (tags).
    Existing captions are kept unless --overwrite.
    """
    from rich.console import Console

    from loratune.caption.console import print_captions
    from loratune.caption.run import caption_dataset
    from loratune.config import load_config
    from loratune.errors import LoratuneError

    cfg = load_config(config, set_ or [])
    folder = dataset if dataset is not None else (Path(cfg.dataset.path) if cfg.dataset.path else None)
    if folder is None:
        raise LoratuneError("no dataset: give DATASET or set dataset.path in the config")
    console = Console(stderr=True)
    with console.status("captioning", spinner="dots") as status:
        result = caption_dataset(folder, cfg, overwrite=overwrite, trigger=trigger, dry_run=dry_run,
                                 progress=lambda done, total: status.update(f"captioning: {done}/{total} images"))
    print_captions(result)
