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

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from loratune.errors import LoratuneError

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


# -- the richer surface the search benchmark drives through the product's own runner ------------------------------
OPTIMIZERS = ("adamw", "lion", "prodigy")


@dataclass(frozen=True)
class Point:
    """What ``LoraSurface`` reads from a trial's effective train config."""

    learning_rate: float
    rank: int
    alpha_ratio: float
    optimizer: str
    d_coef: float = 1.0
    min_snr_gamma: float | None = None

    @classmethod
    def of(cls, train: Any) -> Point:
        """From a ``TrainSection`` (or its JSON dump, as ``params.json`` holds it)."""
        t = train if isinstance(train, dict) else train.model_dump(mode="json")
        alpha = t.get("alpha") or t["rank"]
        prodigy = t.get("prodigy") or {}
        return cls(float(t["learning_rate"]), int(t["rank"]), float(alpha) / float(t["rank"]), str(t["optimizer"]),
                   float(prodigy.get("d_coef", 1.0)), t.get("min_snr_gamma"))


@dataclass(frozen=True)
class LoraSurface:
    """Quality of a character LoRA as a function of the searched settings, with the interactions practitioners see.

    - The best *effective* step shrinks as rank grows (more parameters, each needs less); alpha/rank scales it.
    - Lion's sign update is ~3x AdamW's step at the same lr (the default space scales Lion's lr by 0.3); Prodigy finds
      its own step (``d_coef`` scales it) at a small cost in peak quality.
    - min-SNR weighting (gamma 5) lifts quality a little and delays over-training.
    - Two axes pull against each other over epochs: identity (consistency) keeps rising and saturates, prompt alignment
      falls once the LoRA over-trains; the composite weighs both.
    - Observations carry a per-trial offset plus AR(1) noise across epochs (correlated, as scores of one run are).
    """

    lr_opt: float = 1.5e-4  # best effective lr at rank 16
    rank_exponent: float = 0.3
    lr_width: float = 0.45
    peak_work: float = 7.0 * 1.5e-4  # epochs x effective step at the identity "knee" (best composite a little later)
    lion_step: float = 3.3
    prodigy_quality: float = 0.96
    snr_bonus: float = 1.03
    snr_delay: float = 1.15
    offset_sd: float = 0.015
    ar_rho: float = 0.7
    ar_sd: float = 0.015

    def _effective(self, p: Point) -> tuple[float, float]:
        """(effective step, best step for this rank)."""
        best = self.lr_opt * (16 / p.rank) ** self.rank_exponent
        if p.optimizer == "prodigy":
            return best * p.d_coef, best
        step = p.learning_rate * (self.lion_step if p.optimizer == "lion" else 1.0)
        return step * math.sqrt(p.alpha_ratio), best

    def axes(self, p: Point, epoch: float) -> dict[str, float]:
        eff, best = self._effective(p)
        lr_term = math.exp(-((math.log(eff / best)) ** 2) / (2 * self.lr_width**2))
        rank_term = 1.0 - 0.3 * math.exp(-(math.log2(p.rank) - 3) / 1.2)
        peak = self.peak_work / eff * (self.snr_delay if p.min_snr_gamma else 1.0)
        consistency = math.sqrt(lr_term) * rank_term * (1.0 - math.exp(-1.5 * epoch / peak))
        alignment = math.exp(-(max(0.0, math.log(epoch / peak)) ** 2) / (2 * 0.35**2)) * (0.6 + 0.4 * lr_term)
        return {"consistency": consistency, "alignment": alignment}

    def true(self, p: Point, epoch: float) -> float:
        a = self.axes(p, epoch)
        scale = (self.prodigy_quality if p.optimizer == "prodigy" else 1.0) * \
            (self.snr_bonus if p.min_snr_gamma else 1.0)
        return 0.9 * a["consistency"] * (0.4 + 0.6 * a["alignment"]) * scale + 0.05

    @property
    def epoch_se(self) -> float:
        """The standard error an epoch's own samples would show: the AR noise's stationary spread (the per-run
        offset is shared by every epoch of a run, so it never separates two of them)."""
        return self.ar_sd / math.sqrt(1 - self.ar_rho**2)

    def observed(self, rng: np.random.Generator, p: Point, epochs: int) -> list[float]:
        """One run's scores per epoch 1..epochs: the truth plus a per-run offset and AR(1) noise."""
        offset, ar, out = float(rng.normal(0, self.offset_sd)), 0.0, []
        for epoch in range(1, epochs + 1):
            ar = self.ar_rho * ar + float(rng.normal(0, self.ar_sd))
            out.append(self.true(p, epoch) + offset + ar)
        return out

    def optimum(self, max_epoch: int = EPOCH_RANGE[1]) -> tuple[float, Point, int]:
        """The best true value over the default search space (dense in lr and d_coef)."""
        best: tuple[float, Point, int] = (-1.0, Point(1e-4, 16, 1.0, "adamw"), 1)
        points = [Point(float(lr) * (0.3 if opt == "lion" else 1.0), rank, ratio, opt, 1.0, snr)
                  for lr in np.geomspace(*LR_RANGE, 120) for rank in RANKS for ratio in ALPHA_RATIOS
                  for opt in ("adamw", "lion") for snr in (None, 5.0)]
        points += [Point(1.0, rank, ratio, "prodigy", float(d), snr) for d in np.linspace(0.5, 2.0, 31)
                   for rank in RANKS for ratio in ALPHA_RATIOS for snr in (None, 5.0)]
        for p in points:
            for epoch in range(1, max_epoch + 1):
                v = self.true(p, epoch)
                if v > best[0]:
                    best = (v, p, epoch)
        return best


class SyntheticTrials:
    """A trial backend on ``LoraSurface`` (``--backend loratune.search.synthetic:make``): no model, a 1 kB LoRA file
    per epoch so the selection has checkpoints to pick; scores seeded by (``search.seed``, trial number). Each epoch
    costs ``COST`` (in units of one training epoch: sampling and scoring a checkpoint cost about as much as training
    an epoch on SD1.5); an epoch the trial's gate skips costs its training only."""

    COST: ClassVar[dict[str, float]] = {"train": 1.0, "sample": 0.5, "score": 0.5}

    def __init__(self, surface: LoraSurface | None = None) -> None:
        self.surface = surface or LoraSurface()

    def train(self, config: Any, out_dir: Path, on_epoch: Callable[[Any], None]) -> None:
        import torch
        from safetensors.torch import save_file

        from loratune.records import EpochScore
        from loratune.runfolder import building_number
        from loratune.train import StopTraining

        number = building_number(out_dir) or 0
        point = Point.of(config.train.model_dump(mode="json"))
        rng = np.random.default_rng([config.search.seed, number])
        wants = getattr(on_epoch, "wants_samples", None)
        for epoch, value in enumerate(self.surface.observed(rng, point, config.train.epochs), 1):
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}.safetensors"
            lora.parent.mkdir(parents=True, exist_ok=True)
            save_file({"m.lora_down.weight": torch.zeros(1, 4), "m.lora_up.weight": torch.zeros(4, 1),
                       "m.alpha": torch.tensor(1.0)}, str(lora))
            last = epoch == config.train.epochs
            if wants is not None and not wants(epoch, None, last):
                score = EpochScore(epoch, None, lora=lora, seconds={"train": self.COST["train"]})
            else:
                score = EpochScore(epoch, value, self.surface.axes(point, epoch), lora, seconds=dict(self.COST),
                                   composite_se=self.surface.epoch_se)
            try:
                on_epoch(score)
            except StopTraining:
                return

    def score_finalist(self, config: Any, lora: Path, earlier: Path | None, out_dir: Path) -> Any:
        """A finalist on the surface: its search-time score's noise averaged with ``finalist_samples`` times as many
        fresh samples, whose own noise is smaller by the square root of their number (seeded by the checkpoint)."""
        from loratune.records import EpochScore

        trial_dir = lora.parents[1]
        number, epoch = int(trial_dir.name), int(lora.stem.split("-")[-1])
        train = json.loads((trial_dir / "params.json").read_text())["train"]
        point, k = Point.of(train), config.search.finalist_samples
        searched = self.surface.observed(np.random.default_rng([config.search.seed, number]), point, epoch)[-1]
        true = self.surface.true(point, epoch)
        fresh_rng = np.random.default_rng([config.search.seed, number, epoch, 1])
        fresh = true + float(fresh_rng.normal(0.0, math.hypot(self.surface.offset_sd, self.surface.ar_sd))) / math.sqrt(k)
        value = (searched + k * fresh) / (1 + k)
        return EpochScore(0, value, self.surface.axes(point, epoch), lora)

    def score_lora(self, config: Any, lora: Path, out_dir: Path) -> Any:
        raise LoratuneError("synthetic trials have no ensemble (set search.phases.ensemble_top_k: 0)")


def make() -> SyntheticTrials:
    """The backend on the default surface, or on one with the fields of ``$LORATUNE_SURFACE`` (JSON) changed: a
    related task, e.g. ``{"lr_opt": 2.5e-4}`` (another character whose best step is larger)."""
    import os

    changes = json.loads(os.environ.get("LORATUNE_SURFACE") or "{}")
    return SyntheticTrials(LoraSurface(**changes))
