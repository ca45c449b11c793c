"""A diffusers pipeline folder -> one checkpoint file in its family's original layout (``Family.single_file_tensors``),
so that ``tiny-models`` and ``world`` hand a user a base to try as model sites ship theirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loratune.families import Family


def folder_weights(folder: str | Path, subfolder: str) -> dict[str, Any]:
    """Every tensor of one part of a diffusers folder (all its safetensors shards)."""
    from safetensors.torch import load_file

    files = sorted((Path(folder) / subfolder).glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def folder_config(folder: str | Path, subfolder: str) -> dict[str, Any]:
    return json.loads((Path(folder) / subfolder / "config.json").read_text())


def write_single_file(folder: str | Path, target: str | Path, family: str | Family) -> Path:
    """Write ``folder``'s pipeline as one safetensors file in ``family``'s original layout (atomically)."""
    from safetensors.torch import save_file

    from loratune.atomic import atomic_path
    from loratune.families import get_family

    family = get_family(family) if isinstance(family, str) else family
    tensors = {k: v.contiguous() for k, v in family.single_file_tensors(Path(folder)).items()}
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp))
    return Path(target)
