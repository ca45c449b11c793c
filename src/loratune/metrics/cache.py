"""Process-wide model cache: each model is loaded once per process and shared by every backend and evaluation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")
_models: dict[Hashable, Any] = {}
_lock = threading.Lock()


def cached_model(key: Hashable, loader: Callable[[], T]) -> T:
    """Return the object stored under ``key``, calling ``loader`` only the first time.

    Keys should include everything that changes the loaded object (kind, model id, device, dtype).
    """
    with _lock:
        if key not in _models:
            _models[key] = loader()
        return _models[key]


def clear_model_cache() -> None:
    with _lock:
        _models.clear()


def cached_keys() -> list[Hashable]:
    return list(_models)
