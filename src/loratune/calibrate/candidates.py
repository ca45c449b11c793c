"""The checkpoints a user can compare: every scored epoch (with sample images) of every trial that ended, with its
normalised axis scores as one matrix row, and the run's current composite weights as the prior.

Read through ``loratune.report.rundir`` (the same reading of trial folders and sample manifests as the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loratune.errors import LoratuneError
from loratune.metrics.registry import AXES
from loratune.report.rundir import RunData, SampleImage, load_run
from loratune.search.trial import epoch_lora

_ENDED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class Checkpoint:
    trial: int
    epoch: int
    axes: dict[str, float | None]
    images: list[SampleImage]
    trial_dir: Path
    lora: Path | None  # the epoch's kohya file, when it is still on disk

    @property
    def key(self) -> str:
        return f"{self.trial}/{self.epoch}"


@dataclass
class Candidates:
    run: RunData
    checkpoints: list[Checkpoint]
    scores: np.ndarray  # rows: checkpoints, columns: AXES; NaN = axis not computed
    prior: np.ndarray  # the run's evaluation.weights over AXES, summing to 1

    @property
    def axes(self) -> tuple[str, ...]:
        return AXES

    def index(self, key: str) -> int | None:
        return next((i for i, c in enumerate(self.checkpoints) if c.key == key), None)


def run_weights(config: dict[str, Any]) -> dict[str, float]:
    """The run's composite weights as its config states them (the seed weights where it is silent)."""
    from pydantic import ValidationError

    from loratune.metrics.config import SEED_WEIGHTS, EvaluationSection

    evaluation = config.get("evaluation") if isinstance(config.get("evaluation"), dict) else {}
    try:
        return dict(EvaluationSection.model_validate({"weights": evaluation.get("weights") or {}}).weights)
    except ValidationError:
        return dict(SEED_WEIGHTS)


def load_candidates(run_dir: str | Path) -> Candidates:
    """Every scored checkpoint of ``run_dir`` that has sample images. Raises ``LoratuneError`` when there are fewer
    than two (nothing to compare)."""
    run = load_run(run_dir)
    checkpoints = []
    for info in run.trials:
        if info.trial.state.name not in _ENDED or info.folder is None:
            continue
        samples = {e.epoch: e.images for e in info.epochs}
        for row in (info.scores or {}).get("epochs") or []:
            axes = row.get("axes") if isinstance(row, dict) else None
            if not isinstance(axes, dict) or not isinstance(row.get("epoch"), int) or row["epoch"] not in samples:
                continue
            values = {a: (float(v) if isinstance(v, (int, float)) else None) for a, v in axes.items() if a in AXES}
            if any(v is not None for v in values.values()):
                checkpoints.append(Checkpoint(info.number, row["epoch"], values, samples[row["epoch"]], info.folder,
                                              epoch_lora(info.folder, row["epoch"], info.attrs)))
    if len(checkpoints) < 2:
        raise LoratuneError(f"{run_dir}: {len(checkpoints)} scored checkpoint(s) with sample images; "
                            "calibrating needs at least two to compare")
    scores = np.array([[np.nan if c.axes.get(a) is None else c.axes[a] for a in AXES] for c in checkpoints])
    weights = run_weights(run.config)
    prior = np.array([weights.get(a, 0.0) for a in AXES])
    return Candidates(run, checkpoints, scores, prior / prior.sum())
