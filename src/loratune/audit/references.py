"""Given references that are (near-)duplicates of training images: identity measured against them rewards a LoRA
for recalling its training set, not for learning the character. Found by perceptual hash and, with real weights, by
the consistency embedder's cosine, with the audit's own near-duplicate thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loratune.config import Config
from loratune.images import list_images, load_image


def reference_leaks(config: Config, files: list[str], hashes: list[Any], embeddings: np.ndarray | None,
                    embedder: Any, max_bits: int, min_cosine: float) -> list[dict[str, Any]]:
    """One entry per (reference, training image) pair that is a near-duplicate: ``files``, ``hashes`` and
    ``embeddings`` (L2-normalised rows, or None) describe the audited training images, in the same order."""
    import imagehash

    leaks: list[dict[str, Any]] = []
    for name, character in config.dataset.characters.items():
        if not character.references:
            continue
        paths = list_images(character.references, what=f"dataset.characters.{name}.references")
        images = [load_image(p) for p in paths]
        ref_hashes = [imagehash.phash(img) for img in images]
        ref_rows = None
        if embeddings is not None and embedder is not None and not embedder.stand_in:
            ref_rows = embedder.embed(images).float().cpu().numpy()
            ref_rows = ref_rows / np.linalg.norm(ref_rows, axis=1, keepdims=True)
        for r, (path, ref_hash) in enumerate(zip(paths, ref_hashes)):
            cosines = None if ref_rows is None else embeddings @ ref_rows[r]  # type: ignore[operator]
            for t, (file, train_hash) in enumerate(zip(files, hashes)):
                bits = int(ref_hash - train_hash)
                cosine = None if cosines is None else float(cosines[t])
                if bits <= max_bits or (cosine is not None and cosine >= min_cosine):
                    leaks.append({"character": name, "reference": str(Path(path)), "training": file,
                                  "phash_distance": bits, "cosine": cosine})
    return leaks


def leak_warning(leaks: list[dict[str, Any]]) -> str | None:
    """The audit's one-line warning for the leaks found, or None."""
    if not leaks:
        return None
    refs = len({leak["reference"] for leak in leaks})
    names = ", ".join(sorted({leak["character"] for leak in leaks}))
    return (f"{refs} reference image(s) of {names} are (near-)duplicates of training images: identity would measure "
            "recall of the training set; use other references or hold images out (dataset.holdout)")


