"""The report's "Cost" section: where the study's seconds went (per phase: setup, training, validation, sampling,
scoring, and the finalists' re-scoring), on which devices, what the epoch gate skipped, and which earlier runs a
warm start learned from.

Read from each trial's ``scores.json`` (``seconds``: the trial's totals and wall time; ``epochs[].skipped``),
``RUN/finalists.json`` (each finalist's seconds) and the study's ``warm_start`` user attr.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from loratune.report.format import fmt
from loratune.report.rundir import RunData
from loratune.runfolder import RunFolder
from loratune.timing import KINDS, by_phase, summary

_LABELS = {"setup": "setup", "train": "training", "validation": "validation", "sample": "sampling",
           "score": "scoring", "search": "search bookkeeping"}


def time_table(run: RunData) -> tuple[dict[str, dict[str, float]], list[str]] | None:
    """Seconds per phase (``timing.by_phase``), the finalists a row of their own; the devices. None when no trial
    recorded its seconds (a run from before loratune kept them)."""
    timed = [(info.phase, info.scores["seconds"]) for info in run.trials
             if isinstance((info.scores or {}).get("seconds"), dict)]
    if not timed:
        return None
    finalists = sum(float(r.get("seconds") or 0.0) for r in _finalist_rows(run.run_dir))
    devices = sorted({str(d) for _, seconds in timed for d in seconds.get("devices") or []})
    return by_phase(timed, finalists), devices


def _finalist_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = RunFolder(run_dir).finalists_file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [r for r in (data.get("finalists") or []) if isinstance(r, dict)] if isinstance(data, dict) else []


def _time(run: RunData) -> str:
    found = time_table(run)
    if found is None:
        return ""
    rows, devices = found
    total = sum(r["total"] for r in rows.values()) or 1.0
    body = []
    for phase, r in rows.items():
        cells = "".join(f"<td class='num'>{fmt(r[k], 3) if r[k] else '–'}</td>" for k in KINDS)
        epochs = f"{int(r['epochs'])} ({int(r['scored'])} scored)"
        if phase == "finalists":
            cells = ("<td class='num'>–</td>" * 3
                     + f"<td class='num' colspan='2'>{fmt(r['sample+score'], 3)} (sampling + scoring)</td>"
                     + "<td class='num'>–</td>")
            epochs = "–"
        body.append(f"<tr><td>{escape(phase)}</td><td class='num'>{int(r['trials']) or '–'}</td>"
                    f"<td class='num'>{epochs}</td>{cells}<td class='num'>{fmt(r['total'], 3)}</td>"
                    f"<td class='num'>{r['total'] / total:.0%}</td></tr>")
    head = "".join(f"<th>{_LABELS[k]} (s)</th>" for k in KINDS)
    skipped = int(sum(r["epochs"] - r["scored"] for r in rows.values()))
    gate = (f" The epoch gate (<code>search.gating</code>) left {skipped} trained epoch{'s' * (skipped != 1)} "
            "unsampled and unscored: no candidates for RUN/best." if skipped else "")
    raced = int(sum(r.get("raced", 0) for r in rows.values()))
    gate += (f" {raced} scored epoch{'s' * (raced != 1)} kept the first seeds only: clearly below the best so far "
             "(<code>search.gating.race</code>)." if raced else "")
    where = f" on {escape(', '.join(devices))}" if devices else ""
    return (f"<h3>Where the time went</h3><p class='muted'>{escape(summary(rows))} ({fmt(total, 4)} s){where}."
            f"{gate}</p><table id='time-table' style='width:auto'><thead><tr><th>phase</th><th>trials</th>"
            f"<th>epochs</th>{head}<th>total (s)</th><th>share</th></tr></thead><tbody>{''.join(body)}</tbody>"
            "</table>")


def _warm(run: RunData) -> str:
    record = run.study.user_attrs.get("warm_start")
    if not isinstance(record, dict):
        return ""
    items = []
    for s in record.get("sources") or []:
        skipped = "; ".join(f"{n} skipped: {escape(str(why))}" for why, n in (s.get("skipped") or {}).items())
        items.append(f"<li><code>{escape(str(s.get('run')))}</code> ({escape(str(s.get('family')))}): "
                     f"{s.get('used')} of {s.get('trials')} trials{' — ' + skipped if skipped else ''}</li>")
    seeded = [f"#{info.number} ({escape(str(info.attrs['warm_from']))})" for info in run.trials
              if info.attrs.get("warm_from")]
    first = f" Tried first: {', '.join(seeded)}." if seeded else ""
    return ("<h3>Warm start</h3><p>This study started from earlier runs: their trials, ranked within their own run, "
            "were the sampler's first picture of the space (never trials of this run: not counted, never RUN/best)."
            f"{first}</p><ul id='warm-sources'>{''.join(items)}</ul>")


def cost_section(run: RunData) -> str:
    """The section, or "" for a run that recorded no seconds and had no warm start."""
    time, warm = _time(run), _warm(run)
    if not (time or warm):
        return ""
    return f"<section class='card' id='cost'><h2>Cost</h2>{time}{warm}</section>"
