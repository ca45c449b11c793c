"""The report's plots: Optuna's own plotly figures, rendered as HTML fragments that share one inline plotly.js.

Each figure is built independently; one that cannot be drawn (too few trials for importances, a single-objective plot
on a multi-objective study) becomes a short note instead of breaking the report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loratune.errors import first_line
from loratune.search.pruning import COMPOSITE_SE

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

    from loratune.report.rundir import RunData, TrialInfo


@dataclass
class Figure:
    key: str
    title: str
    html: str | None  # the plot's <div> + <script>, or None when it could not be drawn
    note: str | None = None  # why not, or what the reader should know


_PLOT_CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "png"}}


def _render(fig: go.Figure, key: str) -> str:
    fig.update_layout(template="plotly_white", width=None, autosize=True, height=420, margin={"l": 60, "r": 30, "t": 50, "b": 50})
    # plotly.js itself is embedded once in the page head; each figure only carries its data.
    return fig.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG, div_id=f"plot-{key}")


def _figure(key: str, title: str, build: Callable[[], go.Figure | None], note: str | None = None) -> Figure:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning and "no trials" warnings
            fig = build()
    except Exception as err:  # noqa: BLE001 - optuna raises ValueError/RuntimeError/... on degenerate studies
        return Figure(key, title, None, f"not available: {first_line(err)}")
    if fig is None:
        return Figure(key, title, None, note or "not available for this run")
    return Figure(key, title, _render(fig, key), note)


def _completed(study: optuna.study.Study) -> list[optuna.trial.FrozenTrial]:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def build_figures(run: RunData) -> list[Figure]:
    """All plots for ``run``, in the order the report shows them."""
    import optuna.visualization as vis

    study = run.study
    completed = _completed(study)
    names = objective_names(run)
    figures: list[Figure] = []
    if run.multi_objective:
        figures.append(_figure(
            "pareto", "Pareto front",
            lambda: _pareto(study, names) if len(names) in (2, 3) else None,
            note="the Pareto front is drawn for 2 or 3 objectives" if len(names) not in (2, 3) else
            "red points: non-dominated trials (no other trial is better on every objective)",
        ))
        for i, name in enumerate(names):
            figures.append(_figure(
                f"history-{i}", f"Optimization history: {name}",
                lambda i=i, name=name: vis.plot_optimization_history(study, target=lambda t: t.values[i], target_name=name),
            ))
    else:
        figures.append(_figure("history", "Optimization history", lambda: vis.plot_optimization_history(
            study, target_name=names[0])))
        figures.append(_figure(
            "intermediate", "Composite per epoch",
            lambda: _per_epoch(run),
            note="each line is a trial; every epoch's checkpoint is scored, pruned trials stop early (dashed); bars: "
                 "± one standard error of the composite over the epoch's samples",
        ))
        figures.append(_figure("best-axes", "RUN/best's trial: every axis per epoch", lambda: _best_axes(run),
                               note="normalised 0–1; the composite is their weighted mean"))
    figures.append(_figure(
        "importances", "Parameter importances",
        lambda: vis.plot_param_importances(study) if len(completed) >= 2 and _varied_params(completed) else None,
        note=None if len(completed) >= 2 else "needs at least 2 completed trials",
    ))
    if run.multi_objective:
        figures.append(_figure(
            "parallel", f"Parallel coordinates ({names[0]})",
            lambda: vis.plot_parallel_coordinate(study, target=lambda t: t.values[0], target_name=names[0])
            if completed else None,
        ))
    else:
        figures.append(_figure("parallel", "Parallel coordinates",
                               lambda: vis.plot_parallel_coordinate(study, target_name=names[0]) if completed else None))
    figures.append(_figure("validation", "Validation loss per epoch", lambda: _validation(run),
                           note="each trial's deterministic validation loss (the same images, timesteps and noise "
                                "every epoch): rising while the composite still rises means the LoRA is leaving the "
                                "data"))
    figures.append(_figure("loss", "Training loss per step", lambda: _losses(run),
                           note="each trial's loss per optimizer step (train_log.jsonl), with a moving mean; the "
                                "full curves, lr and Prodigy's d are in each trial's logs/ folder for TensorBoard"))
    figures.append(_figure("timeline", "Timeline", lambda: vis.plot_timeline(study) if study.trials else None,
                           note="when each trial ran and how it ended (complete, pruned, failed)"))
    return figures


def trial_label(info: TrialInfo) -> str:
    """How the report names a trial everywhere (table, samples, plot legends): ``trial #4 (refine)``."""
    return f"trial #{info.number} ({info.phase})"


def _per_epoch(run: RunData) -> go.Figure | None:
    """Every trial's composite per scored epoch: integer epochs on x, one named line per trial in the legend."""
    import plotly.graph_objects as go

    rows = [info for info in run.trials if info.trial.intermediate_values]
    if not rows:
        return None
    fig = go.Figure()
    for info in rows:
        values = sorted(info.trial.intermediate_values.items())
        pruned = info.trial.state.name == "PRUNED"
        # ± one standard error over the epoch's samples (``composite_se``): how far apart two epochs must be to differ
        spread = info.trial.user_attrs.get(COMPOSITE_SE) or {}
        bars = [spread.get(str(e)) for e, _ in values]
        error = {"type": "data", "array": [b if b is not None else 0.0 for b in bars], "thickness": 1, "width": 3}
        fig.add_trace(go.Scatter(x=[e for e, _ in values], y=[v for _, v in values], mode="lines+markers",
                                 name=trial_label(info) + (" pruned" if pruned else ""),
                                 line={"dash": "dash" if pruned else "solid"},
                                 error_y=error if any(b is not None for b in bars) else None))
    epochs = sorted({e for info in rows for e in info.trial.intermediate_values})
    fig.update_layout(xaxis={"title": "epoch", "tickmode": "array", "tickvals": epochs},
                      yaxis_title="composite", showlegend=True, legend_title_text="trial")
    return fig


def _validation(run: RunData) -> go.Figure | None:
    """Every trial's validation loss per epoch (``scores.json``), one line per trial."""
    import plotly.graph_objects as go

    fig = go.Figure()
    epochs: set[int] = set()
    for info in run.trials:
        rows = [(e["epoch"], e["validation_loss"]) for e in (info.scores or {}).get("epochs") or []
                if isinstance(e, dict) and isinstance(e.get("validation_loss"), (int, float))]
        if rows:
            epochs |= {e for e, _ in rows}
            fig.add_trace(go.Scatter(x=[e for e, _ in rows], y=[v for _, v in rows], mode="lines+markers",
                                     name=trial_label(info)))
    if not epochs:
        return None
    fig.update_layout(xaxis={"title": "epoch", "tickmode": "array", "tickvals": sorted(epochs)},
                      yaxis_title="validation loss", showlegend=True, legend_title_text="trial")
    return fig


def _losses(run: RunData) -> go.Figure | None:
    """Training loss per optimizer step for every trial that logged one; faint raw points, a bold moving mean."""
    import plotly.graph_objects as go

    rows = [info for info in run.trials if info.losses]
    if not rows:
        return None
    fig = go.Figure()
    palette = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#f08c00", "#5c940d", "#862e9c"]
    for i, info in enumerate(rows):
        steps = [s for s, _ in info.losses]
        losses = [v for _, v in info.losses]
        color = palette[i % len(palette)]
        window = max(1, len(losses) // 20)  # the diffusion loss is noisy step to step: ~20 points of smoothing
        mean = [sum(losses[max(0, j - window + 1):j + 1]) / len(losses[max(0, j - window + 1):j + 1])
                for j in range(len(losses))]
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="markers", marker={"size": 3, "color": color, "opacity": 0.35},
                                 name=trial_label(info), legendgroup=str(info.number), showlegend=False,
                                 hovertemplate="step %{x}: loss %{y:.4f}<extra>" + trial_label(info) + "</extra>"))
        fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", line={"color": color, "width": 2},
                                 name=trial_label(info), legendgroup=str(info.number)))
    fig.update_layout(xaxis={"title": "optimizer step", "tickformat": "d"}, yaxis_title="loss", showlegend=True,
                      legend_title_text="trial")
    return fig


def _best_axes(run: RunData) -> go.Figure | None:
    """The best trial's per-epoch scores (the runner's scores.json ``epochs``): where each axis peaked."""
    import plotly.graph_objects as go

    from loratune.report.page import rank_trials
    from loratune.report.pick_section import held

    ranked = rank_trials(run)  # the search's own order, which may put a pruned trial with a better epoch first
    pick = held(run.run_dir)  # what RUN/best holds (finalists or calibrated weights may have chosen another)
    info = next((i for i in ranked if pick is not None and i.number == pick[0]), ranked[0] if ranked else None)
    best_number = info.number if info is not None else None
    epochs = (info.scores or {}).get("epochs") if info is not None else None
    if not isinstance(epochs, list) or not epochs:
        return None
    rows = sorted((e for e in epochs if isinstance(e, dict) and "epoch" in e), key=lambda e: e["epoch"])
    fig = go.Figure()
    axes: list[str] = []
    for row in rows:
        axes += [a for a in (row.get("axes") or {}) if a not in axes]
    for axis in axes:
        fig.add_trace(go.Scatter(x=[r["epoch"] for r in rows], y=[(r.get("axes") or {}).get(axis) for r in rows],
                                 mode="lines+markers", name=axis))
    fig.add_trace(go.Scatter(x=[r["epoch"] for r in rows], y=[r.get("composite") for r in rows],
                             mode="lines+markers", name="composite", line={"width": 4, "color": "#1d2330"}))
    fig.update_layout(title=f"Trial #{best_number}", yaxis_title="normalised score",
                      xaxis={"title": "epoch", "tickmode": "array", "tickvals": [r["epoch"] for r in rows]})
    return fig


def _pareto(study: optuna.study.Study, names: list[str]) -> go.Figure:
    import optuna.visualization as vis

    fig = vis.plot_pareto_front(study, target_names=names)
    # optuna adds two colour bars (trial number for dominated and best trials) that take a third of a half-width
    # plot; the trial number is in the hover text anyway.
    fig.update_traces(marker_showscale=False)
    return fig


def objective_names(run: RunData) -> list[str]:
    """Objective names: the study's metric names when the runner set them, else axis names from the config."""
    study = run.study
    if study.metric_names:
        return [str(n) for n in study.metric_names]
    recorded = study.user_attrs.get("directions")  # the runner records {axis: direction} on the study
    if isinstance(recorded, dict) and len(recorded) == len(study.directions):
        return [str(n) for n in recorded]
    if not run.multi_objective:
        return ["composite"]
    search = run.config.get("search") if isinstance(run.config.get("search"), dict) else {}
    # search.directions is an ordered mapping axis -> direction, the study's objectives in that order.
    directions = search.get("directions") if isinstance(search, dict) else None
    if isinstance(directions, dict) and len(directions) == len(study.directions):
        return [str(o) for o in directions]
    return [f"objective {i}" for i in range(len(study.directions))]


def _varied_params(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Importances need at least one parameter that took two values."""
    seen: dict[str, set[str]] = {}
    for trial in trials:
        for name, value in trial.params.items():
            seen.setdefault(name, set()).add(repr(value))
    return any(len(values) > 1 for values in seen.values())
