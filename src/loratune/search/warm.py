"""Warm start: what earlier runs learned seeds a new study (``--warm-start RUN``, ``search.warm_start``).

A user who has trained one character has learned most of what the second needs: the learning-rate scale for the
optimizer, the useful ranks, how many epochs before it burns. So when a run starts, the finished trials of the earlier
runs (same model family) are read once and kept in the study (user attr ``warm_start``):

* **their settings**, expressed in this run's search space from each trial's effective train config (a renamed or
  narrowed space is mapped; a setting the new space cannot express — rank 128 where the choices stop at 64, a learning
  rate outside the range — skips that trial, and the run says how many and why);
* **their outcomes as ranks within their own run** (a quantile: the source's best trial is near 1, its worst near 0),
  never their composites: another character, another scorer set or other weights put composites on another scale.
  The samplers see them through ``scored_view``: the source trials as completed trials at their quantile, this run's
  own trials at their quantile among themselves, so TPE (or GP) starts from the earlier runs' picture and this run's
  own results take over as they come. They never enter this run's study as trials: its budget, history, importances,
  RUN/best and report count its own trials only;
* **their best settings first**: the ``search.phases.warm_trials`` best distinct settings are enqueued (Optuna's
  ``enqueue_trial``) ahead of the baseline, as the first trials of the search phase (inside the budget).

>>> quantiles([0.2, 0.8, 0.5])
[0.16666666666666666, 0.8333333333333334, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from loratune.config import Config, load_config, validate_config
from loratune.errors import LoratuneError
from loratune.runfolder import CONFIG_FILE, STUDY_NAME, RunFolder
from loratune.search.config import ParamSpec
from loratune.search.space import _read, distribution, is_active, ordered

WARM_ATTR = "warm_start"  # the study's user attr holding the sources and their mapped trials


def quantiles(values: Sequence[float]) -> list[float]:
    """Each value's rank within ``values`` as a quantile in (0, 1): (rank + 0.5) / n, ties sharing their mean rank."""
    from scipy.stats import rankdata

    n = len(values)
    return [(float(r) - 0.5) / n for r in rankdata(values)] if n else []


def read_source(path: Path, config: Config) -> dict[str, Any]:
    """One earlier run: its trials that have a scored best epoch, mapped into ``config``'s search space, with their
    quantile within that run; and the reasons trials were skipped. Raises ``LoratuneError`` (one line) when ``path``
    is not a finished run or trains another model family."""
    from loratune.search.phases import BUDGET_PHASES
    from loratune.search.selection import ranked
    from loratune.search.storage import open_storage, study_exists

    run = RunFolder(path)
    if not run.config.is_file():
        raise LoratuneError(f"--warm-start {path}: not a loratune run (no {CONFIG_FILE})")
    source = load_config(run.config)
    if source.model.family != config.model.family:
        raise LoratuneError(f"--warm-start {path}: a {source.model.family} run; this run trains {config.model.family} "
                            "(warm start needs the same model family)")
    if source.search.directions or config.search.directions:
        raise LoratuneError(f"--warm-start {path}: not for multi-objective runs (outcomes are ranks of one composite)")
    storage = open_storage(run.root, source.search, heartbeat=False)
    if not study_exists(storage):
        raise LoratuneError(f"--warm-start {path}: no study in it")
    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials(deepcopy=False)
    # Its own trials, best first (the selection rule's order; pruned ones at their best epoch), not the ensemble (its
    # settings are a merge) and not trials it was itself warm-started with (they are no trials of its study).
    own = [t for t in ranked(trials, source.search) if t.user_attrs.get("phase") in BUDGET_PHASES]
    composites = [float(t.user_attrs["composite"]) for t in own]
    rows, skipped = [], {}
    for t, q in zip(own, quantiles(composites)):
        params, why = express(_trial_config(run, t, source), config.search.space)
        if params is None:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        rows.append({"trial": t.number, "params": params, "quantile": q, "composite": float(t.user_attrs["composite"]),
                     "best_epoch": t.user_attrs.get("best_epoch")})
    return {"run": str(run.root), "family": source.model.family, "trials": len(own), "used": len(rows),
            "skipped": skipped, "rows": rows}


def _trial_config(run: RunFolder, t: FrozenTrial, source: Config) -> Config:
    """The source trial's effective config: the run's config with the trial's recorded train section."""
    import json

    folder = run.root / str(t.user_attrs.get("trial_dir") or "")
    params_file = folder / "params.json"
    train = json.loads(params_file.read_text(encoding="utf-8")).get("train") if params_file.is_file() else None
    if not isinstance(train, dict):
        raise LoratuneError(f"--warm-start {run.root}: trial {t.number} has no params.json; the run folder is "
                            "incomplete")
    data = source.model_dump(mode="json", exclude_none=True, warnings=False)
    data["train"] = train
    return validate_config(data)


def express(config: Config, space: Mapping[str, ParamSpec]) -> tuple[dict[str, Any] | None, str]:
    """``config``'s settings as params of ``space`` (scaling undone, ``alpha_ratio`` from alpha and rank, inactive
    parameters left out), or (None, why) when one of them is not a value ``space`` can suggest.

    >>> from loratune.config import validate_config
    >>> from loratune.search.config import default_space
    >>> express(validate_config({"train": {"learning_rate": 2e-4, "rank": 16}}), default_space())[0]["rank"]
    16
    >>> express(validate_config({"train": {"rank": 128}}), default_space())[1]
    'rank 128 is not among the choices [8, 16, 32, 64]'
    """
    data = config.model_dump(mode="json", warnings=False)
    params: dict[str, Any] = {}
    for name in ordered(space):
        spec = space[name]
        if not is_active(spec, params):
            continue
        if name == "alpha_ratio" and spec.target is None:
            value: Any = config.train.lora_alpha / config.train.rank
        else:
            value = _read(data, spec.target or f"train.{name}")
            if spec.scale and params.get("optimizer") in spec.scale and isinstance(value, (int, float)):
                value = value / spec.scale[params["optimizer"]]
        if spec.type == "categorical":
            if value not in (spec.choices or []):
                return None, f"{name} {value} is not among the choices {spec.choices}"
        else:
            low, high = float(spec.low or 0), float(spec.high or 0)
            if not isinstance(value, (int, float)) or not low * (1 - 1e-9) <= float(value) <= high * (1 + 1e-9):
                return None, f"{name} {value} is outside {spec.low:g}..{spec.high:g}"
            value = min(high, max(low, float(value)))
            value = round(value) if spec.type == "int" else value
        params[name] = value
    return params, ""


def read_sources(config: Config) -> list[dict[str, Any]]:
    """Every ``search.warm_start`` run read (``read_source``); raises when none of their trials fits this run."""
    sources = [read_source(Path(p).expanduser().resolve(), config) for p in config.search.warm_start]
    if not any(s["rows"] for s in sources):
        raise LoratuneError("--warm-start: no trial of " + ", ".join(config.search.warm_start) + " fits this run's "
                            "search space (" + "; ".join(w for s in sources for w in s["skipped"]) + ")")
    return sources


def seed_study(study: optuna.Study, config: Config, sources: Sequence[Mapping[str, Any]],
               say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Keep the warm-start ``sources`` in the new ``study`` and enqueue their best settings; returns what was kept.
    Called once, when the study is created, before the baseline is enqueued."""
    record = {"sources": [{k: v for k, v in s.items() if k != "rows"} for s in sources],
              "rows": [{**row, "run": s["run"]} for s in sources for row in s["rows"]]}
    from loratune.search.phases import Plan

    study.set_user_attr(WARM_ATTR, record)
    # They are search-phase trials: more than the phase holds would take the refinement's slots.
    first = best_settings(record["rows"], min(config.search.phases.warm_trials, Plan.of(config.search).search))
    for row in first:
        study.enqueue_trial(row["params"], user_attrs={"phase": "search", "warm_from": _label(row)})
    if say is not None:
        for s in sources:
            skipped = "; ".join(f"{n} skipped: {why}" for why, n in s["skipped"].items())
            say(f"warm start: {s['used']} of {s['trials']} trials of {s['run']}" + (f" ({skipped})" if skipped else ""))
        if first:
            say("warm start: first trying " + ", ".join(_label(r) for r in first))
    return record


def best_settings(rows: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """The ``count`` best distinct settings by quantile (ties: the order the sources were given in)."""
    out: list[Mapping[str, Any]] = []
    for row in sorted(rows, key=lambda r: -float(r["quantile"])):
        if len(out) >= count:
            break
        if all(row["params"] != o["params"] for o in out):
            out.append(row)
    return out


def _label(row: Mapping[str, Any]) -> str:
    return f"{Path(str(row['run'])).name} trial {row['trial']}"


def warm_trials(study: optuna.Study, space: Mapping[str, ParamSpec]) -> list[FrozenTrial]:
    """The study's warm-start rows as completed trials for the samplers' view (``scored_view``): numbered below 0
    (older than every trial of this study), valued at their quantile, with this run's distributions."""
    record = study.user_attrs.get(WARM_ATTR) or {}
    out = []
    for i, row in enumerate(record.get("rows") or []):
        params = {k: v for k, v in row["params"].items() if k in space}
        trial = optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=float(row["quantile"]), params=params,
            distributions={k: distribution(space[k]) for k in params},
            user_attrs={"warm_from": _label(row), "quantile": float(row["quantile"])})
        trial.number = -1 - i
        out.append(trial)
    return out
