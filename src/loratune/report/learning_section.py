"""The report's view of learning vs copying: per-epoch copy rate, CMMD and diagnosis columns for the epoch table,
and each sample beside its nearest training image for the epochs where copying matters.

Read from the trial's ``scores.json`` (``epochs``: ``copy_rate``, ``cmmd``, ``diagnosis``) and each epoch's
``scores/epoch-NNNN/scores.json`` (``copy_risk.per_image``).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from loratune.report.format import fmt
from loratune.report.rundir import TrialInfo
from loratune.report.thumbnails import thumbnail_uri

CSS = """
.diag-copying { color: #c92a2a; font-weight: 700; } .diag-overfit { color: #d9480f; font-weight: 600; }
.diag-underfit { color: #5b6474; } .diag-good { color: #2b8a3e; }
table.copy-pairs td { vertical-align: top; text-align: center; padding: 4px 8px; }
table.copy-pairs img { width: 96px; height: 96px; object-fit: contain; }
"""

MAX_PAIRS = 6  # per epoch shown: the samples nearest to a training image first


def epoch_heads(rows: list[dict[str, Any]]) -> list[str]:
    """Extra epoch-table columns: those the trial's epochs have."""
    heads = []
    if any(r.get("copy_rate") is not None for r in rows):
        heads.append("copy rate")
    if any(r.get("cmmd") is not None for r in rows):
        heads.append("CMMD")
    if any(r.get("diagnosis") for r in rows):
        heads.append("diagnosis")
    return heads


def epoch_cells(row: dict[str, Any], heads: list[str]) -> str:
    """The row's cells for ``epoch_heads``; a diagnosis cell carries its rule as a tooltip and in small print."""
    cells = []
    if "copy rate" in heads:
        cells.append(f"<td class='num'>{fmt(row.get('copy_rate'), 2)}</td>")
    if "CMMD" in heads:
        cells.append(f"<td class='num'>{fmt(row.get('cmmd'), 3)}</td>")
    if "diagnosis" in heads:
        diagnosis = row.get("diagnosis") or {}
        label, rule = str(diagnosis.get("label", "")), str(diagnosis.get("rule", ""))
        cells.append(f"<td title='{escape(rule)}'><span class='diag-{escape(label)}'>{escape(label)}</span>"
                     + (f" <span class='muted'>{escape(rule)}</span>" if label != "good" else "") + "</td>")
    return "".join(cells)


def copy_pairs(info: TrialInfo, thumb: int = 96) -> str:
    """Samples beside their nearest training image, for the best epoch and the worst copying epoch."""
    if info.folder is None:
        return ""
    rows = [r for r in (info.scores or {}).get("epochs") or [] if isinstance(r, dict) and r.get("copy_rate") is not None]
    copying = [r for r in rows if (r.get("diagnosis") or {}).get("label") == "copying"]
    shown = [r["epoch"] for r in rows if r["epoch"] == info.best_epoch]
    if copying:
        worst = max(copying, key=lambda r: r["copy_rate"])["epoch"]
        shown += [worst] if worst not in shown else []
    blocks = [block for epoch in shown if (block := _epoch_pairs(info.folder, epoch, thumb))]
    if not blocks:
        return ""
    return ("<details><summary>nearest training image per sample (copy risk)</summary>" + "".join(blocks)
            + "</details>")


def _epoch_pairs(folder: Path, epoch: int, thumb: int) -> str:
    try:
        scores = json.loads((folder / "scores" / f"epoch-{epoch:04d}" / "scores.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    risk = scores.get("copy_risk") or {}
    pairs = sorted(risk.get("per_image") or [], key=lambda p: -(p.get("similarity") or 0.0))[:MAX_PAIRS]
    cells = []
    for pair in pairs:
        sample, nearest = thumbnail_uri(Path(pair["file"]), thumb), thumbnail_uri(Path(pair["nearest_training"]), thumb)
        if sample is None or nearest is None:
            continue
        copy = (pair.get("similarity") or 0.0) >= (risk.get("threshold") or 1.0)
        cells.append(f"<td><img src='{sample}' alt='sample'><img src='{nearest}' alt='nearest training image'><br>"
                     f"<span class='{'diag-copying' if copy else 'muted'}'>{fmt(pair.get('similarity'), 3)}</span>"
                     "</td>")
    if not cells:
        return ""
    return (f"<h3>epoch {epoch}: sample | nearest training image — copy rate {fmt(risk.get('rate'), 2)} "
            f"(threshold {fmt(risk.get('threshold'), 2)}, {escape(str(risk.get('embedder')))})</h3>"
            f"<table class='copy-pairs'><tr>{''.join(cells)}</tr></table>")
