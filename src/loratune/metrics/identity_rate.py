"""Identity as a rate: for each sample, "is the character there?", with a threshold learned in the study itself.

Mean similarity to the references rewards a LoRA that paints the character's colours without the character (a
"fried" LoRA): every sample is a little similar, none is the character. A rate asks each sample to pass. The threshold
comes from two sets the study already has, scored exactly as generated samples are:

* **positives**: the character's references (held-out images when ``dataset.holdout`` is set), each one's similarity
  to the *other* references (leave-one-out, so no image is compared with itself);
* **negatives**: images that are not the character — the base model's own samples of the same prompts (drawn once per
  run: the base has never seen the character), the other characters' references, and each reference cut into an 8x8
  grid of tiles shuffled (``shuffled_tiles``): the character's colours and textures without the character, which is
  what an over-trained ("fried") LoRA paints. An embedder that rates those as high as the references themselves sees
  the palette, not the character: the ``structure_auc`` says so.

The threshold maximises Youden's J (true-positive rate minus false-positive rate; the midpoint between the two
scores where it is reached), and the AUC (Mann-Whitney: the chance that a random positive scores above a random
negative) says how well the identity scorer tells the two apart. Below ``evaluation.identity.min_auc`` the scorer
cannot see this character, and the study says so before its first trial. Nothing here looks at a score of a LoRA.

>>> t = fit_threshold([0.9, 0.8, 0.85], [0.5, 0.6, 0.82])
>>> round(t.threshold, 3), round(t.auc, 3)
(0.7, 0.889)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

MIN_POSITIVES = 2  # leave-one-out needs one reference to compare with
MIN_NEGATIVES = 2


@dataclass(frozen=True)
class IdentityThreshold:
    """A character's learned threshold and how well the positives and negatives separate."""

    threshold: float
    auc: float
    positives: int
    negatives: int
    positive_mean: float
    negative_mean: float
    true_positive_rate: float  # share of positives at or above the threshold
    false_positive_rate: float  # share of negatives and probes at or above it
    structure_auc: float | None = None  # positives against the shuffled-tile references (the probes) only
    probes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(self).items()}


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(positive > negative) + ½ P(tie), over every pair (the Mann-Whitney U statistic over n⁺ n⁻)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def fit_threshold(positives: Sequence[float], negatives: Sequence[float],
                  probes: Sequence[float] = ()) -> IdentityThreshold | None:
    """The similarity threshold with the largest Youden's J; None with too few of either set. ``probes`` (the
    shuffled-tile references) count as negatives for the threshold; ``auc`` is the positives against the negatives,
    ``structure_auc`` against the probes.

    Candidates are the midpoints between adjacent distinct scores (and the ends), so a sample passes with
    ``similarity >= threshold``. Ties in J: the widest gap between a positive and a negative wins, then the
    lower threshold.
    """
    if len(positives) < MIN_POSITIVES or len(negatives) < MIN_NEGATIVES:
        return None
    separation = float(auc(positives, negatives))
    structure = float(auc(positives, probes)) if probes else None
    negative_mean = float(sum(negatives) / len(negatives))
    count = len(negatives)
    negatives = [*negatives, *probes]  # the threshold keeps the palette out too
    values = sorted(set(positives) | set(negatives))
    cuts = [values[0] - 1e-6] + [(a + b) / 2 for a, b in pairwise(values)] + [values[-1] + 1e-6]

    def rates(cut: float) -> tuple[float, float]:
        return (sum(p >= cut for p in positives) / len(positives), sum(n >= cut for n in negatives) / len(negatives))

    def key(cut: float) -> tuple[float, float, float]:
        tpr, fpr = rates(cut)
        above = [v for v in values if v >= cut]
        below = [v for v in values if v < cut]
        gap = (min(above) - max(below)) if above and below else 0.0
        return (tpr - fpr, gap, -cut)

    best = max(cuts, key=key)
    tpr, fpr = rates(best)
    return IdentityThreshold(
        threshold=float(best), auc=separation, positives=len(positives), negatives=count,
        positive_mean=float(sum(positives) / len(positives)), negative_mean=negative_mean, true_positive_rate=tpr,
        false_positive_rate=fpr, structure_auc=structure, probes=len(probes),
    )


SHUFFLE_GRID = 8  # tiles per side: at ViT-B/16's 224 px a tile is ~2 patches; at the world's 64 px, one 8-px patch
SHUFFLES = 2  # shuffled copies per reference


def shuffled_tiles(image: Any, seed: int, grid: int = SHUFFLE_GRID) -> Any:
    """``image`` (PIL) cut into ``grid`` x ``grid`` tiles put back in a random order (by ``seed``): its colours and
    local textures without its shape. Sides that do not divide evenly lose their last few pixels."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image.convert("RGB"))
    th, tw = pixels.shape[0] // grid, pixels.shape[1] // grid
    tiles = [pixels[i * th:(i + 1) * th, j * tw:(j + 1) * tw] for i in range(grid) for j in range(grid)]
    order = np.random.default_rng(seed).permutation(len(tiles))
    rows = [np.concatenate([tiles[order[i * grid + j]] for j in range(grid)], axis=1) for i in range(grid)]
    return Image.fromarray(np.concatenate(rows, axis=0))


def structure_probes(references: Sequence[Any]) -> list[Any]:
    """``SHUFFLES`` shuffled-tile copies of each reference, always the same for the same references."""
    return [shuffled_tiles(img, seed=1000 * i + k) for i, img in enumerate(references) for k in range(SHUFFLES)]


def leave_one_out_mean(similarities: Any) -> list[float]:
    """Each row's mean similarity to the *other* rows of a square similarity matrix (torch or numpy)."""
    n = similarities.shape[0]
    if n < 2:
        return []
    return [float((similarities[i].sum() - similarities[i, i]) / (n - 1)) for i in range(n)]


def rate_of(similarities: Sequence[float | None], thresholds: Sequence[IdentityThreshold | None]) -> list[float | None]:
    """Per image 1.0 (passes its character's threshold), 0.0 (does not) or None (no similarity or no threshold)."""
    return [None if s is None or t is None else float(s >= t.threshold) for s, t in zip(similarities, thresholds)]


def rate_details(similarities: Sequence[float | None], characters: Sequence[str | None],
                 threshold_for: Any) -> tuple[float | None, list[float | None], dict[str, Any]]:
    """(rate over the images with a similarity and a threshold, per-image pass/fail, details for scores.json)."""
    thresholds = [threshold_for(c) for c in characters]
    passes = rate_of(similarities, thresholds)
    scored = [p for p in passes if p is not None]
    per_character: dict[str, dict[str, Any]] = {}
    for character in dict.fromkeys(characters):
        rows = [p for p, c in zip(passes, characters) if c == character and p is not None]
        threshold = threshold_for(character)
        per_character[character or "(no character)"] = {
            "rate": sum(rows) / len(rows) if rows else None, "images": len(rows),
            "threshold": None if threshold is None else threshold.to_json(),
        }
    details = {
        "identity_rate": sum(scored) / len(scored) if scored else None,
        "rate_per_character": per_character,
        "per_image_similarity": [None if s is None else round(float(s), 6) for s in similarities],
    }
    if len(scored) < len(passes):
        details["images_not_rated"] = len(passes) - len(scored)
    return (sum(scored) / len(scored) if scored else None), passes, details
