"""Model references: a hub id or a local path, and whether the weights behind it are stand-ins.

Every loader in loratune takes either form through the library's normal call. The tiny-model factory marks what it
writes with a ``loratune-stand-in.json`` file so that every output can say when a score came from random weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from loratune.errors import LoratuneError, first_line

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


def check_model_available(ref: str, field: str) -> str:
    """``check_model_ref``, and a hub id must be loadable here: in the local hub cache, or (online) on the hub.

    Offline (``HF_HUB_OFFLINE=1``) a hub id that is not cached is an error at once, instead of minutes of retries
    when the first trial loads it.
    """
    ref = check_model_ref(ref, field)
    if not Path(ref).exists():
        check_hub_model(ref, field)
    return ref


def check_hub_model(repo_id: str, field: str) -> None:
    """Raise a one-line ``LoratuneError`` unless ``repo_id`` is in the hub cache or (online) on the hub."""
    from huggingface_hub import constants, repo_exists, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    fix = f"download it with `hf download {repo_id}` (or `huggingface-cli download {repo_id}`), or set {field} to a " \
          "local folder"
    try:
        snapshot_download(repo_id, local_files_only=True)
        return
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        pass
    if constants.HF_HUB_OFFLINE:
        raise LoratuneError(f"{field}: model {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE=1; {fix}")
    try:
        found = repo_exists(repo_id)
    except Exception as err:  # noqa: BLE001 - any network failure means the same thing to the user
        raise LoratuneError(f"{field}: cannot reach the Hugging Face hub for {repo_id} ({first_line(err)}); {fix}") \
            from None
    if not found:
        raise LoratuneError(f"{field}: no model {repo_id} on the Hugging Face hub (private or gated models need "
                            f"`hf auth login`); check the id, or set {field} to a local folder")


def find_marker(ref: str | Path | None, name: str) -> tuple[Path, dict | None] | None:
    """(folder, parsed JSON or None when unreadable) of the marker file ``name`` at a local model's path or one of its
    three nearest parents, else None (a hub id, a missing path, no marker)."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    if not path.exists():
        return None
    for folder in [path if path.is_dir() else path.parent, *path.resolve().parents][:4]:
        marker = folder / name
        if marker.is_file():
            try:
                data = json.loads(marker.read_text())
            except (OSError, ValueError):
                data = None
            return folder, data if isinstance(data, dict) else None
    return None


def stand_in_info(ref: str | None) -> dict | None:
    """The stand-in marker's content for a local model (searched at the path and its parents), else None."""
    found = find_marker(ref, STAND_IN_MARKER)
    if found is None:
        return None
    return found[1] if found[1] is not None else {"stand_in": True}  # an unreadable marker still marks a stand-in


def is_stand_in(ref: str | None) -> bool:
    return stand_in_info(ref) is not None


def write_stand_in_marker(folder: str | Path, what: str) -> None:
    from loratune.atomic import atomic_write_json

    atomic_write_json(
        Path(folder) / STAND_IN_MARKER,
        {"stand_in": True, "what": what, "note": "randomly initialised by loratune.tiny; scores mean nothing"},
    )
