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
from collections.abc import Iterable
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


def by_phase(trials: Iterable[tuple[str, dict[str, Any]]], finalists: float = 0.0) -> dict[str, dict[str, float]]:
    """Seconds per phase and kind from each trial's (phase, ``scores.json`` ``seconds``), with ``epochs`` trained and
    ``scored``; ``finalists``: the finalists' seconds (sampling and scoring), a phase of their own.

    >>> by_phase([("search", {"train": 2.0, "sample": 1.0, "scored_epochs": 2, "skipped_epochs": 1})])["search"]["train"]
    2.0
    """
    rows: dict[str, dict[str, float]] = {}
    for phase, seconds in trials:
        row = rows.setdefault(phase, {"trials": 0, "epochs": 0, "scored": 0, "raced": 0, **{k: 0.0 for k in KINDS}})
        row["trials"] += 1
        row["scored"] += int(seconds.get("scored_epochs") or 0)
        row["raced"] += int(seconds.get("raced_epochs") or 0)
        row["epochs"] += int(seconds.get("scored_epochs") or 0) + int(seconds.get("skipped_epochs") or 0)
        for kind in KINDS:
            row[kind] += float(seconds.get(kind) or 0.0)
    # The phases in the order a study runs them (a warm start's first trials run before the baseline).
    order = ("baseline", "search", "refine", "ensemble")
    rows = dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    if finalists:
        rows["finalists"] = {"trials": 0, "epochs": 0, "scored": 0, "raced": 0, **{k: 0.0 for k in KINDS},
                             "sample+score": finalists}
    for row in rows.values():
        row["total"] = sum(row[k] for k in KINDS) + row.get("sample+score", 0.0)
    return rows


def summary(rows: dict[str, dict[str, float]]) -> str:
    """One line for the console: the total and each kind's share, e.g. ``62 s: training 55%, sampling 20%, …``."""
    total = sum(r["total"] for r in rows.values()) or 1.0
    sums = {k: sum(r[k] for r in rows.values()) for k in KINDS}
    sums["sample"] += sum(r.get("sample+score", 0.0) for r in rows.values())  # the finalists', with sampling
    names = {"setup": "setup", "train": "training", "validation": "validation", "sample": "sampling",
             "score": "scoring", "search": "search bookkeeping"}
    return f"{_duration(total)}: " + ", ".join(f"{names[k]} {sums[k] / total:.0%}" for k in KINDS
                                               if sums[k] / total >= 0.005)  # "setup 0%" says nothing


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
