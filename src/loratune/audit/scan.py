"""Reading a training set for the audit: like training's scan, but every problem is recorded instead of raised.

Layouts as in ``loratune.train.data``: kohya sub-folders ``N_name/`` (``N`` repeats, ``name`` the trigger/class
words) or a plain folder; captions from same-stem sidecar files or a ``metadata.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loratune.errors import LoratuneError
from loratune.images import is_image_file
from loratune.train.data import _KOHYA_DIR, _read_metadata

CaptionState = Literal["ok", "missing", "empty", "unreadable"]


@dataclass
class DatasetEntry:
    image: Path
    folder: str  # the kohya folder name ("" for a plain folder)
    token: str | None  # the kohya folder's trigger/class words
    repeats: int
    caption: str | None
    caption_state: CaptionState


def _read_caption(image: Path, extension: str, metadata: dict[str, str]) -> tuple[str | None, CaptionState]:
    if image.name in metadata:
        return metadata[image.name], "ok"
    sidecar = image.with_suffix(extension)
    if not sidecar.is_file():
        return None, "missing"
    try:
        text = sidecar.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, OSError):
        return None, "unreadable"
    return (text, "ok") if text else (None, "empty")


def scan_for_audit(path: str | Path, caption_extension: str = ".txt") -> tuple[str, list[DatasetEntry]]:
    """(layout, entries) of a dataset folder; only a missing or image-less folder is an error."""
    root = Path(path)
    if root.is_file():
        raise LoratuneError(f"{root}: is a file; audit takes the dataset folder (kohya N_name/ sub-folders, or a "
                            "folder of images with captions)")
    if not root.is_dir():
        raise LoratuneError(f"dataset folder not found: {root}")
    groups: list[tuple[Path, str, int, str | None]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _KOHYA_DIR.match(sub.name)
        if match:
            groups.append((sub, sub.name, int(match.group(1)), match.group(2).replace("_", " ")))
    layout = "kohya" if groups else "plain"
    if not groups:
        groups = [(root, "", 1, None)]
    entries: list[DatasetEntry] = []
    for folder, name, repeats, token in groups:
        metadata = _read_metadata(folder)
        for image in sorted(p for p in folder.iterdir() if is_image_file(p)):
            caption, state = _read_caption(image, caption_extension, metadata)
            entries.append(DatasetEntry(image, name, token, repeats, caption, state))
    if not entries:
        raise LoratuneError(f"{root}: no images found (kohya sub-folders N_name/ or images directly in the folder)")
    return layout, entries
