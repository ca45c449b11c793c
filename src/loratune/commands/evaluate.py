"""``loratune evaluate``: score generated images — or sample and rank LoRA files — on the five axes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

# Where rankings went before they moved beside the input; its images are ours, not the user's.
OLD_OUTPUT = "loratune-eval"


def is_lora_input(path: Path) -> bool:
    """A ``.safetensors`` file, or a folder holding LoRA files and no images: rank LoRAs instead of scoring images."""
    from loratune.images import is_image_file

    if path.is_file():
        return path.suffix == ".safetensors"
    if path.is_dir():
        entries = [p for p in path.rglob("*") if OLD_OUTPUT not in p.relative_to(path).parts]
        return any(p.suffix == ".safetensors" for p in entries) and not any(is_image_file(p) for p in entries)
    return False


def ranking_folder(loras: Path) -> Path:
    """The default output of ranking ``loras``: beside it, never inside, so a second run sees only LoRAs."""
    return loras.parent / f"{loras.name if loras.is_dir() else loras.stem}-loratune-eval"


def command(
    images: Annotated[Path, typer.Argument(metavar="IMAGES", help="folder of generated images (or one image), or LoRA file(s) to rank")],
    prompts: Annotated[Path | None, typer.Option(help="JSONL/CSV manifest: file, prompt[, seed, character]")] = None,
    references: Annotated[Path | None, typer.Option(help="reference images (one sub-folder per character, or flat)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="loratune YAML config")] = None,
    out: Annotated[Path | None, typer.Option(help="where scores.json and per_image.csv go (default: IMAGES; for LoRAs, a folder beside them)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a config key, e.g. evaluation.batch_size=4")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print scores.json (or ranking.json) to stdout")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="ranking LoRAs: stop at the first unreadable file instead of skipping it")] = False,
) -> None:
    """Score generated images: prompt alignment, character consistency, aesthetics, technical quality, diversity.

    Given LoRA files or a folder of them (e.g. kohya's per-epoch outputs, either format), samples each on the
    configured base model with the config's prompts and seeds, scores each set and ranks the LoRAs by composite.
    Files that cannot be read, or do not fit the base model, are listed with their reason and left out (--strict
    stops at the first instead).
    """
    from loratune.config import load_config
    from loratune.errors import LoratuneError
    from loratune.evaluation import check_models
    from loratune.report.console import print_scores

    cfg = load_config(config, set_ or [])
    if not images.exists():
        raise LoratuneError(f"images folder not found: {images}")
    lora_input = is_lora_input(images)
    check_models(cfg, base=lora_input)
    if lora_input:
        from loratune.report.console import print_ranking, print_skipped
        from loratune.sampling import SkippedLora, find_lora_files, rank_loras

        skipped: list[SkippedLora] | None = None if strict else []
        if strict:
            find_lora_files([images])  # bad metadata stops us before minutes of sampling
        target = out if out is not None else ranking_folder(images)
        ranked = rank_loras(cfg, [images], target, references=references, show_progress=not as_json, skipped=skipped)
        if as_json:
            print((target / "ranking.json").read_text())
        else:
            print_ranking(ranked, target / "ranking.json")
            print_skipped(skipped or [])
        return

    from loratune.evaluation import evaluate_images

    result, json_path = evaluate_images(images, cfg, prompts=prompts, references=references, out_dir=out,
                                        show_progress=not as_json)
    if as_json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print_scores(result, json_path)
