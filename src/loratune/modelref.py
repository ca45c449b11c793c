"""Model references: a hub id or a local path, and whether the weights behind it are stand-ins.

Every loader in loratune takes either form through the library's normal call. The tiny-model factory marks what it
writes with a ``loratune-stand-in.json`` file so that every output can say when a score came from random weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from loratune.errors import LoratuneError

STAND_IN_MARKER = "loratune-stand-in.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(ref: str) -> bool:
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def check_model_ref(ref: str, field: str) -> str:
    """Return ``ref`` if it is an existing path or a plausible hub id; otherwise raise naming ``field``."""
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if looks_like_hub_id(ref):
        return ref
    raise LoratuneError(f"{field}: model path not found: {ref}")


def stand_in_info(ref: str | None) -> dict | None:
    """The stand-in marker's content for a local model (searched at the path and its parents), else None."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    if not path.exists():
        return None
    for folder in [path if path.is_dir() else path.parent, *path.resolve().parents][:4]:
        marker = folder / STAND_IN_MARKER
        if marker.is_file():
            try:
                return json.loads(marker.read_text())
            except (OSError, ValueError):
                return {"stand_in": True}
    return None


def is_stand_in(ref: str | None) -> bool:
    return stand_in_info(ref) is not None


def write_stand_in_marker(folder: str | Path, what: str) -> None:
    from loratune.atomic import atomic_write_json

    atomic_write_json(
        Path(folder) / STAND_IN_MARKER,
        {"stand_in": True, "what": what, "note": "randomly initialised by loratune.tiny; scores mean nothing"},
    )
