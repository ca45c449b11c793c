"""The ``train`` config section (pydantic only: importing it must stay light)."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "lion")
SCHEDULERS = ("constant", "cosine", "cosine_with_restarts", "linear")
DEFAULT_LEARNING_RATE = 1e-4
# Prodigy estimates its own step size d; the learning rate only multiplies it, so its convention is 1.0.
PRODIGY_LEARNING_RATE = 1.0
PRODIGY_LOW_LR = 0.1
_log = logging.getLogger(__name__)
_warned_prodigy_lr = False


class ProdigySettings(BaseModel):
    """Prodigy's own knobs (its learning rate stays ``train.learning_rate``: unset means 1.0)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    d_coef: float = Field(1.0, gt=0, le=100)
    d0: float = Field(1e-6, gt=0, le=1)
    use_bias_correction: bool = False
    safeguard_warmup: bool = False


class ExternalTrainer(BaseModel):
    """An outside trainer (e.g. kohya ``train_network.py``) driven by a command template.

    The template is formatted with ``{rank}``, ``{alpha}``, ``{learning_rate}``, ``{epochs}``, ``{batch_size}``,
    ``{seed}``, ``{output_dir}``, ``{output_name}``, ``{dataset}``, ``{resolution}``, ``{base_model}``,
    ``{optimizer}`` and ``{python}``; its per-epoch kohya checkpoints are then found in ``{output_dir}``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    command: str = Field(..., min_length=1)
    timeout_s: float | None = Field(None, gt=0, description="stop the trainer (and its children) after this long")
    cwd: str | None = None


class TrainSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rank: int = Field(16, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; default = rank")
    target_modules: list[str] | str | None = Field(
        None, description="the denoiser's modules that get a LoRA: peft target names (suffixes) or one regex over "
        "module paths; default: the family's set (SD: to_q, to_k, to_v, to_out.0; Flux: kohya's)"
    )
    learning_rate: float | None = Field(
        None, gt=0, le=10, description="default: 1.0 with prodigy (its convention), else 1e-4"
    )
    train_text_encoder: bool = False
    text_encoder_lr: float | None = Field(None, gt=0, le=10, description="default = learning_rate")
    text_encoder_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"], min_length=1
    )
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "lion"] = "adamw"
    weight_decay: float = Field(1e-2, ge=0, le=10)
    betas: tuple[float, float] | None = Field(None, description="default: the optimizer's own")
    prodigy: ProdigySettings = Field(default_factory=ProdigySettings)
    lr_scheduler: Literal["constant", "cosine", "cosine_with_restarts", "linear"] = "constant"
    lr_warmup_steps: int = Field(0, ge=0)
    lr_num_cycles: int = Field(1, ge=1, le=1000, description="restarts for cosine_with_restarts")
    epochs: int = Field(10, ge=1, le=10000)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(1, ge=1, le=1024)
    gradient_accumulation: int = Field(1, ge=1, le=1024)
    max_grad_norm: float | None = Field(1.0, gt=0)
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(None, description="default: the base model's")
    min_snr_gamma: float | None = Field(None, gt=0, le=100)
    noise_offset: float = Field(0.0, ge=0, le=1)
    gradient_checkpointing: bool = False
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field("auto", description="auto: bf16 on CUDA, else no")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    cache_latents: bool = True
    cache_text_embeddings: bool = Field(True, description="only when the text encoder is frozen")
    flip: bool = Field(False, description="random horizontal flip")
    shuffle_captions: bool = False
    keep_tokens: int = Field(0, ge=0, description="leading comma-separated caption tokens kept in place")
    caption_separator: str = ","
    save_every_epochs: int = Field(1, ge=1)
    sample_checkpoints: bool = True
    validation_images: int = Field(
        8, ge=0, le=256,
        description="images for the per-epoch validation loss: the held-out ones (dataset.holdout) when there are "
                    "any, else this many training images picked by seed; 0 = off",
    )
    validation_timesteps: int = Field(4, ge=1, le=64, description="stratified timesteps per validation image")
    output_name: str = Field("lora", pattern=r"^[A-Za-z0-9][\w.-]*$")
    curriculum: dict[int, int] = Field(
        default_factory=dict, description="epoch -> training resolution from that epoch on, e.g. {1: 256, 3: 512}"
    )
    rank_schedule: dict[int, int] = Field(default_factory=dict, description="epoch -> LoRA rank from that epoch on")
    external: ExternalTrainer | None = Field(None, description="train with an outside command instead")
    log_with: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="per-step loss, lr (and Prodigy's d): TensorBoard events in OUT/logs; wandb when installed",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: object) -> object:
        return "no" if v is False else v  # YAML 1.1 reads an unquoted ``no`` as false

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str | None) -> list[str] | str | None:
        if v is not None and not v:
            raise ValueError("name at least one module (or leave it unset for the family's set)")
        return v

    @field_validator("curriculum")
    @classmethod
    def _curriculum(cls, v: dict[int, int]) -> dict[int, int]:
        for epoch, res in v.items():
            if epoch < 1:
                raise ValueError(f"epochs count from 1 (got epoch {epoch})")
            if res < 64 or res > 4096 or res % 8:
                raise ValueError(f"resolution must be a multiple of 8 in [64, 4096] (got {res} at epoch {epoch})")
        return dict(sorted(v.items()))

    @field_validator("rank_schedule")
    @classmethod
    def _rank_schedule(cls, v: dict[int, int]) -> dict[int, int]:
        for epoch, rank in v.items():
            if epoch < 2:
                raise ValueError(f"rank can grow from epoch 2 on (got epoch {epoch}); set train.rank for the start")
            if rank < 1 or rank > 1024:
                raise ValueError(f"rank must be in [1, 1024] (got {rank} at epoch {epoch})")
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _ranks_grow(self) -> TrainSection:
        previous = self.rank
        for epoch, rank in self.rank_schedule.items():
            if rank <= previous:
                raise ValueError(f"rank_schedule: rank must grow (epoch {epoch}: {rank} <= {previous})")
            previous = rank
        return self

    @model_validator(mode="after")
    def _prodigy_lr(self) -> TrainSection:
        global _warned_prodigy_lr
        explicit = {"learning_rate": self.learning_rate, "text_encoder_lr": self.text_encoder_lr}
        low = {k: v for k, v in explicit.items() if v is not None and v < PRODIGY_LOW_LR}
        if self.optimizer == "prodigy" and low and not _warned_prodigy_lr:
            # Once per process: a search validates the config again for every trial.
            _warned_prodigy_lr = True
            field, value = next(iter(low.items()))
            _log.warning(
                f"loratune: warning: train.{field}={value:g} with optimizer prodigy multiplies Prodigy's own step "
                f"size, so training barely moves; leave it unset (prodigy: {PRODIGY_LEARNING_RATE:g})"
            )
        return self

    @field_serializer("learning_rate")
    def _dump_learning_rate(self, value: float | None) -> float | None:
        # A dump shows the rate that trains. Unset stays unset where None is left out (``exclude_none``: config.yaml,
        # search trials re-validated with another optimizer), so the default follows the optimizer there.
        return self.effective_learning_rate if value is None else value

    @property
    def effective_learning_rate(self) -> float:
        """``learning_rate``, or the optimizer's default when unset (Prodigy 1.0, others 1e-4)."""
        if self.learning_rate is not None:
            return self.learning_rate
        return PRODIGY_LEARNING_RATE if self.optimizer == "prodigy" else DEFAULT_LEARNING_RATE

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else self.effective_learning_rate

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)
