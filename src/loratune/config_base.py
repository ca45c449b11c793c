"""What every config section builds on: strict models, and paths resolved next to the config file.

A leaf module (pydantic only), so each part's section (``caption/``, ``learning/``, ``metrics/``, ``search/``,
``train/`` ``config.py``) imports it at the top while ``loratune.config``, which puts the sections together, imports
them all. The config file's folder reaches the validators as validation context ``base_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def resolve_path(value: str | None, info: ValidationInfo, must_exist: bool = False) -> str | None:
    """Resolve ``value`` against the config file's folder (passed as validation context ``base_dir``)."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


def resolve_model(value: str | None, info: ValidationInfo) -> str | None:
    """A model reference stays a hub id unless a file or folder of that name exists next to the config."""
    if value is None:
        return None
    expanded = Path(os.path.expanduser(value))
    if expanded.is_absolute():
        return str(expanded)
    base = (info.context or {}).get("base_dir")
    if base is not None and (Path(base) / expanded).exists():
        return str(Path(base) / expanded)
    return value
