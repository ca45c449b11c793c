"""Where a run's seconds go: a stopwatch whose laps are named (setup, train, validation, sample, score).

Users pay per GPU-hour, so every epoch records what its training, sampling and scoring cost and on which device
(``scores.json``); the report and the benchmarks put cost, not trial count, on the x-axis. CUDA runs kernels
asynchronously: a lap read without waiting for them would bill the training's kernels to the sampling that follows,
so on a GPU each lap first synchronises the device.

>>> watch = Stopwatch()
>>> _ = watch.lap("setup")
>>> sorted(watch.laps)
['setup']
"""

from __future__ import annotations

import time
from typing import Any

# Where a trial's seconds go, in the order ``scores.json`` and the report list them; ``search`` is the search's own
# work between epochs (records, the study, the pruner).
KINDS = ("setup", "train", "validation", "sample", "score", "search")


class Stopwatch:
    """Named laps: ``lap(name)`` adds the seconds since the previous lap (or since the watch started) to ``name``."""

    def __init__(self, device: Any = None) -> None:
        self.device = device
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        _synchronise(self.device)
        now = time.perf_counter()
        seconds = now - self._last
        self._last = now
        self.laps[name] = self.laps.get(name, 0.0) + seconds
        return seconds

    def take(self) -> dict[str, float]:
        """The laps so far (rounded to ms), and a fresh start for the next ones."""
        laps, self.laps = {k: round(v, 3) for k, v in self.laps.items()}, {}
        return laps


def _synchronise(device: Any) -> None:
    if device is None or getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return
    import torch

    torch.cuda.synchronize(device)


def device_label(device: Any) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what a second was spent on, for comparing runs' costs."""
    text = str(device)
    if text.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{text} ({torch.cuda.get_device_name(torch.device(text))})"
    return text
