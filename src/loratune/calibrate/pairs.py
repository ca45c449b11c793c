"""Which two checkpoints to show next: the pair the current weights are least sure about.

A pair is informative when the current weights rank it as a coin flip (close composites: ``p (1 - p)`` of the
Bradley–Terry probability is largest) and the two differ in how they got there (far apart axis profiles: the answer
says which axes the user cares about). A pair is never asked twice (in either order), and checkpoints already shown
often are damped, so one odd checkpoint does not appear in every pair.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from loratune.calibrate.fit import BETA, composites


def next_pair(scores: np.ndarray, weights: np.ndarray, asked: Iterable[tuple[int, int]],
              rng: np.random.Generator, beta: float = BETA) -> tuple[int, int] | None:
    """(left, right) indices into ``scores`` rows, sides shuffled so position says nothing; None when every pair of
    scored checkpoints was asked.

    >>> s = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.9]])
    >>> sorted(next_pair(s, np.array([0.5, 0.5]), [], np.random.default_rng(0)))
    [0, 1]
    """
    c = composites(scores, weights)
    n = len(c)
    done = np.zeros((n, n), dtype=bool)
    shown = np.zeros(n)
    for i, j in asked:
        done[i, j] = done[j, i] = True
        shown[[i, j]] += 1
    p = 1.0 / (1.0 + np.exp(-beta * (c[:, None] - c[None, :])))
    filled = np.nan_to_num(scores, nan=0.0)
    sq = (filled**2).sum(axis=1)  # |a - b|^2 = |a|^2 + |b|^2 - 2ab: n x n memory, not n x n x axes
    profile = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * filled @ filled.T, 0.0))
    score = p * (1 - p) * profile / np.sqrt((1 + shown[:, None]) * (1 + shown[None, :]))
    usable = ~done & np.triu(np.ones((n, n), dtype=bool), 1) & ~np.isnan(score)
    if not usable.any():
        return None
    score = np.where(usable, score, -np.inf)
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return (int(i), int(j)) if rng.random() < 0.5 else (int(j), int(i))
