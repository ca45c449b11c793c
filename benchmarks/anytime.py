"""Anytime curves of a finished study: the RUN/best it would have handed back, and what it would have cost, had it
stopped after each of its trials.

A study's trials run one after another (one worker), so its first k trials are exactly what it had after k trials;
what the product would do with them is its own rule: the top ``search.finalists`` candidates by search-time score
re-scored (``selection.finalists_to_score``), then ``selection.pick``. Regret and cost come from the benchmark that
ran the study (the replayed world, the synthetic surface).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# What a GPU run pays for (a trial's ``scores.json`` seconds; its "search" bookkeeping is the replay's, not a GPU's).
PAID = ("setup", "train", "validation", "sample", "score")


def trial_seconds(run_root: Path, trial: Any) -> float:
    """The paid seconds of one trial (0 for a trial without a folder)."""
    if not trial.user_attrs.get("trial_dir"):
        return 0.0
    scores = json.loads((run_root / trial.user_attrs["trial_dir"] / "scores.json").read_text())
    return sum(float(scores["seconds"].get(kind) or 0.0) for kind in PAID)


def prefix_picks(run_root: Path, search: Any, trials: Sequence[Any],
                 finalist: Callable[[Any, int], tuple[float | None, dict[str, Any]]],
                 truth: Callable[[Any, int], float], finalist_seconds: float, optimum: float) -> list[dict[str, Any]]:
    """Per prefix of ``trials`` (sorted by number): ``regret`` = ``optimum`` - ``truth(trial, epoch)`` of the pick
    (``optimum`` when nothing is a candidate yet) and ``cost`` = the trials' paid seconds + ``finalist_seconds`` per
    finalist re-scored; ``finalist(trial, epoch)`` gives a finalist's (composite, axes)."""
    from loratune.search.selection import Finalist, Ranking, finalists_to_score, pick, read_ranking

    spent, out = 0.0, []
    for k, t in enumerate(trials, 1):
        spent += trial_seconds(run_root, t)
        sub = list(trials[:k])
        finals, epochs = [], read_ranking(run_root, sub).epochs  # each trial's scored epochs: its runners-up
        for c in finalists_to_score(sub, search, Ranking(epochs=epochs), search.finalists):
            composite, axes = finalist(c.trial, c.epoch)
            finals.append(Finalist(c.number, c.epoch, composite, axes, c.composite, 0, 0.0, ""))
        picked = pick(sub, search, Ranking(finalists=tuple(finals)))
        regret = optimum - truth(picked[0].trial, picked[0].epoch) if picked else optimum
        out.append({"trials": k, "cost": spent + len(finals) * finalist_seconds, "regret": regret,
                    "finalist_seconds": len(finals) * finalist_seconds})
    return out


def at_cost(anytime: Sequence[dict[str, Any]], budget: float, optimum: float) -> tuple[float, int]:
    """(regret, trials) of the longest prefix that costs no more than ``budget`` (nothing fits: the optimum, 0)."""
    fit = [a for a in anytime if a["cost"] <= budget + 1e-9]
    return (fit[-1]["regret"], fit[-1]["trials"]) if fit else (optimum, 0)
