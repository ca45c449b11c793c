"""The typed loratune config: one YAML file, one section per part, validated before any model loads.

``load_config(path, overrides)`` reads the YAML, applies ``--set a.b=value`` overrides (values parsed as YAML) and
validates. Relative paths are taken relative to the config file. Errors name the field and the bad value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from loratune.caption.config import CaptionSection
from loratune.config_base import Strict, resolve_model, resolve_path
from loratune.errors import LoratuneError, first_line
from loratune.families import DEFAULT_FAMILY, FAMILIES, get_family
from loratune.kohya_prompts import parse_kohya_prompts
from loratune.learning.config import check_holdout
from loratune.metrics.config import (  # noqa: F401  (re-exported: callers and tests import them from here)
    SEED_WEIGHTS,
    AxisName,
    BackendConfig,
    EvaluationSection,
    IdentitySection,
)
from loratune.search.config import SearchSection
from loratune.train.config import TrainSection


class ModelSection(Strict):
    base: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                      description="diffusers hub id, local folder, or one checkpoint file (.safetensors / .ckpt)")
    family: str = Field(DEFAULT_FAMILY, description=f"the base's model family: {', '.join(FAMILIES)}")
    variant: str | None = None
    config: str | None = Field(None, description="for a one-file base: a diffusers folder of the same family whose "
                                                 "configs, tokenizers and scheduler it uses (default: the family's "
                                                 "repository in the Hugging Face cache)")
    quantize: Literal["fp8", "nf4"] | None = Field(
        None, description="keep the denoiser's frozen weights in 8 (fp8) or 4 (nf4) bits on a CUDA GPU (Flux.1 on "
        "24 GB); refused elsewhere"
    )

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown family {v!r} (known: {', '.join(FAMILIES)})")
        return v

    @field_validator("config")
    @classmethod
    def _config_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(v, info)

    @model_validator(mode="after")
    def _single_file_family(self) -> ModelSection:
        """A one-file base says its family by its keys: taken from there unless model.family is given, and checked
        against it when it is (.safetensors headers only; a .ckpt is read when it loads)."""
        from loratune.singlefile.load import detect_family, is_single_file

        if is_single_file(self.base) and self.base.lower().endswith(".safetensors"):
            found = detect_family(self.base)
            if "family" not in self.model_fields_set:
                object.__setattr__(self, "family", found)
            elif found != self.family:
                raise ValueError(f"model.family is {self.family} but {Path(self.base).name} is an {found} checkpoint")
        return self

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


class Config(Strict):
    model: ModelSection = Field(default_factory=ModelSection)
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    sampling: SamplingSection = Field(default_factory=SamplingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    train: TrainSection = Field(default_factory=TrainSection)
    search: SearchSection = Field(default_factory=SearchSection)
    caption: CaptionSection = Field(default_factory=CaptionSection)

    @model_validator(mode="after")
    def _family_settings(self) -> Config:
        get_family(self.model.family).check(self)
        if self.model.quantize:  # torch is imported only for a config that asks for it
            import torch

            from loratune.train.quantize import check_quantize_device

            cuda = self.train.device in ("auto", "cuda") and torch.cuda.is_available()
            check_quantize_device(self.model.quantize, "cuda" if cuda else self.train.device.replace("auto", "cpu"))
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
