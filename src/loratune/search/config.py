"""The ``search`` config section (pydantic only: importing it must stay light).

The search space is a mapping ``name -> ParamSpec``. A name is a ``train`` field (``learning_rate``, ``rank``, ...)
unless the spec says otherwise with ``target`` (any dotted config key). ``alpha_ratio`` is special: it sets
``train.alpha = rank * alpha_ratio``, the way practitioners think about alpha.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loratune.config_base import Strict


class ParamSpec(Strict):
    """One search dimension: a float/int range (optionally log or stepped) or a list of categorical choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    when: dict[str, Any] | None = Field(
        None, description="active only when these other params have these values (a value or a list of values)"
    )
    otherwise: Any = Field(None, description="value written to the config while the param is inactive (None: leave)")
    scale: dict[str, float] | None = Field(
        None, description="multiply the suggested value by a factor chosen by the optimizer, e.g. {lion: 0.3}"
    )
    target: str | None = Field(None, description="dotted config key; default train.<name>")

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical parameter takes 'choices', not low/high/log/step")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} parameter needs 'low' and 'high'")
        if self.high < self.low:
            raise ValueError(f"high must be >= low (got low={self.low}, high={self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (optuna refuses it)")
        if self.choices is not None:
            raise ValueError(f"{self.type} parameter takes low/high, not 'choices'")
        if self.type == "int":
            for v in (self.low, self.high, self.step):
                if v is not None and float(v) != int(v):
                    raise ValueError(f"int parameter bounds/step must be integers (got {v})")
        return self


def default_space() -> dict[str, ParamSpec]:
    """Ranges from practice (kohya community defaults).

    AdamW's lr range is searched directly; Lion wants ~3x smaller steps (its sign update has unit magnitude) so the
    same suggestion is scaled by 0.3; Prodigy estimates its own step size and is run at lr 1.0 with d_coef searched.
    ``epochs`` is not searched: every epoch is scored and any can be RUN/best, so each trial trains up to
    ``train.epochs`` and the patient pruner stops it once its composite has stopped improving. Measured on the
    search benchmark (benchmarks/search_efficiency.py), searching epochs as well doubled the regret at 20 trials.
    """
    return {
        "learning_rate": ParamSpec(
            type="float", low=5e-5, high=5e-4, log=True, scale={"lion": 0.3},
            when={"optimizer": ["adamw", "lion"]}, otherwise=1.0,
        ),
        "rank": ParamSpec(type="categorical", choices=[8, 16, 32, 64]),
        "alpha_ratio": ParamSpec(type="categorical", choices=[0.5, 1.0]),
        "optimizer": ParamSpec(type="categorical", choices=["adamw", "prodigy", "lion"]),
        "d_coef": ParamSpec(type="float", low=0.5, high=2.0, when={"optimizer": "prodigy"}, target="train.prodigy.d_coef"),
        "min_snr_gamma": ParamSpec(type="categorical", choices=[None, 5.0]),
    }


class PhasesSection(Strict):
    baseline: bool = Field(True, description="phase 1: enqueue the config's own train values as the first trial")
    refine_trials: int = Field(4, ge=0, description="phase 3 trials in a narrowed space around the best")
    refine_width: float = Field(0.25, gt=0, le=1, description="narrowed range as a fraction of the original width")
    # One-exchange moves: the search benchmark's regret went from 0.044 to 0.039 (0.040 to 0.038 on a second seed set).
    refine_moves: bool = Field(True, description="refine trials after the first move one categorical to a neighbour")
    warm_trials: int = Field(
        2, ge=0, description="with search.warm_start: the earlier runs' best distinct settings tried first (in the "
        "search phase's budget)")
    ensemble_top_k: int = Field(3, ge=0, description="merge the best k trials into one more trial (0 or 1: off)")
    ensemble_method: Literal["avg", "concat", "svd"] = "svd"
    ensemble_rank: int | None = Field(None, ge=1, description="target rank for svd; default the largest member rank")


class GatingSection(Strict):
    """Which epochs are sampled and scored (``loratune.search.gating``); an epoch not scored is no candidate."""

    every: int = Field(1, ge=1, description="sample and score every k-th epoch (the last always)")
    # On by default: on the world's two targets (20 seeds each) stopping at a diverged epoch kept the median and mean
    # regret and saved 13-14% of sampling + scoring (10-12% of the study); every 2nd epoch or 2 seeds per epoch saved
    # more but helped one target and hurt the other (benchmarks/world_cost.py gating).
    skip_diverged: bool = Field(
        True, description="no samples for an epoch whose validation loss rose over evaluation.learning.validation_rise "
        "(it is no candidate for RUN/best whatever it scores)")
    stop_diverged: bool = Field(True, description="stop the trial at such an epoch (the pruner on the cheap signal)")
    seeds: int | None = Field(
        None, ge=1, description="sample a searched epoch with only the first k of sampling.seeds (finalists keep "
        "search.finalist_samples x all of them)")
    race: float | None = Field(
        None, ge=0, description="with seeds: k, an epoch whose k-seed composite comes within `race` standard errors "
        "of the best composite so far (the study's candidates for RUN/best and this trial's epochs) is sampled with the rest "
        "of sampling.seeds and scored on all of them; one clearly below keeps its k seeds")

    @model_validator(mode="after")
    def _race_needs_seeds(self) -> GatingSection:
        if self.race is not None and self.seeds is None:
            raise ValueError("search.gating.race: set search.gating.seeds too (the seeds an epoch is first scored on)")
        return self


# The ASHA settings of the Ray Tune backend, with the defaults every run folder written then holds in config.yaml.
_ASHA_DEFAULTS = {"grace_period": 1, "reduction_factor": 3}


class RaySection(Strict):
    address: str | None = Field(None, description="existing Ray cluster; default: start a local one")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="fractional GPUs share one card between trials")
    max_concurrent: int = Field(2, ge=1, description="Ray workers (actors), each running one trial at a time")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each worker asks for, e.g. {trainer: 1}: only nodes "
        "started with them (ray start --resources) run trials")

    @model_validator(mode="before")
    @classmethod
    def _no_asha(cls, data: Any) -> Any:
        # Ray workers prune with search.pruner, as local ones do. Older run folders (their defaults) still resume.
        if not isinstance(data, dict):
            return data
        for key, default in _ASHA_DEFAULTS.items():
            if key in data and data[key] != default:
                raise ValueError(f"search.ray.{key} is no longer read: Ray workers prune with search.pruner "
                                 f"(and search.patience) like local ones; remove search.ray.{key}")
        return {k: v for k, v in data.items() if k not in _ASHA_DEFAULTS}


class SearchSection(Strict):
    n_trials: int = Field(20, ge=1, description="trials over phases 1-3 (the ensemble trial comes on top)")
    sampler: Literal["tpe", "gp", "random", "grid"] = "tpe"
    seed: int = 0
    pruner: Literal["hyperband", "median", "patient", "none"] = Field(
        "patient", description="patient: stop a trial `patience` epochs after its composite stopped improving")
    patience: int = Field(2, ge=0, description="patient pruner: epochs without improvement tolerated")
    noise_margin: float = Field(
        0.0, ge=0, description="patient pruner: a decline counts only when larger than this many standard errors of "
        "the two epochs' composites (measured from their samples); 0: any decline (measured: README, Cost)")
    space: dict[str, ParamSpec] = Field(default_factory=default_space)
    phases: PhasesSection = Field(default_factory=PhasesSection)
    storage: str | None = Field(None, description="RDB URL (postgresql://, mysql://); default sqlite RUN/study.db")
    heartbeat_interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int | None = Field(None, ge=1, description="a trial silent this long is failed; default 2x interval")
    max_retry: int = Field(2, ge=0, description="retries of a trial whose process died")
    directions: dict[str, Literal["maximize", "minimize"]] | None = Field(
        None, description="multi-objective: axis -> direction; pruning is off (optuna cannot prune multi-objective)"
    )
    backend: Literal["local", "ray"] = "local"
    workers: int = Field(1, ge=1)
    ray: RaySection = Field(default_factory=RaySection)
    finalists: int = Field(
        3, ge=0, le=50,
        description="before RUN/best is written, the top candidates sampled again with fresh seeds and picked on all "
        "their samples (a search-time score is the maximum of noisy epochs); 0 = off",
    )
    finalists_per_trial: int = Field(
        1, ge=1, le=50,
        description="at most this many finalists from one trial: its best epoch and then its runners-up (a trial's "
        "best epoch is itself the maximum of its noisy epochs); 1 = each trial's best epoch only",
    )
    finalist_samples: int = Field(
        4, ge=1, le=64, description="fresh seeds per finalist, as a multiple of sampling.seeds (same prompts)")
    gating: GatingSection = Field(default_factory=GatingSection)
    warm_start: list[str] = Field(
        default_factory=list, description="earlier run folders (same model family) whose finished trials seed this "
        "study: their settings mapped into this space, their outcomes as ranks within their own run")

    @field_validator("space")
    @classmethod
    def _conditions_known(cls, v: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        for name, spec in v.items():
            for other in (spec.when or {}):
                if other not in v:
                    raise ValueError(f"{name}: 'when' refers to unknown parameter {other!r}")
                if other == name:
                    raise ValueError(f"{name}: 'when' cannot refer to itself")
            if spec.scale and "optimizer" not in v:
                raise ValueError(f"{name}: 'scale' needs an 'optimizer' parameter in the space")
        return v

    @field_validator("directions")
    @classmethod
    def _axes(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        from loratune.metrics.registry import AXES  # light: the axis names, no backend is imported

        known = {"composite", *AXES}
        for axis in v:
            if axis not in known:
                raise ValueError(f"unknown axis {axis!r} (known: {', '.join(sorted(known))})")
        if len(v) < 2:
            raise ValueError("multi-objective needs at least two axes")
        return v
