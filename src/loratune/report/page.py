"""Assembling the report page: one HTML string with inline CSS, inline plotly.js and inline thumbnails."""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from html import escape
from pathlib import Path
from typing import Any

from loratune.report import learning_section
from loratune.report.audit_section import audit_section
from loratune.report.calibration_section import calibrated_best, calibration_section
from loratune.report.cost_section import cost_section
from loratune.report.figures import Figure, objective_names
from loratune.report.format import fmt
from loratune.report.oracle_section import oracle_section
from loratune.report.pick_section import held, pick_section
from loratune.report.rundir import RunData, TrialInfo
from loratune.report.samples_section import samples_section
from loratune.runfolder import RunFolder

_CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#dde2ea; --accent:#3b5bdb; --best:#e8590c; --warn-bg:#fff4e6;
        --warn:#d9480f; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0;
       background: #f6f7fb; }
header { background: #1d2330; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: #c5cbd8; }
nav { background: #fff; border-bottom: 1px solid var(--line); padding: 8px 32px; position: sticky; top: 0; z-index: 5; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
main { padding: 16px 32px 48px; max-width: 1400px; }
section.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; margin: 16px 0; }
h2 { font-size: 18px; margin: 0 0 12px; }
h3 { font-size: 15px; margin: 12px 0 8px; }
.banner { background: var(--warn-bg); border: 2px solid var(--warn); color: #7a2e0b; border-radius: 8px;
          padding: 12px 18px; margin: 16px 0; font-size: 15px; }
.banner strong { color: var(--warn); }
.kpis { display: flex; gap: 24px; flex-wrap: wrap; }
.kpi { min-width: 140px; }
.kpi .v { font-size: 22px; font-weight: 600; }
.kpi .k { color: var(--muted); }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f3f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best-row td { background: #fff4e6; }
.state-COMPLETE { color: #2b8a3e; } .state-PRUNED { color: #868e96; } .state-FAIL { color: #c92a2a; }
.state-RUNNING { color: var(--accent); }
.muted { color: var(--muted); }
.bar { display: inline-block; height: 8px; background: var(--accent); border-radius: 2px; vertical-align: middle;
       margin-right: 4px; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.fig { border: 1px solid var(--line); border-radius: 6px; padding: 8px; min-height: 120px; min-width: 0;
       overflow: hidden; }
.fig .note { color: var(--muted); font-size: 12px; }
.trial { border-top: 1px solid var(--line); padding-top: 8px; margin-top: 12px; }
.trial summary { cursor: pointer; font-weight: 600; }
.epochs { display: flex; flex-wrap: wrap; gap: 14px; margin-top: 8px; }
.epoch { border: 2px solid var(--line); border-radius: 6px; padding: 6px; }
.epoch.best-epoch { border-color: var(--best); box-shadow: 0 0 0 2px #ffd8a8; }
.epoch .label { font-size: 12px; color: var(--muted); margin-bottom: 4px; }
.epoch.best-epoch .label { color: var(--best); font-weight: 700; }
table.grid { width: auto; }
table.grid td, table.grid th { border: none; padding: 2px; position: static; background: none; }
table.grid th.prompt { max-width: 130px; font-weight: normal; font-size: 11px; color: var(--muted); text-align: right; }
img.audit-thumb { width: 64px; height: auto; display: block; border-radius: 3px; }
table.grid img { display: block; width: var(--thumb); height: auto; image-rendering: auto; border-radius: 3px; }
code { background: #f1f3f8; padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
#trial-table td { white-space: nowrap; }
#trial-table td.muted { white-space: normal; min-width: 140px; }
.tie { font-size: 11px; color: var(--warn); border: 1px solid var(--warn); border-radius: 3px; padding: 0 3px; }
table.explained td:last-child { max-width: 520px; }
.epoch.base { border-style: dashed; border-color: #868e96; }
.epoch.base .label { color: #495057; font-weight: 600; }
table.grid a { display: block; }
@media (max-width: 900px) { main { padding: 8px 10px 32px; } nav { padding: 8px 10px; } header { padding: 14px 10px; }
  section.card { padding: 12px 10px; } .figs { grid-template-columns: 1fr; } }
"""


def distinct_digits(values: list[float], least: int = 4, most: int = 8) -> int:
    """The fewest significant digits (``least`` to ``most``) at which different values also read differently.

    >>> distinct_digits([0.42991, 0.42994, 0.5])
    5
    """
    for digits in range(least, most + 1):
        shown: dict[str, float] = {}
        if all(shown.setdefault(f"{v:.{digits}g}", v) == v for v in values):
            return digits
    return most


def ties(values: list[float | None], digits: int) -> set[float]:
    """The values that two or more trials share (equal when shown at ``digits``): the table marks them "tie"."""
    counts = Counter(f"{v:.{digits}g}" for v in values if v is not None)
    return {v for v in values if v is not None and counts[f"{v:.{digits}g}"] > 1}


def rank_trials(run: RunData) -> list[TrialInfo]:
    """Best first by the search's own rule (``loratune.search.selection``: every trial with a scored epoch competes
    with its best epoch, pruned ones included), then trials without a candidate epoch by number."""
    from loratune.search.selection import ranked

    order = {t.number: i for i, t in enumerate(ranked([info.trial for info in run.trials], run_search(run)))}
    return sorted(run.trials, key=lambda info: (order.get(info.number, len(order)), info.number))


def run_search(run: RunData) -> Any:
    """The run's ``search`` section, typed (defaults when the stored one does not validate: an older run)."""
    from pydantic import ValidationError

    from loratune.search.config import SearchSection

    try:
        return SearchSection.model_validate(run.config.get("search") or {})
    except ValidationError:
        return SearchSection()


def _banner(run: RunData) -> str:
    if not run.any_stand_in:
        return ""
    items = "".join(f"<li>{escape(n)}</li>" for n in run.stand_in_notes)
    if run.world_notes:
        world = "".join(f"<li>{escape(n)}</li>" for n in run.world_notes)
        return (
            '<div class="banner" id="stand-in-warning" role="alert"><strong>⚠ Stand-in weights.</strong> '
            "This run is on loratune's procedural world. Randomly initialised stand-ins (their numbers mean "
            f"nothing, and the composite should give them no weight):<ul>{items}</ul>World-trained by loratune "
            "(their scores carry meaning, but only about the procedural world, never about real "
            f"images):<ul>{world}</ul></div>"
        )
    return (
        '<div class="banner" id="stand-in-warning" role="alert"><strong>⚠ Stand-in weights.</strong> '
        "Some models in this run are randomly initialised stand-ins (built by <code>loratune.tiny</code>), so the "
        "scores, rankings and importances below say nothing about image quality; they only show that the pipeline "
        f"works.<ul>{items}</ul></div>"
    )


def _weights_flag(stand_in: bool, model: str | None) -> str:
    from loratune.world.folder import find_world

    if stand_in:
        return "<b style='color:var(--warn)'>stand-in</b>"
    return "<b title='trained by loratune on its procedural world'>world-trained</b>" if find_world(model) else "real"


def _summary(run: RunData, ranked: list[TrialInfo]) -> str:
    states = Counter(t.trial.state.name for t in run.trials)
    phases = Counter(t.phase for t in run.trials)
    names = objective_names(run)
    best = ranked[0] if ranked and ranked[0].composite is not None and ranked[0].attrs.get("lora") else None
    kpis = [("trials", len(run.trials))] + [(s.lower(), n) for s, n in sorted(states.items())]
    if best is not None:
        if run.multi_objective:
            kpis.append(("Pareto-optimal trials", len(run.study.best_trials)))
        else:
            digits = distinct_digits([c for c in (info.composite for info in ranked) if c is not None])
            kpis.append((f"best {names[0]}", fmt(best.composite, digits)))
            kpis.append(("best trial", (f"#{best.number} <span class='state-{best.trial.state.name}'>"
                                       f"({best.trial.state.name.lower()})</span>")))
            kpis.append(("its best epoch", _best_epoch(best)))
    if (calibrated := calibrated_best(run)) is not None:
        kpis.append(("RUN/best by your taste (calibrated)", calibrated))
    elif (held := _held(run)) is not None:
        kpis.append(("RUN/best", held))
    kpi_html = "".join(f'<div class="kpi"><div class="v">{v}</div><div class="k">{escape(k)}</div></div>' for k, v in kpis)
    directions = ", ".join(f"{n}: {d.name.lower()}" for n, d in zip(names, run.study.directions))
    phase_line = ", ".join(f"{escape(p)} {n}" for p, n in phases.items())
    best_dir = RunFolder(run.run_dir).best
    best_files = sorted(p.name for p in best_dir.iterdir()) if best_dir.is_dir() else []
    best_line = (f"<p>Best LoRA and its evidence: <code>{escape(str(best_dir))}</code> "
                 f"({escape(', '.join(best_files[:8]))}{' …' if len(best_files) > 8 else ''})</p>" if best_files else "")
    params = _effective_config(run, best) if best is not None else ""
    return (
        f'<section class="card" id="summary"><h2>Summary</h2><div class="kpis">{kpi_html}</div>'
        f"<p class='muted'>Objectives: {escape(directions)}. Phases: {phase_line or '–'}.</p>{best_line}{params}</section>"
    )


def _held(run: RunData) -> str | None:
    """"#trial · epoch N" of what RUN/best holds (finalists may have picked another than the table's first)."""
    pick = held(run.run_dir)
    return None if pick is None else f"#{pick[0]} · epoch {pick[1]}"


def _best_epoch(info: TrialInfo) -> str:
    """The trial's best epoch; the ensemble has none (it is one merge of other trials' best epochs)."""
    return "merge" if info.phase == "ensemble" else fmt(info.best_epoch)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# The settings a reader looks for first, in this order; the rest of the train section follows alphabetically.
_CONFIG_FIRST = ("optimizer", "learning_rate", "text_encoder_lr", "rank", "alpha", "batch_size",
                 "gradient_accumulation", "epochs", "resolution", "lr_scheduler", "train_text_encoder",
                 "min_snr_gamma", "noise_offset", "mixed_precision", "seed")


def _effective_config(run: RunData, best: TrialInfo) -> str:
    """The best trial's whole training setup (its params.json ``train`` section, the run's dataset resolution), with
    the values the search chose marked; a trial without that record shows its searched values only."""
    searched = {k.removeprefix("train.").removeprefix("dataset."): v for k, v in best.trial.params.items()}
    train = best.params.get("train") if isinstance(best.params.get("train"), dict) else None
    if train is None:
        settings = dict(searched)
        title, note = "Best trial's searched parameters", "this trial's folder records no full training config"
    else:
        settings = _flatten(train)
        if train.get("alpha") is None and "rank" in train:
            settings["alpha"] = f"{fmt(train['rank'])} (= rank)"  # the trainer's default: scale alpha / rank = 1
        dataset = run.config.get("dataset") if isinstance(run.config.get("dataset"), dict) else {}
        settings["resolution"] = searched.get("resolution", dataset.get("resolution", 512))
        title, note = "Best trial's training config", "bold: chosen by the search; the rest is the run's config"
    order = [k for k in _CONFIG_FIRST if k in settings] + sorted(k for k in settings if k not in _CONFIG_FIRST)
    chosen = "<b>{}</b> <span class='muted'>searched</span>"
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{chosen.format(fmt(settings[k])) if k in searched else fmt(settings[k])}"
                   "</td></tr>" for k in order)
    if not rows:
        return ""
    return (f"<details id='best-config' open><summary><b>{escape(title)}</b> "
            f"<span class='muted'>({escape(note)})</span></summary>"
            f"<table class='config' style='width:auto'>{rows}</table></details>")


def _figures(figures: list[Figure]) -> str:
    blocks = []
    for fig in figures:
        note = f'<div class="note">{escape(fig.note)}</div>' if fig.note else ""
        body = fig.html if fig.html is not None else ""
        blocks.append(f'<div class="fig" id="fig-{escape(fig.key)}"><h3>{escape(fig.title)}</h3>{note}{body}</div>')
    return f'<section class="card" id="plots"><h2>Search</h2><div class="figs">{"".join(blocks)}</div></section>'


def _table(run: RunData, ranked: list[TrialInfo]) -> str:
    axes: list[str] = []
    for info in ranked:
        for axis in info.axes:
            if axis not in axes:
                axes.append(axis)
    params: list[str] = []
    for info in ranked:
        for name in info.trial.params:
            if name not in params:
                params.append(name)
    names = objective_names(run)
    value_cols = names if run.multi_objective else ["composite"]
    head = (["rank", "trial", "phase", "state", *value_cols, "best epoch"] + [f"{a} (0–1)" for a in axes] + params
            + ["note"])
    composites = [info.composite for info in ranked]
    digits = distinct_digits([c for c in composites if c is not None])
    tied = ties(composites, digits)
    rows = []
    for rank, info in enumerate(ranked, 1):
        trial = info.trial
        if run.multi_objective:
            values = [f'<td class="num">{fmt(v)}</td>' for v in (trial.values or [None] * len(names))]
        else:
            composite = info.composite
            shown = fmt(composite, digits)
            if trial.state.name != "COMPLETE" and composite is not None:
                shown = f"<i>{shown}</i>"
            if composite in tied:
                shown += (' <span class="tie" title="the same composite as another trial, to every digit shown">'
                          "tie</span>")
            values = [f'<td class="num">{shown}</td>']
        axis_cells = []
        for axis in axes:
            v = info.axes.get(axis)
            if v is None and axis in info.axes:  # scored but not computable: say so, never show it as a number
                axis_cells.append('<td class="num missing" title="this axis could not be computed">missing</td>')
                continue
            bar = f'<span class="bar" style="width:{max(0.0, min(1.0, v)) * 36:.0f}px"></span>' if v is not None else ""
            axis_cells.append(f'<td class="num">{bar}{fmt(v, 3)}</td>')
        param_cells = [f"<td>{fmt(trial.params.get(p), 3)}</td>" for p in params]
        link = f'<a href="#trial-{trial.number}">#{trial.number}</a>' if info.epochs else f"#{trial.number}"
        cls = ' class="best-row"' if rank == 1 and trial.state.name == "COMPLETE" else ""
        rows.append(
            f"<tr{cls}><td class='num'>{rank}</td><td>{link}</td><td>{escape(info.phase)}</td>"
            f"<td class='state-{trial.state.name}'>{trial.state.name.lower()}</td>{''.join(values)}"
            f"<td class='num'>{_best_epoch(info)}</td>{''.join(axis_cells)}{''.join(param_cells)}"
            f"<td class='muted'>{escape(info.note)}</td></tr>"
        )
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    note = ("Axes are normalised to 0–1 at the trial's best epoch; the composite is their weighted mean (a missing axis "
            "is left out and the weights renormalised). Pruned trials show their best reported composite in italics; "
            "composites get as many digits as it takes to tell them apart, and equal ones say <i>tie</i>.")
    return (f'<section class="card" id="trials"><h2>Trials</h2><p class="muted">{note}</p>'
            f'<div class="scroll"><table id="trial-table"><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div></section>')


def _models(run: RunData) -> str:
    rows = []
    if run.base_model:
        flag = _weights_flag(run.base_model_stand_in, run.base_model)
        family = run.config.get("model", {}).get("family", "") if isinstance(run.config.get("model"), dict) else ""
        rows.append(f"<tr><td>base model</td><td>{escape(str(family))}</td><td><code>{escape(run.base_model)}</code>"
                    f"</td><td>{flag}</td><td></td></tr>")
    for b in run.backends:
        flag = _weights_flag(b.stand_in, b.model)
        rows.append(f"<tr><td>{escape(b.axis)}</td><td>{escape(b.name)}</td><td><code>{escape(str(b.model))}</code>"
                    f"</td><td>{flag}</td><td>{escape(b.licence or '')}</td></tr>")
    if not rows:
        return ('<section class="card" id="models"><h2>Models</h2><p class="muted">The run records no models '
                "(no config.yaml or scores.json).</p></section>")
    head = "<tr><th>role / axis</th><th>backend</th><th>model id or path</th><th>weights</th><th>licence</th></tr>"
    extra = ""
    evaluation = run.evaluation or {}
    if evaluation.get("composite_note"):
        extra += f"<p><b>Missing axes.</b> {escape(str(evaluation['composite_note']))}</p>"
    weights = evaluation.get("composite_weights_used")
    if isinstance(weights, dict) and weights:
        extra += ("<p class='muted'>Composite weights used: "
                  + escape(", ".join(f"{k} {fmt(v, 3)}" for k, v in weights.items())) + "</p>")
    versions = evaluation.get("versions")
    if isinstance(versions, dict) and versions:
        extra += ("<p class='muted'>Library versions: "
                  + escape(", ".join(f"{k} {v}" for k, v in versions.items() if v)) + "</p>")
    return (f'<section class="card" id="models"><h2>Models and backends</h2><table><thead>{head}</thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{extra}</section>')


def render_page(run: RunData, figures: list[Figure], plotly_js: str, thumb: int = 128, all_epochs_for: int = 5,
                max_images: int = 1500, page_dir: Path | None = None) -> str:
    """The page; ``page_dir`` is where it will be written (image links are relative to it; default: the run)."""
    ranked = rank_trials(run)
    oracle = oracle_section(run, held(run.run_dir))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"loratune report — {Path(run.run_dir).resolve().name}"
    pick, cost = pick_section(run), cost_section(run)
    nav = "".join(f'<a href="#{i}">{n}</a>' for i, n in [("summary", "Summary"), *([("pick", "Pick")] if pick else []),
                                                         *([("cost", "Cost")] if cost else []),
                                                         ("plots", "Search"),
                                                         ("trials", "Trials"),
                                                         *([("oracle", "Known truth")] if oracle else []),
                                                         ("samples", "Samples"),
                                                         ("audit", "Dataset audit"), ("models", "Models")])
    body = "".join([_banner(run), _summary(run, ranked), pick, cost, calibration_section(run), _figures(figures),
                    _table(run, ranked), oracle,
                    samples_section(ranked, thumb, all_epochs_for, max_images, page_dir or run.run_dir, run.base_samples),
                    audit_section(run), _models(run)])
    # plotly.js goes in the head as a plain inline script: no CDN, no network, defined before any figure's script.
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}{learning_section.CSS}:root{{--thumb:{thumb}px}}</style>"
        f'<script type="text/javascript">{plotly_js}</script></head><body>'
        f"<header><h1>{escape(title)}</h1><div class='sub'>{escape(str(Path(run.run_dir).resolve()))} · "
        f"generated {when} by loratune</div></header><nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
