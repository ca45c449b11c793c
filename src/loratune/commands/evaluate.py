"""``loratune evaluate``: score generated images on the five axes and the composite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    images: Annotated[Path, typer.Argument(help="folder of generated images (or one image)")],
    prompts: Annotated[Optional[Path], typer.Option(help="JSONL/CSV manifest: file, prompt[, seed, character]")] = None,
    references: Annotated[Optional[Path], typer.Option(help="reference images (one sub-folder per character, or flat)")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="loratune YAML config")] = None,
    out: Annotated[Optional[Path], typer.Option(help="where scores.json and per_image.csv go (default: IMAGES)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a config key, e.g. evaluation.batch_size=4")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print scores.json to stdout instead of a table")] = False,
) -> None:
    """Score generated images: prompt alignment, character consistency, aesthetics, technical quality, diversity."""
    from loratune.config import load_config
    from loratune.evaluation import evaluate_images
    from loratune.report.console import print_scores

    cfg = load_config(config, set_ or [])
    result, json_path = evaluate_images(images, cfg, prompts=prompts, references=references, out_dir=out,
                                        show_progress=not as_json)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print_scores(result, json_path)
