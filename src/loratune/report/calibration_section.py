"""The report's calibrated-ranking section: written by ``loratune calibrate RUN --apply`` (RUN/calibration.json), it
shows the weights fitted to the user's answers beside the run's, and both rankings side by side when they differ."""

from __future__ import annotations

import json
from html import escape
from typing import Any

from loratune.report.format import fmt
from loratune.report.rundir import RunData
from loratune.runfolder import RunFolder

_ROWS = 10


def _read(run: RunData) -> dict[str, Any] | None:
    try:
        data = json.loads(RunFolder(run.run_dir).calibration.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("ranking"), list) else None


def _entry(row: Any) -> str:
    if not isinstance(row, dict):
        return "<td></td><td></td>"
    return (f"<td><a href='#trial-{escape(str(row.get('trial')))}'>#{fmt(row.get('trial'))}</a> · epoch "
            f"{fmt(row.get('epoch'))}</td><td class='num'>{fmt(row.get('composite'), 4)}</td>")


def calibrated_best(run: RunData) -> str | None:
    """"#trial · epoch N" of the calibrated winner (what RUN/best holds after ``--apply``), or None."""
    data = _read(run)
    top = data["ranking"][0] if data and data["ranking"] and isinstance(data["ranking"][0], dict) else None
    return None if top is None else f"#{fmt(top.get('trial'))} · epoch {fmt(top.get('epoch'))}"


def calibration_section(run: RunData) -> str:
    data = _read(run)
    if data is None:
        return ""
    weights, default = data.get("weights") or {}, data.get("default_weights") or {}
    rows = "".join(f"<tr><td>{escape(a)}</td><td class='num'>{fmt(default.get(a), 3)}</td>"
                   f"<td class='num'><b>{fmt(w, 3)}</b></td></tr>" for a, w in weights.items())
    agreement = data.get("agreement") or {}
    held = ""
    if agreement.get("fitted") is not None:
        held = (f" On answers each fit had not seen, the calibrated weights agree with them "
                f"{agreement['fitted']:.0%} of the time, the run's weights {agreement['default']:.0%}.")
    intro = (f"<p>Weights fitted to {fmt(data.get('answers'))} answers to “which is better?” "
             f"(<code>loratune calibrate</code>, applied {escape(str(data.get('applied', '')))}).{held} "
             "<code>RUN/best</code> holds the calibrated winner; <code>calibrated-weights.yaml</code> is the "
             "<code>evaluation.weights</code> snippet for the next study.</p>")
    table = (f"<table style='width:auto'><thead><tr><th>axis</th><th>run's weight</th><th>calibrated</th></tr></thead>"
             f"{rows}</table>")
    calibrated, default_rank = data["ranking"], data.get("ranking_default") or []
    key = [(r.get("trial"), r.get("epoch")) for r in calibrated if isinstance(r, dict)]
    if key == [(r.get("trial"), r.get("epoch")) for r in default_rank if isinstance(r, dict)][:len(key)]:
        ranking = "<p class='muted'>The calibrated weights rank the trials in the same order as the search.</p>"
    else:
        body = "".join(f"<tr><td class='num'>{n + 1}</td>{_entry(calibrated[n] if n < len(calibrated) else None)}"
                       f"{_entry(default_rank[n] if n < len(default_rank) else None)}</tr>"
                       for n in range(min(_ROWS, max(len(calibrated), len(default_rank)))))
        ranking = ("<table id='calibrated-ranking' style='width:auto'><thead><tr><th>rank</th>"
                   "<th>calibrated: trial · epoch</th><th>composite</th><th>search's: trial · epoch</th>"
                   f"<th>composite</th></tr></thead>{body}</table>")
    return (f'<section class="card" id="calibration"><h2>Calibrated ranking</h2>{intro}{table}'
            f"<h3>Ranking</h3>{ranking}</section>")
