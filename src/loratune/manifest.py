"""Which prompt (seed, character) produced each image: a JSONL/CSV manifest or sidecar ``.txt`` files.

Manifest rows name a ``file`` (relative to the manifest's folder, or a bare file name) and a ``prompt``; ``seed`` and
``character`` are optional. ``samples.jsonl`` written by loratune's sampler is such a manifest, and an images folder
holding one is read without ``--prompts``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError

SAMPLES_MANIFEST = "samples.jsonl"


@dataclass(frozen=True)
class PromptInfo:
    prompt: str | None = None
    seed: int | None = None
    character: str | None = None


def _row_to_info(row: dict, where: str) -> tuple[str, PromptInfo]:
    file = row.get("file") or row.get("image") or row.get("path")
    if not file or not isinstance(file, str):
        raise LoratuneError(f"{where}: missing 'file' column")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise LoratuneError(f"{where}: 'prompt' must be text (got {prompt!r})")
    seed = row.get("seed")
    if seed in ("", None):
        seed = None
    else:
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise LoratuneError(f"{where}: 'seed' must be an integer (got {seed!r})") from None
    character = row.get("character") or None
    return file, PromptInfo(prompt.strip() if prompt else None, seed, character)


def read_manifest(path: str | Path) -> dict[str, PromptInfo]:
    """Read a ``.jsonl`` or ``.csv`` manifest into {file as written: PromptInfo}."""
    path = Path(path)
    if not path.is_file():
        raise LoratuneError(f"prompts file not found: {path}")
    rows: dict[str, PromptInfo] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LoratuneError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LoratuneError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise LoratuneError(f"{path}:{lineno}: expected an object with 'file' and 'prompt'")
            file, info = _row_to_info(row, f"{path}:{lineno}")
            rows[file] = info
    elif path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames or not {"file", "prompt"} <= {f.strip() for f in reader.fieldnames}:
            raise LoratuneError(f"{path}: CSV needs a header with at least 'file' and 'prompt' columns")
        for lineno, row in enumerate(reader, 2):
            file, info = _row_to_info({k.strip(): (v or "").strip() for k, v in row.items() if k}, f"{path}:{lineno}")
            rows[file] = info
    else:
        raise LoratuneError(f"{path}: prompts file must be .jsonl or .csv")
    if not rows:
        raise LoratuneError(f"{path}: no rows")
    return rows


def match_prompts(images: list[Path], manifest_path: str | Path | None) -> dict[Path, PromptInfo]:
    """PromptInfo for every image: from the manifest (explicit, or ``samples.jsonl`` beside the images) or sidecars."""
    if manifest_path is None and images:
        beside = images[0].parent / SAMPLES_MANIFEST
        manifest_path = beside if beside.is_file() else None
    found: dict[Path, PromptInfo] = {}
    if manifest_path is not None:
        manifest_path = Path(manifest_path)
        rows = read_manifest(manifest_path)
        by_resolved = {(manifest_path.parent / f).resolve(): info for f, info in rows.items()}
        by_name = {Path(f).name: info for f, info in rows.items()}
        for img in images:
            info = by_resolved.get(img.resolve()) or by_name.get(img.name)
            if info is not None:
                found[img] = info
    for img in images:
        if img not in found:
            sidecar = img.with_suffix(".txt")
            if sidecar.is_file():
                text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
                found[img] = PromptInfo(text or None)
            else:
                found[img] = PromptInfo()
    return found
