"""A synthetic response surface shaped like character-LoRA quality, for benchmarking search strategies.

Quality depends on the *effective* step size ``lr * alpha/rank``-style scaling (alpha_ratio scales the LoRA output
and so the update), peaks at a known log-lr, grows with rank and saturates, and over epochs rises to a peak and then
falls (over-training: the LoRA memorises the dataset and loses prompt alignment). A larger step reaches its peak
sooner. Observations carry Gaussian noise, like composite scores from a handful of sample images.

>>> s = Surface()
>>> round(s.true(2e-4, 32, 1.0, s.best_epoch(2e-4, 1.0)), 3) <= s.optimum()[0]
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RANKS = (8, 16, 32, 64)
ALPHA_RATIOS = (0.5, 1.0)
LR_RANGE = (5e-5, 5e-4)
EPOCH_RANGE = (6, 20)


@dataclass(frozen=True)
class Surface:
    lr_opt: float = 1.5e-4  # best effective learning rate
    lr_width: float = 0.45  # natural-log units: quality halves ~0.5 decade away from the optimum
    peak_work: float = 12.0 * 1.5e-4  # epochs x effective lr at the over-training peak
    epoch_width: float = 0.35  # log-epoch width of the peak
    noise: float = 0.02

    def effective_lr(self, lr: float, alpha_ratio: float) -> float:
        return lr * math.sqrt(alpha_ratio)

    def best_epoch(self, lr: float, alpha_ratio: float) -> float:
        return self.peak_work / self.effective_lr(lr, alpha_ratio)

    def true(self, lr: float, rank: int, alpha_ratio: float, epoch: float) -> float:
        eff = self.effective_lr(lr, alpha_ratio)
        lr_term = math.exp(-((math.log(eff / self.lr_opt)) ** 2) / (2 * self.lr_width**2))
        rank_term = 1.0 - 0.35 * math.exp(-(math.log2(rank) - 3) / 1.2)  # 8 -> 0.65, 64 -> ~0.95
        peak = self.best_epoch(lr, alpha_ratio)
        epoch_term = math.exp(-((math.log(epoch / peak)) ** 2) / (2 * self.epoch_width**2))
        return 0.9 * lr_term * rank_term * epoch_term + 0.05

    def observe(self, rng: np.random.Generator, lr: float, rank: int, alpha_ratio: float, epoch: float) -> float:
        return self.true(lr, rank, alpha_ratio, epoch) + float(rng.normal(0.0, self.noise))

    def optimum(self, max_epoch: int = EPOCH_RANGE[1]) -> tuple[float, dict[str, float]]:
        """The best true value over the space (dense grid in log-lr, every rank/alpha, epochs 1..max_epoch)."""
        best = (-1.0, {})
        for lr in np.geomspace(*LR_RANGE, 400):
            for rank in RANKS:
                for ratio in ALPHA_RATIOS:
                    for epoch in range(1, max_epoch + 1):
                        v = self.true(float(lr), rank, ratio, epoch)
                        if v > best[0]:
                            best = (v, {"learning_rate": float(lr), "rank": rank, "alpha_ratio": ratio, "epochs": epoch})
        return best  # type: ignore[return-value]
