"""The seed's training strategies, as small objects the loop calls at each epoch start.

A strategy reads the epoch and changes the run through the few hooks ``Run`` offers (the training resolution, the
LoRA rank); ``metadata()`` is what it records in every checkpoint.
"""

from __future__ import annotations

from typing import Any, Protocol


class Run(Protocol):
    resolution: int
    rank: int

    def grow_rank(self, rank: int) -> None: ...


class Strategy(Protocol):
    def on_epoch_start(self, epoch: int, run: Run) -> None: ...

    def metadata(self) -> dict[str, Any]: ...


class CurriculumResolution:
    """Train at ``schedule[e]`` pixels from epoch ``e`` on (e.g. {1: 256, 3: 512}); ``default`` before the first entry."""

    def __init__(self, schedule: dict[int, int], default: int) -> None:
        self.schedule, self.default = dict(sorted(schedule.items())), default

    def resolution_at(self, epoch: int) -> int:
        res = self.default
        for start, value in self.schedule.items():
            if epoch >= start:
                res = value
        return res

    def on_epoch_start(self, epoch: int, run: Run) -> None:
        run.resolution = self.resolution_at(epoch)

    def metadata(self) -> dict[str, Any]:
        return {"loratune_curriculum": {str(k): v for k, v in self.schedule.items()}}


class ProgressiveRank:
    """Grow the LoRA rank to ``schedule[e]`` at the start of epoch ``e``; the adapter's function is unchanged then."""

    def __init__(self, schedule: dict[int, int], initial: int) -> None:
        self.schedule, self.initial = dict(sorted(schedule.items())), initial

    def rank_at(self, epoch: int) -> int:
        rank = self.initial
        for start, value in self.schedule.items():
            if epoch >= start:
                rank = value
        return rank

    def on_epoch_start(self, epoch: int, run: Run) -> None:
        target = self.rank_at(epoch)
        if target > run.rank:
            run.grow_rank(target)

    def metadata(self) -> dict[str, Any]:
        return {"loratune_rank_schedule": {"1": self.initial, **{str(k): v for k, v in self.schedule.items()}}}
