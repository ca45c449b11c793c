"""The typed loratune config: one YAML file, one section per part, validated before any model loads.

``load_config(path, overrides)`` reads the YAML, applies ``--set a.b=value`` overrides (values parsed as YAML) and
validates. Relative paths are taken relative to the config file. Errors name the field and the bad value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from loratune.errors import LoratuneError, first_line
from loratune.families import DEFAULT_FAMILY, FAMILIES, get_family
from loratune.kohya_prompts import parse_kohya_prompts
from loratune.learning.config import LearningSection, check_holdout
from loratune.metrics.registry import BACKENDS, backends_for_axis
from loratune.search.config import SearchSection
from loratune.train.config import TrainSection


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


AxisName = Literal["alignment", "consistency", "aesthetics", "quality", "diversity"]


SEED_WEIGHTS: dict[str, float] = {"alignment": 0.30, "consistency": 0.25, "aesthetics": 0.20, "quality": 0.15, "diversity": 0.10}


def resolve_path(value: str | None, info: ValidationInfo, must_exist: bool = False) -> str | None:
    """Resolve ``value`` against the config file's folder (passed as validation context ``base_dir``)."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)


def resolve_model(value: str | None, info: ValidationInfo) -> str | None:
    """A model reference stays a hub id unless a file or folder of that name exists next to the config."""
    if value is None:
        return None
    expanded = Path(os.path.expanduser(value))
    if expanded.is_absolute():
        return str(expanded)
    base = (info.context or {}).get("base_dir")
    if base is not None and (Path(base) / expanded).exists():
        return str(Path(base) / expanded)
    return value


class ModelSection(Strict):
    base: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5", description="diffusers hub id or local folder")
    family: str = Field(DEFAULT_FAMILY, description=f"the base's model family: {', '.join(FAMILIES)}")
    variant: str | None = None

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown family {v!r} (known: {', '.join(FAMILIES)})")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_dtype(cls, data: Any) -> Any:
        # Training and every rendering share one precision (train.mixed_precision): a second knob would let an
        # ensemble be drawn unlike the epochs it is ranked against.
        if isinstance(data, dict) and "dtype" in data:
            raise ValueError("model.dtype is no longer read: training and sampling both use train.mixed_precision "
                             "(auto = bf16 on CUDA, fp32 on CPU); remove model.dtype")
        return data

    _resolve = field_validator("base")(resolve_model)


class Character(Strict):
    token: str = Field(..., description="the trigger / class words used in captions and prompts, e.g. 'luca boy'")
    traits: list[str] = Field(default_factory=list, description="visual traits the VLM checks per image")
    references: str | None = Field(None, description="folder of reference images for identity scoring")

    @field_validator("references")
    @classmethod
    def _refs(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(v, info)


class DatasetSection(Strict):
    path: str | None = Field(None, description="a kohya-layout folder, a plain folder of captioned images, or a kohya "
                                               "dataset config (.toml, regularisation subsets included)")
    caption_extension: str = ".txt"
    resolution: int = Field(512, ge=64, le=4096)
    buckets: bool = True
    bucket_step: int = Field(64, ge=8)
    min_bucket: int = Field(256, ge=64)
    max_bucket: int = Field(1024, ge=64)
    missing_caption: Literal["error", "class_token"] = "error"
    characters: dict[str, Character] = Field(default_factory=dict)
    holdout: float | str | None = Field(None, description="images that never train and are the identity references: "
                                                          "a fraction of the dataset (0-0.5, drawn by holdout_seed) "
                                                          "or a folder")
    holdout_seed: int = 0

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(v, info)

    _holdout = field_validator("holdout")(check_holdout)

    @field_validator("caption_extension")
    @classmethod
    def _ext(cls, v: str) -> str:
        return v if v.startswith(".") else "." + v


class Prompt(Strict):
    text: str = Field(..., min_length=1)
    character: str | None = None
    # Per-prompt settings (a kohya --sample_prompts line's --n, --s, --l, --d, --w, --h); unset: sampling.*'s.
    negative_prompt: str | None = None
    steps: int | None = Field(None, ge=1, le=500)
    cfg: float | None = Field(None, ge=0.0, le=50.0)
    seed: int | None = Field(None, description="draw this prompt with this one seed instead of sampling.seeds")
    width: int | None = Field(None, ge=32, le=4096, multiple_of=8)
    height: int | None = Field(None, ge=32, le=4096, multiple_of=8)


class SamplingSection(Strict):
    prompts: list[Prompt] = Field(default_factory=list)
    negative_prompt: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    steps: int | None = Field(None, ge=1, le=500, description="default: the family's (SD 25; Flux.1 dev 28, schnell 4)")
    cfg: float | None = Field(None, ge=0.0, le=50.0, description="classifier-free guidance; Flux.1 dev's distilled "
                                                              "guidance. Default: the family's (SD 7.0, Flux.1 3.5)")
    scheduler: Literal["default", "euler", "euler_a", "dpm++", "ddim", "pndm"] = "default"
    width: int = Field(512, ge=32, le=4096)
    height: int = Field(512, ge=32, le=4096)
    lora_scale: float = Field(1.0, ge=0.0, le=4.0)

    @model_validator(mode="before")
    @classmethod
    def _prompts_file(cls, data: Any, info: ValidationInfo) -> Any:
        """``prompts_file``: a kohya ``--sample_prompts`` file, read into ``prompts`` here (replacing any listed, so
        ``--set sampling.prompts_file=…`` works on a config that has prompts). Only the prompts are kept: a run's
        stored config then holds exactly what it drew, even if the file changes later."""
        if not isinstance(data, dict) or "prompts_file" not in data:
            return data
        data = dict(data)
        source = data.pop("prompts_file")
        if not source:
            return data
        path = Path(resolve_path(str(source), info) or "")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise LoratuneError(f"sampling.prompts_file: cannot read {path} ({first_line(err)})") from None
        return {**data, "prompts": parse_kohya_prompts(text, str(path))}

    @field_validator("prompts", mode="before")
    @classmethod
    def _plain_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"text": p} if isinstance(p, str) else p for p in v]
        return v

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v})")
        return v


class BackendConfig(BaseModel):
    """A backend by registry name, with its model reference and backend-specific options (validated by the backend)."""

    model_config = ConfigDict(extra="allow")
    name: str
    model: str | None = None
    norm_range: tuple[float, float] | None = Field(None, description="raw scores mapped onto [0, 1]; registry default")

    _resolve = field_validator("model")(resolve_model)

    @model_validator(mode="before")
    @classmethod
    def _resolve_model_options(cls, data: Any, info: ValidationInfo) -> Any:
        """Every option value that names a file or folder next to the config (``clip_model``, ``detector``, a nested
        ``fallback.model``, ...) resolves like ``model``, so a config folder can be moved as a whole. Values that
        are not such paths (hub ids, tags, choices) stay as written."""

        def resolve(value: Any) -> Any:
            if isinstance(value, str):
                return resolve_model(value, info)
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            return value

        if isinstance(data, dict):
            return {k: v if k == "name" else resolve(v) for k, v in data.items()}
        return data

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown backend {v!r} (known: {', '.join(sorted(BACKENDS))})")
        return v

    @field_validator("norm_range")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[1] <= v[0]:
            raise ValueError(f"norm_range must be [low, high] with high > low (got {list(v)})")
        return v

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _default_backends() -> dict[str, BackendConfig | None]:
    return {
        "alignment": BackendConfig(name="vqascore", model="OpenGVLab/InternVL3-1B-hf"),
        "consistency": BackendConfig(name="clip_i", model="ViT-L-14", pretrained="openai"),
        "aesthetics": BackendConfig(name="laion_aesthetic"),
        "quality": BackendConfig(name="musiq"),
        "diversity": BackendConfig(name="lpips"),
    }


class IdentitySection(Strict):
    """Identity as a rate (``loratune.metrics.identity_rate``)."""

    rate: bool = Field(
        True,
        description="consistency = share of samples that pass a 'character present' threshold learned from the "
        "references and the base model's own samples; false: the mean similarity to the references",
    )
    min_auc: float = Field(
        0.8, ge=0.5, le=1.0,
        description="below this separation of references from the base model's samples the study warns that the "
        "identity scorer cannot see the character",
    )


class EvaluationSection(Strict):
    backends: dict[AxisName, BackendConfig | None] = Field(default_factory=_default_backends)
    weights: dict[AxisName, float] = Field(default_factory=lambda: dict(SEED_WEIGHTS))
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="scorer precision. auto: bfloat16 on a CUDA GPU that supports it, else float32 (always float32 "
        "on CPU and MPS); float16 is opt-in. Scores keep float32 math where it matters (P(yes), the aesthetic MLP)",
    )
    batch_size: int = Field(8, ge=1, le=1024)
    trust_remote_code: bool = Field(False, description="allow models whose code ships with the checkpoint")
    learning: LearningSection = Field(default_factory=LearningSection)
    identity: IdentitySection = Field(default_factory=IdentitySection)

    @field_validator("backends", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v
        merged: dict[str, Any] = {k: b.model_dump(exclude_none=True) for k, b in _default_backends().items() if b}
        for axis, backend in v.items():
            if isinstance(backend, str):
                backend = {"name": backend}
            elif isinstance(backend, BackendConfig):
                backend = backend.model_dump(exclude_none=True)
            # Keys given without a name refine the default backend of that axis (e.g. only its model).
            if isinstance(backend, dict) and "name" not in backend and isinstance(merged.get(axis), dict):
                backend = {**merged[axis], **backend}
            merged[axis] = backend
        return merged

    @field_validator("backends")
    @classmethod
    def _on_their_axis(cls, v: dict[AxisName, BackendConfig | None]) -> dict[AxisName, BackendConfig | None]:
        for axis, backend in v.items():
            if backend is not None and BACKENDS[backend.name].axis != axis:
                choose = ", ".join(spec.name for spec in backends_for_axis(axis))
                raise ValueError(
                    f"{axis}: backend {backend.name!r} scores {BACKENDS[backend.name].axis}, not {axis} (choose: {choose})"
                )
        return v

    @field_validator("weights", mode="before")
    @classmethod
    def _weights_merge_defaults(cls, v: Any) -> Any:
        # Weights given refine the seed weights; set an axis to 0 to leave it out of the composite.
        return {**SEED_WEIGHTS, **v} if isinstance(v, dict) else v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[AxisName, float]) -> dict[AxisName, float]:
        for axis, w in v.items():
            if w < 0:
                raise ValueError(f"weight of {axis} must be >= 0 (got {w})")
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one axis weight must be > 0")
        return v


class Config(Strict):
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    train: TrainSection = Field(default_factory=TrainSection)
    search: SearchSection = Field(default_factory=SearchSection)

    @model_validator(mode="after")
    def _family_settings(self) -> Config:
        get_family(self.model.family).check(self)
        return self

    @model_validator(mode="after")
    def _characters_known(self) -> Config:
        for i, prompt in enumerate(self.sampling.prompts):
            if prompt.character is not None and prompt.character not in self.dataset.characters:
                known = ", ".join(sorted(self.dataset.characters)) or "none defined"
                raise ValueError(f"sampling.prompts.{i}.character: unknown character {prompt.character!r} (known: {known})")
        return self


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (``1e-4``, ``true``, ``[1,2]``)."""
    if "=" not in assignment:
        raise LoratuneError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise LoratuneError(f"--set {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise LoratuneError(f"--set {assignment!r}: {part!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def format_validation_error(err: ValidationError, data: dict[str, Any] | None = None) -> str:
    """One line: the first failing field, its bad value and why (plus a count of further problems)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if p not in ("function-after[_characters_known(), Config]",))
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    hidden = isinstance(value, dict) or value is None or first["type"] == "missing" or repr(value) in msg
    shown = "" if hidden else f" (got {value!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"config error: {loc + ': ' if loc else ''}{msg}{shown}{more}"


def validate_config(data: dict[str, Any], base_dir: str | Path | None = None) -> Config:
    try:
        return Config.model_validate(data, context={"base_dir": str(base_dir) if base_dir else None})
    except ValidationError as err:
        raise LoratuneError(format_validation_error(err, data)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config. ``path=None`` gives the defaults (plus overrides)."""
    data: dict[str, Any] = {}
    base_dir: Path | None = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LoratuneError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise LoratuneError(f"{path}: not valid YAML: {first_line(err)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise LoratuneError(f"{path}: expected a mapping of sections at the top level")
        data = loaded
        base_dir = path.resolve().parent
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate_config(data, base_dir or Path.cwd())


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)
