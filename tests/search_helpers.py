"""A synthetic trial backend for the runner's mechanics (kill/resume, workers): no model, the synthetic LoRA-quality
surface as the score, a tiny kohya file per epoch. End-to-end tests use the real trainer instead."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from loratune.config import Config
from loratune.lora.merge import load_lora
from loratune.records import EpochScore
from loratune.search.synthetic import Surface


class SyntheticBackend:
    def __init__(self) -> None:
        self.surface = Surface(noise=0.0)
        self.epoch_seconds = float(os.environ.get("LORATUNE_TEST_EPOCH_SECONDS", "0"))
        self.marker_dir = os.environ.get("LORATUNE_TEST_MARKERS")
        if os.environ.get("LORATUNE_TEST_LOADS"):  # one file per backend made: a real one loads its models here
            Path(os.environ["LORATUNE_TEST_LOADS"], f"{os.getpid()}-{id(self)}").touch()

    def _lora(self, path: Path, seed: int, rank: int) -> None:
        g = torch.Generator().manual_seed(seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"m.lora_down.weight": torch.randn(rank, 8, generator=g), "m.lora_up.weight": torch.randn(8, rank, generator=g),
                   "m.alpha": torch.tensor(float(rank))}, str(path))

    def train(self, config: Config, out_dir: Path, on_epoch: Callable[[EpochScore], None]) -> None:
        from loratune.train import StopTraining

        t = config.train
        number = out_dir.name[1:5]
        ratio = t.lora_alpha / t.rank
        for epoch in range(1, t.epochs + 1):
            if self.marker_dir:
                Path(self.marker_dir, f"{number}-epoch{epoch}-{os.getpid()}").touch()
            time.sleep(self.epoch_seconds)
            lora = out_dir / "checkpoints" / f"epoch-{epoch:04d}" / "lora.safetensors"
            self._lora(lora, int(number) * 100 + epoch, min(t.rank, 8))
            samples = out_dir / "samples" / f"epoch-{epoch:04d}"
            samples.mkdir(parents=True, exist_ok=True)
            (samples / "0.txt").write_text(f"{number} {epoch}")
            value = self.surface.true(min(max(t.learning_rate, 1e-6), 1e-2), t.rank, ratio, epoch)
            try:
                on_epoch(EpochScore(epoch, value, {"alignment": value, "diversity": 1 - value}, lora, samples))
            except StopTraining:
                return

    def score_lora(self, config: Config, lora: Path, out_dir: Path) -> EpochScore:
        state, _ = load_lora(lora)
        value = 0.5 + float(np.tanh(float(state["m.lora_up.weight"].abs().mean()))) * 0.01
        samples = out_dir / "samples" / "ensemble"
        samples.mkdir(parents=True)
        (samples / "0.txt").write_text("ensemble")
        return EpochScore(0, value, {"alignment": value, "diversity": 1 - value}, lora, samples)


def make() -> SyntheticBackend:
    return SyntheticBackend()
