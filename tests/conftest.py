"""Shared fixtures: the tiny models are built once (cached on disk across sessions) and loaded by path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TINY_CACHE = Path(os.environ.get("LORATUNE_TINY_CACHE", REPO / ".cache" / "tiny-models"))


@pytest.fixture(scope="session")
def tiny_models():
    """Paths of the tiny, randomly initialised models and the generated dataset (see ``loratune.tiny``)."""
    from loratune.tiny import build_tiny_models

    return build_tiny_models(TINY_CACHE)
