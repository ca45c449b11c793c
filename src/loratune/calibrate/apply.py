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
from loratune.calibrate.session import Session, best_per_trial
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


def search_ranking(session: Session) -> list[dict[str, Any]]:
    """The run's ranking by the search's own rule (``loratune.search.selection``): each trial at its best epoch."""
    from loratune.report.page import run_search
    from loratune.search.selection import ranked

    run = session.candidates.run
    return [{"trial": t.number, "epoch": t.user_attrs.get("best_epoch"), "composite": t.user_attrs.get("composite")}
            for t in ranked([info.trial for info in run.trials], run_search(run))]


def apply_calibration(run_dir: str | Path) -> Applied:
    from loratune.report import build_report
    from loratune.search.runner import write_best

    session = Session(run_dir, who="")
    if not session.answers:
        raise LoratuneError(f"{session.path}: no answers yet; run `loratune calibrate {run_dir}` first")
    cands = session.candidates
    run = RunFolder(cands.run.run_dir)
    calibrated = [{"trial": r.trial, "epoch": r.epoch, "composite": round(r.composite, 6)}
                  for r in best_per_trial(cands, session.weights, need_lora=True)]
    if not calibrated:
        raise LoratuneError(f"{run.root}: no scored checkpoint has its LoRA file on disk; nothing to re-rank")
    default = search_ranking(session)
    weights, default_weights = as_dict(cands.axes, session.weights), as_dict(cands.axes, cands.prior)
    held = session.held_out
    when = now()
    atomic_write_json(run.calibration, {
        "applied": when, "answers": len(session.answers), "who": sorted({a.who for a in session.answers}),
        "weights": weights, "default_weights": default_weights,
        "agreement": {"fitted": held.fitted, "default": held.default, "answers": held.answers},
        "ranking": calibrated, "ranking_default": default,
    })
    atomic_write_text(run.calibrated_weights, (
        f"# Composite weights fitted by `loratune calibrate` to {len(session.answers)} answers ({when}).\n"
        "# Put them in the next study's config (they replace the seed weights).\n"
        + yaml.safe_dump({"evaluation": {"weights": weights}}, sort_keys=False)))
    top = calibrated[0]
    ckpt = cands.checkpoints[cands.index(f"{top['trial']}/{top['epoch']}")]  # type: ignore[index]
    info = next(i for i in cands.run.trials if i.number == ckpt.trial)
    write_best(run, ckpt.trial_dir, ckpt.lora, ckpt.images[0].path.parent, ckpt.epoch, {  # type: ignore[arg-type]
        "trial": ckpt.trial, "state": info.trial.state.name.lower(), "phase": info.attrs.get("phase"),
        "composite": top["composite"], "best_epoch": ckpt.epoch, "params": info.trial.params, "axes": ckpt.axes,
        "stand_in": info.attrs.get("stand_in"), "calibrated": {"weights": weights, "answers": len(session.answers)},
    })
    report = build_report(run.root).path
    order = [(r["trial"], r["epoch"]) for r in calibrated]
    moved = order != [(r["trial"], r["epoch"]) for r in default][:len(order)]
    return Applied(weights, default_weights, len(session.answers), top, moved, report)
