"""``loratune audit``: check a training set before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def command(
    dataset: Annotated[
        Path | None,
        typer.Argument(metavar="DATASET", help="kohya-layout folder (N_name/ sub-folders) or plain folder; default: dataset.path"),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="loratune YAML config (backends, characters)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="folder for audit.json (default: the dataset folder)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a config key, e.g. evaluation.device=cpu")
    ] = None,
    alignment: Annotated[bool, typer.Option(show_default=False, help="score captions against images with the alignment backend (on by default)")] = True,
    faces: Annotated[bool, typer.Option(show_default=False, help="detect faces (on by default)")] = True,
    embeddings: Annotated[
        bool, typer.Option(show_default=False, help="embed images with the consistency backend for duplicates and diversity (on by default)")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print audit.json to stdout instead of a table")] = False,
) -> None:
    """Audit a training set: captions, near-duplicates, quality, blur, caption↔image alignment, diversity, faces."""
    from loratune.audit import AuditOptions, run_audit
    from loratune.config import load_config
    from loratune.errors import LoratuneError

    cfg = load_config(config, set_ or [])
    folder = dataset if dataset is not None else (Path(cfg.dataset.path) if cfg.dataset.path else None)
    if folder is None:
        raise LoratuneError("no dataset: give DATASET or set dataset.path in the config")
    options = AuditOptions(alignment=alignment, faces=faces, embeddings=embeddings)
    result = run_audit(folder, cfg, options, out_dir=out if out is not None else folder)
    if as_json:
        print(json.dumps(result.data, indent=2, default=str))
    else:
        from loratune.audit.console import print_audit

        print_audit(result)
