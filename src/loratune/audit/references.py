"""Given references that are (near-)duplicates of training images: identity measured against them rewards a LoRA
for recalling its training set, not for learning the character. Found by perceptual hash and, with real weights, by
the consistency embedder's cosine, with the audit's own near-duplicate thresholds. And the other way round: training
images that look too little like their character's references."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loratune.audit import checks
from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.images import list_images, load_image

if TYPE_CHECKING:
    from loratune.audit.run import ImageReport
    from loratune.metrics.base import Backend


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


def character_presence(
    embedder: Backend,
    emb: np.ndarray,
    ok: list[int],
    reports: list[ImageReport],
    config: Config,
    outlier_z: float,
    warnings: list[str],
) -> None:
    """Similarity of each image to its character's reference images; low outliers within a character are flagged."""
    centroids: dict[str, np.ndarray] = {}
    for name, character in config.dataset.characters.items():
        if not character.references:
            continue
        try:
            refs = [
                load_image(p) for p in list_images(character.references, what=f"dataset.characters.{name}.references")
            ]
        except LoratuneError as err:
            warnings.append(f"character presence of {name} skipped: {err}")
            continue
        r = embedder.embed(refs).float().cpu().numpy()  # type: ignore[attr-defined]
        centre = (r / np.linalg.norm(r, axis=1, keepdims=True)).mean(0)
        centroids[name] = centre / np.linalg.norm(centre)
    for k, i in enumerate(ok):
        centre = centroids.get(reports[i].character or "")
        if centre is not None:
            reports[i].character_similarity = float(emb[k] @ centre)
    if embedder.stand_in:
        return
    for name in centroids:
        rows = [i for i in ok if reports[i].character == name and reports[i].character_similarity is not None]
        values = [reports[i].character_similarity for i in rows]
        median = statistics.median(values) if values else 0.0
        for k in checks.robust_outliers(values, high_is_bad=False, z=outlier_z, min_gap=0.05):
            reports[rows[k]].problems.append(
                f"may not show {name}: similarity to its references {values[k]:.3f} (its images' median {median:.3f})"
            )
