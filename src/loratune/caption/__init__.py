"""Captions for a training set: the trigger first, then what is not the character's identity.

``caption_dataset(folder, config)`` writes the missing caption files with the captioner ``config.caption`` names (see
``loratune.caption.registry``: the VQAScore VLM, Florence-2, a WD tagger); ``loratune caption`` is its command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CaptionResult", "CaptionRow", "caption_dataset"]


def __getattr__(name: str) -> Any:
    # Lazy: the config imports loratune.caption.config, and the runner imports the config.
    if name in __all__:
        from loratune.caption import run

        return getattr(run, name)
    raise AttributeError(name)
