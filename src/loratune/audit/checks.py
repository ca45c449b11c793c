"""The audit's model-free measurements: caption length in CLIP tokens, perceptual-hash near-duplicates, sharpness,
robust outliers and diversity. Plain functions over arrays, tested exactly."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

CLIP_MAX_TOKENS = 77  # SD's text encoders see 77 positions, BOS and EOS included


@cache
def _clip_bpe() -> Any:
    # open_clip ships OpenAI's CLIP BPE vocabulary: the same token ids as SD's CLIPTokenizer, offline.
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_token_count(text: str) -> int:
    """Tokens the text encoder sees for ``text``, including the BOS and EOS tokens."""
    return len(_clip_bpe().encode(text)) + 2


def hash_pairs(hashes: Sequence[Any], max_distance: int) -> list[tuple[int, int, int]]:
    """Index pairs whose perceptual hashes differ in at most ``max_distance`` bits, with that distance."""
    out = []
    for i, j in itertools.combinations(range(len(hashes)), 2):
        d = int(hashes[i] - hashes[j])
        if d <= max_distance:
            out.append((i, j, d))
    return out


def cosine_pairs(embeddings: np.ndarray, min_cosine: float) -> list[tuple[int, int, float]]:
    """Index pairs of L2-normalised rows whose cosine similarity is at least ``min_cosine``."""
    sims = embeddings @ embeddings.T
    rows, cols = np.triu_indices(len(embeddings), k=1)
    keep = sims[rows, cols] >= min_cosine
    return [(int(i), int(j), float(sims[i, j])) for i, j in zip(rows[keep], cols[keep])]


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian (a standard focus measure): blur removes high frequencies and drives it down."""
    from scipy import ndimage

    return float(ndimage.laplace(gray.astype(np.float64)).var())


def robust_outliers(
    values: Sequence[float | None], high_is_bad: bool, z: float = 3.0, min_gap: float = 0.0
) -> list[int]:
    """Indices more than ``z`` robust standard deviations (1.4826·MAD) on the bad side of the median,
    and at least ``min_gap`` away from it (so a dataset of near-identical scores flags nothing)."""
    present = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(present) < 3:
        return []
    arr = np.array([v for _, v in present])
    median = float(np.median(arr))
    spread = 1.4826 * float(np.median(np.abs(arr - median)))
    out = []
    for i, v in present:
        gap = (v - median) if high_is_bad else (median - v)
        if gap >= min_gap and gap > z * spread:
            out.append(i)
    return out


def low_ratio(values: Sequence[float], ratio: float) -> list[int]:
    """Indices whose value is below ``ratio`` times the median (e.g. sharpness far under the dataset's norm)."""
    if len(values) < 2:
        return []
    median = float(np.median(values))
    return [i for i, v in enumerate(values) if v < ratio * median]


def mean_pairwise_hash_distance(hashes: Sequence[Any]) -> float | None:
    """Mean normalised Hamming distance between perceptual hashes (0 = identical, ~0.5 = unrelated)."""
    if len(hashes) < 2:
        return None
    bits = hashes[0].hash.size
    pairs = list(itertools.combinations(hashes, 2))
    return sum(int(a - b) for a, b in pairs) / (len(pairs) * bits)


def embedding_diversity(embeddings: np.ndarray) -> dict[str, float] | None:
    """Mean pairwise cosine distance and the Vendi score (effective number of distinct images) of normalised rows."""
    n = len(embeddings)
    if n < 2:
        return None
    from vendi_score import vendi

    sims = embeddings @ embeddings.T
    mean_cos = float((sims.sum() - np.trace(sims)) / (n * (n - 1)))
    return {"mean_cosine_distance": 1.0 - mean_cos, "vendi_score": float(vendi.score_K(sims))}
