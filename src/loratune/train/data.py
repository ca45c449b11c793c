"""Training data: find images and captions, assign aspect buckets, and plan each epoch's batches.

Two layouts are read. kohya's: sub-folders ``N_name/`` (``N`` repeats per epoch, ``name`` the class token) holding
images with same-stem caption files. A plain folder: images with caption files, or a ``metadata.jsonl`` with
``file_name`` and ``text`` (the Hugging Face imagefolder convention). Everything is checked before a model loads.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from loratune.errors import LoratuneError
from loratune.images import is_image_file, load_image

_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class Item:
    """One training image: its caption, how often an epoch shows it, and its size in pixels."""

    image: Path
    caption: str
    repeats: int
    width: int
    height: int


def _caption_for(image: Path, extension: str, metadata: dict[str, str]) -> str | None:
    if image.name in metadata:
        return metadata[image.name]
    sidecar = image.with_suffix(extension)
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise LoratuneError(f"{sidecar}: caption is not UTF-8 text") from None
        return text or None
    return None


def _read_metadata(folder: Path) -> dict[str, str]:
    path = folder / "metadata.jsonl"
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LoratuneError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    captions: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            captions[Path(row["file_name"]).name] = str(row.get("text") or row.get("caption") or "").strip()
        except (ValueError, KeyError, TypeError):
            raise LoratuneError(f"{path}:{n}: expected a JSON object with 'file_name' and 'text'") from None
    return {k: v for k, v in captions.items() if v}


def scan_dataset(
    path: str | Path | None,
    caption_extension: str = ".txt",
    missing_caption: str = "error",
    class_token: str | None = None,
) -> list[Item]:
    """Every training image with its caption and repeat count; raises ``LoratuneError`` on any bad input.

    ``missing_caption="class_token"`` captions an uncaptioned image with its kohya folder's name (or ``class_token``
    for a plain folder) instead of failing.
    """
    if not path:
        raise LoratuneError("dataset.path: not set (a kohya-layout folder or a folder of images with captions)")
    root = Path(path)
    if not root.is_dir():
        raise LoratuneError(f"dataset.path: folder not found: {root}")
    groups: list[tuple[Path, int, str | None]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _KOHYA_DIR.match(sub.name)
        if match:
            groups.append((sub, int(match.group(1)), match.group(2).replace("_", " ")))
    if not groups:
        groups = [(root, 1, class_token)]
    items: list[Item] = []
    for folder, repeats, token in groups:
        if repeats < 1:
            raise LoratuneError(f"{folder}: repeat count must be at least 1")
        metadata = _read_metadata(folder)
        for image in sorted(p for p in folder.iterdir() if is_image_file(p)):
            caption = _caption_for(image, caption_extension, metadata)
            if caption is None:
                if missing_caption != "class_token":
                    raise LoratuneError(
                        f"{image}: no caption ({image.with_suffix(caption_extension).name} missing or empty); "
                        "add one or set dataset.missing_caption: class_token"
                    )
                if not token:
                    raise LoratuneError(f"{image}: no caption and no class token to fall back on")
                caption = token
            with load_image(image) as img:  # decodes fully: a broken file fails here, before any model loads
                width, height = img.size
            items.append(Item(image, caption, repeats, width, height))
    if not items:
        raise LoratuneError(f"dataset.path: no training images in {root}")
    return items


def bucket_sizes(resolution: int, step: int = 64, min_side: int = 256, max_side: int = 1024) -> list[tuple[int, int]]:
    """kohya-style buckets: (width, height) multiples of ``step`` with area at most ``resolution²``."""
    min_side = min(min_side, resolution)
    max_side = max(max_side, resolution)
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    width = min_side
    while width <= max_side:
        height = min(max_side, area // width // step * step)
        if height >= min_side:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def assign_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (ties: the larger area)."""
    import math

    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def plan_epoch(item_buckets: list[tuple[int, tuple[int, int]]], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of item indices for one epoch: each item ``repeats`` times, one bucket per batch, shuffled by seed.

    ``item_buckets`` holds (repeats, bucket) per item.
    """
    rng = random.Random(seed)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, (repeats, bucket) in enumerate(item_buckets):
        by_bucket.setdefault(bucket, []).extend([index] * repeats)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
    rng.shuffle(batches)
    return batches


def process_caption(caption: str, shuffle: bool, keep_tokens: int, separator: str, rng: random.Random) -> str:
    """kohya's caption shuffle: the first ``keep_tokens`` comma-separated tokens stay, the rest are shuffled."""
    if not shuffle:
        return caption
    tokens = [t.strip() for t in caption.split(separator) if t.strip()]
    kept, rest = tokens[:keep_tokens], tokens[keep_tokens:]
    rng.shuffle(rest)
    return f"{separator} ".join(kept + rest)
