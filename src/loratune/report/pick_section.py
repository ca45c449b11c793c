"""The report's "How RUN/best was picked" section: what RUN/best holds and why, the finalists' search-time and
finalist scores side by side with what re-scoring them cost, and what the scorers showed before the first trial
(the identity threshold and how well it separates, the quality axis on the references)."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from loratune.report.format import fmt
from loratune.report.rundir import RunData
from loratune.runfolder import RunFolder


def _read(path: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def held(run_dir: Any) -> tuple[int, int] | None:
    """(trial, epoch) of what RUN/best holds, from its ``best.json``; None when there is none."""
    best = _read(RunFolder(run_dir).best / "best.json")
    try:
        return (int(best["trial"]), int(best["best_epoch"])) if best else None
    except (KeyError, TypeError, ValueError):
        return None


def _finalists(run: RunFolder, best: dict[str, Any] | None) -> str:
    data = _read(run.finalists_file)
    rows = [r for r in (data or {}).get("finalists") or [] if isinstance(r, dict)]
    if not rows:
        return ""
    chosen = (best or {}).get("trial"), (best or {}).get("best_epoch")
    body = []
    ordered = sorted(rows, key=lambda r: -(r.get("composite") or 0.0))
    for r in ordered:
        mark = " class='best-row'" if (r.get("trial"), r.get("epoch")) == chosen else ""
        delta = (r["composite"] - r["search_composite"]) if None not in (r.get("composite"),
                                                                          r.get("search_composite")) else None
        spread = f" ± {fmt(r['composite_se'], 3)}" if r.get("composite_se") is not None else ""
        body.append(f"<tr{mark}><td><a href='#trial-{r['trial']}'>#{r['trial']}</a></td><td class='num'>{r['epoch']}"
                    f"</td><td class='num'>{fmt(r.get('search_composite'), 4)}</td><td class='num'>"
                    f"{fmt(r.get('composite'), 4)}{spread}</td><td class='num'>{fmt(delta, 3)}</td><td class='num'>"
                    f"{fmt(r.get('images'))}</td><td class='num'>{fmt(r.get('seconds'), 3)}</td></tr>")
    total = sum(float(r.get("seconds") or 0.0) for r in rows)
    seeds = (data or {}).get("seeds") or [0]
    per_trial = int((data or {}).get("per_trial") or 1)
    which = (f" (up to {per_trial} epochs of one trial: its best and its runners-up, search.finalists_per_trial)"
             if per_trial > 1 else "")
    return (f"<h3>Finalists</h3><p class='muted'>The top candidates by search-time score{which} were sampled "
            f"again with {len(seeds)} fresh seeds per prompt ({seeds[0]}–{seeds[-1]}, the same for each) and scored "
            f"on all of their samples; RUN/best is the best of them. A search-time score is the best of a trial's "
            f"noisy epochs, so it tends to fall when measured again. Re-scoring took {total:.0f} s in all.</p>"
            "<table id='finalists' style='width:auto'><thead><tr><th>trial</th><th>epoch</th><th>search-time "
            "composite</th><th>finalist composite</th><th>change</th><th>images</th><th>seconds</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{_too_close(ordered)}")


def _too_close(ordered: list[dict[str, Any]]) -> str:
    """A warning when the best finalist's lead over the next is within the noise of the two scores (one standard
    error of their difference, from each one's ``composite_se``): the samples do not tell the two apart."""
    if len(ordered) < 2:
        return ""
    first, second = ordered[0], ordered[1]
    values = (first.get("composite"), second.get("composite"), first.get("composite_se"), second.get("composite_se"))
    if any(v is None for v in values):
        return ""
    lead, noise = values[0] - values[1], math.hypot(values[2], values[3])
    if lead > noise:
        return ""
    return (f"<div class='banner' id='finalists-close'><strong>⚠ Too close to call.</strong> The best finalist leads "
            f"the next (trial #{second['trial']}, epoch {second['epoch']}) by {lead:.3f}, within the noise of the two "
            f"scores (one standard error of the difference: {noise:.3f}). On these samples the two are not told "
            "apart: look at both before you ship one.</div>")


def _checks(run: RunFolder) -> str:
    data = _read(run.scorer_checks)
    if not data:
        return ""
    parts = []
    identity = data.get("identity") if isinstance(data.get("identity"), dict) else None
    if identity:
        rows = "".join(
            f"<tr><td>{escape(c or '(all)')}</td><td class='num'>{fmt(t.get('threshold'), 3)}</td><td class='num'>"
            f"{fmt(t.get('auc'), 3)}</td><td class='num'>{fmt(t.get('positive_mean'), 3)}</td><td class='num'>"
            f"{fmt(t.get('negative_mean'), 3)}</td><td class='num'>{fmt(t.get('structure_auc'), 3)}</td>"
            f"<td class='num'>{t.get('positives')} / {t.get('negatives')} / {t.get('probes', 0)}</td>"
            "</tr>" for c, t in (identity.get("characters") or {}).items())
        parts.append(
            f"<p>Identity ({escape(str(identity.get('backend')))}) is a rate: a sample counts when its similarity to "
            "the references passes a threshold learned in this run from the references (each against the others) "
            "and the base model's own samples of the same prompts, which never show the character. AUC is how well "
            "the two sets separate (1 = perfectly).</p><table id='identity-threshold' style='width:auto'><thead><tr>"
            "<th>character</th><th>threshold</th><th>AUC</th><th>references' mean</th><th>base samples' mean</th>"
            "<th>structure AUC (vs shuffled tiles)</th><th>references / negatives / tiles</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")
    quality = data.get("quality") if isinstance(data.get("quality"), dict) else None
    if quality:
        parts.append(f"<p class='muted'>Quality ({escape(str(quality.get('backend')))}) on the references "
                     f"{fmt(quality.get('references'), 3)}, on the base model's samples "
                     f"{fmt(quality.get('base_samples'), 3)} (normalised, higher is better).</p>")
    warnings = [w for key in ("identity", "quality") for w in ((data.get(key) or {}).get("warnings") or [])]
    if warnings:
        items = "".join(f"<li>{escape(w)}</li>" for w in warnings)
        parts.append(f"<div class='banner' id='scorer-warnings'><strong>⚠ Scorer checks.</strong><ul>{items}</ul></div>")
    return "<h3>Scorer checks before the first trial</h3>" + "".join(parts)


def pick_section(run: RunData) -> str:
    """The section, or "" for a run without RUN/best, finalists or scorer checks."""
    folder = RunFolder(run.run_dir)
    best = _read(folder.best / "best.json")
    finalists, checks = _finalists(folder, best), _checks(folder)
    if not (best or finalists or checks):
        return ""
    held = ""
    if best:
        how = escape(str(best.get("ranked_by") or "search-time score"))
        weights = escape(str(best.get("weights") or "evaluation.weights"))
        held = (f"<p><b>RUN/best</b> holds trial <a href='#trial-{best.get('trial')}'>#{best.get('trial')}</a>, "
                f"epoch {fmt(best.get('best_epoch'))}, composite {fmt(best.get('composite'), 4)} — ranked by its "
                f"{how}, with weights from {weights}.</p>")
    return f"<section class='card' id='pick'><h2>How RUN/best was picked</h2>{held}{finalists}{checks}</section>"
