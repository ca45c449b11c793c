"""Held-out images: part of the dataset that never trains and serves as the identity references.

``dataset.holdout`` is a fraction (drawn by ``dataset.holdout_seed`` from the sorted non-regularisation images, so
training and evaluation draw the same split) or a folder (its images never train, even inside ``dataset.path``).
Identity measured against the images a LoRA trained on rewards recall of the training set; against held-out images it
measures what the LoRA learned about the character.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

from loratune.errors import LoratuneError
from loratune.images import list_images

if TYPE_CHECKING:
    from loratune.config import Config
    from loratune.train.data import Item


def draw_holdout(images: list[Path], fraction: float, seed: int) -> list[Path]:
    """The held-out share of ``images``: ``round(fraction * n)`` of them (at least one, never all), by seed.

    >>> [p.name for p in draw_holdout([Path(f"{i}.png") for i in range(10)], 0.2, 0)]
    ['6.png', '9.png']
    """
    ordered = sorted(images)
    count = min(max(1, round(fraction * len(ordered))), len(ordered) - 1)
    if count < 1:
        raise LoratuneError(f"dataset.holdout: {len(ordered)} training image(s) cannot spare any to hold out")
    return random.Random(seed).sample(ordered, count)


def split_items(config: Config, items: list[Item]) -> tuple[list[Item], list[Path]]:
    """``items`` without the held-out images, and the held-out images."""
    holdout = config.dataset.holdout
    if holdout is None:
        return items, []
    if isinstance(holdout, str):
        held = list_images(holdout, what="dataset.holdout")
        folder = Path(holdout).resolve()
        kept = [it for it in items if not it.image.resolve().is_relative_to(folder)]
    else:
        held = draw_holdout([it.image for it in items if not it.is_reg], holdout, config.dataset.holdout_seed)
        kept = [it for it in items if it.image not in set(held)]
    if not any(not it.is_reg for it in kept):
        raise LoratuneError(f"dataset.holdout: holds out every training image of {config.dataset.path}")
    return kept, held


def dataset_split(config: Config) -> tuple[list[Item], list[Path]]:
    """The training items (held-out images removed) and the held-out images, as training reads them."""
    from loratune.train.data import scan_dataset

    characters = list(config.dataset.characters.values())
    items = scan_dataset(config.dataset.path, config.dataset.caption_extension, config.dataset.missing_caption,
                         class_token=characters[0].token if len(characters) == 1 else None)
    return split_items(config, items)


def holdout_references(config: Config, held: list[Path]) -> dict[str | None, list[Path]]:
    """Held-out images as references for the characters without ``references``: one character takes them all; with
    several, an image goes to the character whose token its caption file names (else to none in particular)."""
    characters = config.dataset.characters
    lacking = [name for name, c in characters.items() if not c.references]
    if not held or (characters and not lacking):
        return {}
    if len(characters) <= 1:
        return {lacking[0] if lacking else None: held}
    refs: dict[str | None, list[Path]] = {}
    for path in held:
        caption = path.with_suffix(config.dataset.caption_extension)
        text = caption.read_text(encoding="utf-8", errors="replace").lower() if caption.is_file() else ""
        owner = next((n for n in lacking if characters[n].token.lower() in text), None)
        refs.setdefault(owner, []).append(path)
    return refs


def training_and_holdout(config: Config) -> tuple[list[Path], list[Path]]:
    """The character images that train (no regularisation images) and the held-out images; none without a dataset."""
    if not config.dataset.path:
        return [], []
    items, held = dataset_split(config)
    return [it.image for it in items if not it.is_reg], held
