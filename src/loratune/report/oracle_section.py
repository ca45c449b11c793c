"""The report's known-truth section, for runs on ``loratune world``'s folder: the pixel oracle's verdict on every
scored epoch beside the composite loratune gave it, and how well the two rank-agree.

The oracle (``loratune.world.oracle``) reads the truth from the samples' pixels: is the target character there with
its traits, is the scene the prompt's, how noisy, how varied. On a real model there is no oracle and no section.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from loratune.report.format import fmt
from loratune.report.rundir import EpochSamples, RunData, TrialInfo


@dataclass(frozen=True)
class OracleRow:
    trial: int | None  # None: the base model without a LoRA
    phase: str
    epoch: int | None
    composite: float | None
    identity: float | None  # share of samples showing the target with shirt and hair
    traits: float | None  # mean share of the target's trait checks passed
    scene: float  # share of samples whose scene is the prompt's
    quality: float
    diversity: float
    best: bool  # the trial's best epoch (what RUN/best would take from it)


def _rate(value: float | None) -> str:
    """Shares and 0–1 readings with two fixed digits, so a column of them lines up (1.00, 0.38, 0.00)."""
    return "—" if value is None else f"{value:.2f}"


def _epoch(row: OracleRow) -> str:
    """The ensemble is one merge of other trials' best epochs, not an epoch of its own."""
    return "—" if row.epoch is None else "merge" if row.phase == "ensemble" else str(row.epoch)


def run_world(run: RunData) -> dict[str, Any] | None:
    """The world marker of the run's base model, or None when the run is not on a world folder."""
    from loratune.world.folder import find_world

    return find_world(run.base_model)


def _judge(samples: EpochSamples, target: str) -> Any:
    from PIL import Image

    from loratune.world.oracle import judge

    images, prompts = [], []
    for s in samples.images:
        try:
            with Image.open(s.path) as img:
                images.append(img.convert("RGB"))
            prompts.append(s.prompt)
        except OSError:
            continue  # a sample the report cannot read is shown as missing in the grids, not judged here
    return judge(images, prompts, target) if images else None


def _epoch_composites(info: TrialInfo) -> dict[int, float | None]:
    epochs = (info.scores or {}).get("epochs")
    out: dict[int, float | None] = {}
    for row in epochs if isinstance(epochs, list) else []:
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            value = row.get("composite")
            out[row["epoch"]] = float(value) if isinstance(value, (int, float)) else None
    for epoch, value in info.trial.intermediate_values.items():
        out.setdefault(int(epoch), float(value))
    return out


def oracle_rows(run: RunData, target: str) -> list[OracleRow]:
    """The base model's samples (when kept) and every trial's sampled epochs, judged by the oracle."""
    rows = []
    if run.base_samples is not None and (v := _judge(run.base_samples, target)) is not None:
        rows.append(OracleRow(None, "base model", None, None, v.identity_rate, v.identity_mean, v.scene_accuracy,
                              v.quality, v.diversity, False))
    for info in sorted(run.trials, key=lambda i: i.number):
        composites = _epoch_composites(info)
        for samples in info.epochs:
            v = _judge(samples, target)
            if v is None:
                continue
            rows.append(OracleRow(info.number, info.phase, samples.epoch, composites.get(samples.epoch),
                                  v.identity_rate, v.identity_mean, v.scene_accuracy, v.quality, v.diversity,
                                  samples.epoch == info.best_epoch))
    return rows


def oracle_score(row: OracleRow) -> float:
    """``Verdict.score``: identity rate × scene accuracy."""
    return (row.identity or 0.0) * row.scene


def spearman(rows: list[OracleRow]) -> float | None:
    """Rank correlation of the composite with the oracle score over the trials' epochs (None: under 3, or constant)."""
    from scipy.stats import spearmanr

    pairs = [(r.composite, oracle_score(r)) for r in rows if r.trial is not None and r.composite is not None]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return None
    return float(spearmanr(*zip(*pairs)).statistic)


def headline(run: RunData, rows: list[OracleRow], held: tuple[int, int] | None) -> list[tuple[str, OracleRow]]:
    """The comparisons a user asks first: the base model, the baseline trial at its best epoch, and what RUN/best
    holds (``held``: its trial and epoch, from ``best.json``)."""
    def best_of(trial: int | None) -> OracleRow | None:
        return next((r for r in rows if r.trial == trial and r.best), None)

    parts = []
    base = next((r for r in rows if r.trial is None), None)
    if base is not None:
        parts.append(("base model, no LoRA", base))
    baseline = next((i.number for i in run.trials if i.phase == "baseline"), None)
    if baseline is not None and (row := best_of(baseline)) is not None:
        parts.append((f"baseline trial #{baseline}, epoch {row.epoch}", row))
    if held is not None and (row := next((r for r in rows if (r.trial, r.epoch) == held), None)) is not None:
        parts.append((f"RUN/best: trial #{held[0]}, epoch {held[1]}", row))
    return parts


def _headline(run: RunData, rows: list[OracleRow], held: tuple[int, int] | None) -> str:
    cells = "".join(f"<tr><td>{escape(name)}</td><td class='num'>{_rate(r.identity)}</td>"
                    f"<td class='num'>{_rate(r.scene)}</td><td class='num'>{_rate(oracle_score(r))}</td></tr>"
                    for name, r in headline(run, rows, held))
    bests = [r for r in rows if r.best]
    if bests:
        median = statistics.median(oracle_score(r) for r in bests)
        cells += (f"<tr><td>median trial (best epochs of {len(bests)})</td><td></td><td></td>"
                  f"<td class='num'>{_rate(median)}</td></tr>")
    return ("<table style='width:auto' id='oracle-headline'><thead><tr><th></th><th>identity rate</th>"
            f"<th>scene accuracy</th><th>oracle score</th></tr></thead><tbody>{cells}</tbody></table>")


def oracle_section(run: RunData, held: tuple[int, int] | None) -> str:
    """The section's HTML, or "" when the run is not on a world folder."""
    world = run_world(run)
    if world is None:
        return ""
    target = str(world["target"])
    rows = oracle_rows(run, target)
    if not rows:
        return ""
    rho = spearman(rows)
    body = "".join(
        f"<tr{' class=best-row' if r.trial is not None and (r.trial, r.epoch) == held else ''}>"
        f"<td>{'—' if r.trial is None else f'#{r.trial}'}</td><td>{escape(r.phase)}</td>"
        f"<td class='num'>{_epoch(r)}{' ★' if r.best else ''}</td>"
        f"<td class='num'>{fmt(r.composite, 3)}</td><td class='num'>{_rate(r.identity)}</td>"
        f"<td class='num'>{_rate(r.traits)}</td><td class='num'>{_rate(r.scene)}</td>"
        f"<td class='num'>{_rate(oracle_score(r))}</td><td class='num'>{_rate(r.quality)}</td>"
        f"<td class='num'>{fmt(r.diversity, 3)}</td></tr>"
        for r in rows)
    head = "".join(f"<th>{h}</th>" for h in ("trial", "phase", "epoch", "composite", "identity rate", "traits",
                                              "scene", "oracle score", "quality", "diversity"))
    agreement = ("" if rho is None else
                 f"<p>Spearman ρ between the composite and the oracle score over {sum(r.trial is not None and r.composite is not None for r in rows)} "
                 f"scored epochs: <b id='oracle-spearman'>{rho:.2f}</b> (1: loratune ranks the epochs exactly as "
                 "the truth does).</p>")
    return (
        '<section class="card" id="oracle"><h2>Known truth: the oracle\'s verdict</h2>'
        f"<p class='muted'>This run is on loratune's procedural world (target <code>{escape(target)}</code>, world "
        f"folder <code>{escape(str(Path(world['root'])))}</code>), where the truth can be read from the pixels: "
        "<i>identity rate</i> is the share of samples showing the target with its shirt and hair, <i>traits</i> the "
        "share of its trait checks passed, <i>scene</i> the share drawn in the scene the prompt asked for, and the "
        "<i>oracle score</i> is identity rate × scene. ★ marks each trial's best epoch by the composite.</p>"
        f"{_headline(run, rows, held)}{agreement}"
        f"<div class='scroll'><table id='oracle-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "</div></section>"
    )
