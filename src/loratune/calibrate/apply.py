"""``loratune calibrate RUN --apply``: re-rank the run with the weights fitted to the answers, no retraining.

Writes RUN/calibration.json (the calibrated ranking, the search's own ranking beside it, both weight sets and the
held-out agreement), RUN/calibrated-weights.yaml (an ``evaluation.weights`` snippet for the next study's config),
refills RUN/best with the calibrated winner and rewrites the report, which then shows both rankings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loratune.atomic import atomic_write_json, atomic_write_text
from loratune.calibrate.fit import as_dict
from loratune.calibrate.preferences import now
from loratune.calibrate.session import Session
from loratune.errors import LoratuneError
from loratune.runfolder import RunFolder


@dataclass
class Applied:
    weights: dict[str, float]
    default_weights: dict[str, float]
    answers: int
    best: dict[str, Any]  # the calibrated winner: trial, epoch, composite
    moved: bool  # whether the calibrated order differs from the search's
    report: Path


def _rows(candidates: list[Any]) -> list[dict[str, Any]]:
    return [{"trial": c.number, "epoch": c.epoch, "composite": round(c.composite, 6)} for c in candidates]


def apply_calibration(run_dir: str | Path) -> Applied:
    """Write the calibrated weights into the run folder, where they become an input of the run's one ranking rule
    (``loratune.search.selection.pick``), then refill RUN/best by that rule and rewrite the report."""
    from loratune.config import load_config
    from loratune.report import build_report
    from loratune.report.page import run_search
    from loratune.search.runner import copy_best
    from loratune.search.selection import Ranking, pick, read_ranking

    session = Session(run_dir, who="")
    if not session.answers:
        raise LoratuneError(f"{session.path}: no answers yet; run `loratune calibrate {run_dir}` first")
    cands = session.candidates
    run = RunFolder(cands.run.run_dir)
    weights, default_weights = as_dict(cands.axes, session.weights), as_dict(cands.axes, cands.prior)
    held = session.held_out
    when = now()
    record: dict[str, Any] = {
        "applied": when, "answers": len(session.answers), "who": sorted({a.who for a in session.answers}),
        "weights": weights, "default_weights": default_weights,
        "agreement": {"fitted": held.fitted, "default": held.default, "answers": held.answers},
    }
    atomic_write_json(run.calibration, record)  # from here on the weights rank this run
    trials, search = [info.trial for info in cands.run.trials], run_search(cands.run)
    ranking = read_ranking(run.root, trials)
    calibrated = _rows(pick(trials, search, ranking))
    if not calibrated:
        run.calibration.unlink()
        raise LoratuneError(f"{run.root}: no scored checkpoint has its LoRA file on disk; nothing to re-rank")
    default = _rows(pick(trials, search, Ranking(finalists=ranking.finalists)))
    atomic_write_json(run.calibration, {**record, "ranking": calibrated, "ranking_default": default})
    atomic_write_text(run.calibrated_weights, (
        f"# Composite weights fitted by `loratune calibrate` to {len(session.answers)} answers ({when}).\n"
        "# Put them in the next study's config (they replace the seed weights).\n"
        + yaml.safe_dump({"evaluation": {"weights": weights}}, sort_keys=False)))
    copy_best(run.root, load_config(run.config))
    report = build_report(run.root).path
    order = [(r["trial"], r["epoch"]) for r in calibrated]
    moved = order != [(r["trial"], r["epoch"]) for r in default][:len(order)]
    return Applied(weights, default_weights, len(session.answers), calibrated[0], moved, report)
