"""CMMD: the maximum mean discrepancy between two sets of CLIP embeddings (Jayasumana et al. 2024, "Rethinking FID").

The kernel and scale are the published ones (google-research ``cmmd/distance.py``): a Gaussian RBF kernel with
sigma 10 on the embeddings and the result scaled by 1000. The formula is the reference's, term for term: the mean of
each kernel matrix over all pairs (the paper calls its estimator unbiased; the reference code averages the diagonal
too, and loratune follows the code so its numbers are the published implementation's). Lower is closer.

>>> import numpy as np
>>> x = np.eye(3, 4); round(cmmd(x, x), 9)
0.0
>>> round(cmmd(np.eye(3, 4), np.eye(4)[1:]), 3)
2.211
"""

from __future__ import annotations

from typing import Any

import numpy as np

SIGMA = 10.0
SCALE = 1000.0


def cmmd(x: Any, y: Any) -> float:
    """CMMD between embeddings ``x`` (n, d) and ``y`` (m, d): ``SCALE * (mean k(x,x') + mean k(y,y') - 2 mean k(x,y))``
    with ``k(a, b) = exp(-|a - b|^2 / (2 SIGMA^2))``, in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    gamma = 1.0 / (2.0 * SIGMA**2)

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return float(np.exp(-gamma * squared).mean())

    return SCALE * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))
