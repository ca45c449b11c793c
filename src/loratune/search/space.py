"""The YAML search space as Optuna suggestions, narrowed spaces for refinement, and params applied onto a Config.

>>> import optuna
>>> from loratune.search.config import ParamSpec
>>> space = {"optimizer": ParamSpec(type="categorical", choices=["adamw", "prodigy"]),
...          "d_coef": ParamSpec(type="float", low=0.5, high=2, when={"optimizer": "prodigy"})}
>>> study = optuna.create_study()
>>> study.enqueue_trial({"optimizer": "adamw"})
>>> suggest(study.ask(), space)  # d_coef is inactive for adamw: not suggested at all
{'optimizer': 'adamw'}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from loratune.config import Config, apply_override, validate_config
from loratune.errors import LoratuneError
from loratune.search.config import ParamSpec


def ordered(space: Mapping[str, ParamSpec]) -> list[str]:
    """Names in suggestion order: a conditional parameter comes after the parameters its ``when`` reads."""
    done: list[str] = []
    pending = list(space)
    while pending:
        progressed = False
        for name in list(pending):
            if all(dep in done for dep in (space[name].when or {})):
                done.append(name)
                pending.remove(name)
                progressed = True
        if not progressed:
            raise LoratuneError(f"search.space: circular 'when' conditions among {', '.join(pending)}")
    return done


def is_active(spec: ParamSpec, values: Mapping[str, Any]) -> bool:
    for other, wanted in (spec.when or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if other not in values or values[other] not in allowed:
            return False
    return True


def distribution(spec: ParamSpec) -> BaseDistribution:
    if spec.type == "categorical":
        return CategoricalDistribution(spec.choices or [])
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def suggest(trial: optuna.Trial, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Ask ``trial`` for every active parameter, in dependency order; inactive ones are not suggested at all."""
    values: dict[str, Any] = {}
    for name in ordered(space):
        spec = space[name]
        if not is_active(spec, values):
            continue
        if spec.type == "categorical":
            values[name] = trial.suggest_categorical(name, spec.choices or [])
        elif spec.type == "int":
            values[name] = trial.suggest_int(name, int(spec.low or 0), int(spec.high or 0), log=spec.log,
                                             step=int(spec.step or 1))
        else:
            values[name] = trial.suggest_float(name, float(spec.low or 0), float(spec.high or 0), log=spec.log,
                                               step=spec.step)
    return values


def narrow(space: Mapping[str, ParamSpec], best: Mapping[str, Any], width: float) -> tuple[dict[str, ParamSpec], dict[str, Any]]:
    """The refinement space around ``best``: numeric ranges shrunk to ``width`` of their span (in log units for log
    params) centred on the best value and clipped to the original range; categoricals fixed at the best choice.

    Returns (numeric space, fixed categorical params). Categoricals are fixed rather than re-declared with one choice
    because Optuna refuses a parameter whose categorical choices change within a study.
    """
    narrowed: dict[str, ParamSpec] = {}
    fixed: dict[str, Any] = {}
    for name, spec in space.items():
        if spec.type == "categorical":
            if name in best:
                fixed[name] = best[name]
            narrowed[name] = spec
            continue
        if name not in best:
            narrowed[name] = spec
            continue
        lo, hi = float(spec.low or 0), float(spec.high or 0)
        # A centre outside the range (a best *epoch* below the searched epochs' low) moves to its nearest end.
        centre = min(max(float(best[name]), lo), hi)
        fwd, back = (math.log, math.exp) if spec.log else ((lambda x: x), (lambda x: x))
        half = (fwd(hi) - fwd(lo)) * width / 2
        new_lo = max(lo, back(fwd(centre) - half))
        new_hi = min(hi, back(fwd(centre) + half))
        if spec.type == "int":
            step = int(spec.step or 1)
            base = int(lo)
            new_lo = base + math.floor((new_lo - base) / step) * step
            new_hi = base + math.ceil((new_hi - base) / step) * step
            new_hi = min(new_hi, int(hi) - (int(hi) - base) % step)
        elif spec.step is not None:
            new_lo = lo + math.floor((new_lo - lo) / spec.step) * spec.step
            new_hi = lo + math.ceil((new_hi - lo) / spec.step) * spec.step
            new_hi = min(new_hi, hi)
        narrowed[name] = spec.model_copy(update={"low": new_lo, "high": new_hi})
    return narrowed, fixed


def config_values(params: Mapping[str, Any], space: Mapping[str, ParamSpec], rank: int | None = None) -> dict[str, Any]:
    """Dotted config key -> value for a trial's params (scaling, inactive defaults and ``alpha_ratio`` applied).

    ``rank`` is the config's own rank, used for ``alpha_ratio`` when the rank itself is not searched.
    """
    out: dict[str, Any] = {}
    optimizer = params.get("optimizer")
    for name in ordered(space):
        spec = space[name]
        target = spec.target or f"train.{name}"
        if name not in params:
            if spec.otherwise is not None and not is_active(spec, params):
                out[target] = spec.otherwise
            continue
        value = params[name]
        if spec.scale and optimizer in spec.scale:
            value = value * spec.scale[optimizer]
        if name == "alpha_ratio" and spec.target is None:
            continue
        out[target] = value
    if "alpha_ratio" in params and space.get("alpha_ratio") is not None and space["alpha_ratio"].target is None:
        rank = out.get("train.rank", params.get("rank", rank))
        if rank is None:
            raise LoratuneError("search.space.alpha_ratio: needs 'rank' in the space (alpha = rank * alpha_ratio)")
        out["train.alpha"] = float(rank) * float(params["alpha_ratio"])
    return out


def apply_params(config: Config, params: Mapping[str, Any], space: Mapping[str, ParamSpec]) -> Config:
    """A new, validated Config with the trial's params written in (the input is left untouched)."""
    data = config.model_dump(mode="json", exclude_none=True, warnings=False)
    for key, value in config_values(params, space, config.train.rank).items():
        apply_override(data, f"{key}={_yaml_scalar(value)}")
    try:
        return validate_config(data)
    except LoratuneError as err:
        raise LoratuneError(f"search.space: params {dict(params)} do not fit the config: {err}") from None


def check_space(config: Config, space: Mapping[str, ParamSpec]) -> None:
    """Fail early (before any training) when a parameter does not map onto a valid config field."""
    order = ordered(space)
    for name in space:
        probe: dict[str, Any] = {}
        # Make ``name`` active by satisfying its condition with the first allowed value.
        for dep, wanted in (space[name].when or {}).items():
            probe[dep] = wanted[0] if isinstance(wanted, list) else wanted
        for other in order:
            spec = space[other]
            if other not in probe and is_active(spec, probe):
                probe[other] = spec.choices[0] if spec.type == "categorical" and spec.choices else \
                    int(spec.low or 0) if spec.type == "int" else spec.low
        spec = space[name]
        for value in (spec.choices or []) if spec.type == "categorical" else [spec.low, spec.high]:
            probe[name] = int(value) if spec.type == "int" else value
            # A value may deactivate others probed earlier (optimizer -> prodigy drops learning_rate): a trial would
            # never carry them, so neither does the probe.
            apply_params(config, {k: v for k, v in probe.items() if is_active(space[k], probe)}, space)


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()


def _read(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def baseline_params(config: Config, space: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Phase 1: the config's own values expressed in the space's terms (the user's current recipe as trial 0).

    Numbers are clipped into their range; a categorical value that is not a choice becomes the nearest numeric choice
    (or the first choice); inactive conditional parameters are left out.
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
            if spec.scale and params.get("optimizer") in spec.scale and value is not None:
                value = value / spec.scale[params["optimizer"]]
        if spec.type == "categorical":
            choices = spec.choices or []
            if value not in choices:
                numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
                value = min(numeric, key=lambda c: abs(c - value)) if numeric and isinstance(value, (int, float)) \
                    else choices[0]
        else:
            lo, hi = float(spec.low or 0), float(spec.high or 0)
            value = min(hi, max(lo, float(value if value is not None else lo)))
            if spec.type == "int":
                value = round(value)
        params[name] = value
    return params
