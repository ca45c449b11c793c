"""The metadata a checkpoint's kohya file carries: the ``ss_*`` keys sd-scripts' train_network.py writes (A1111,
Forge, ComfyUI and model sites show them), the dataset's tag counts, each strategy's settings and the modelspec keys."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from loratune.config import Config
from loratune.lora.kohya import dataset_metadata, kohya_metadata, modelspec_metadata
from loratune.train.data import Item
from loratune.train.epochs import count_steps
from loratune.train.strategies import CurriculumResolution


def checkpoint_metadata(config: Config, models: Any, out_dir: Path, rank: int, resolution: int, strategies: list[Any],
                        epoch: int, step: int, items: list[Item], batches_per_epoch: int, started: float, now: float,
                        mixed_precision: str) -> dict[str, str]:
    """The kohya file's metadata for the checkpoint at ``epoch`` / ``step`` of a run started at ``started``."""
    t, ds = config.train, config.dataset
    alpha = float(models.denoiser.peft_config["default"].lora_alpha)
    # The keys sd-scripts' train_network.py writes that A1111, Forge, ComfyUI and model sites show; values as it
    # writes them (str() of the Python value).
    extra: dict[str, Any] = {
        "ss_session_id": str(random.Random(f"{out_dir.resolve()}:{started}").randrange(2**31)),
        "ss_training_started_at": str(started),
        "ss_training_finished_at": str(now),
        "ss_text_encoder_lr": str(float(t.effective_text_encoder_lr)) if models.trained_text_encoders else "0.0",
        "ss_max_train_steps": str(t.max_steps or count_steps(config, items, CurriculumResolution(t.curriculum,
                                                                                                 ds.resolution))),
        "ss_lr_warmup_steps": str(t.lr_warmup_steps),
        "ss_num_batches_per_epoch": str(batches_per_epoch),
        "ss_total_batch_size": str(t.batch_size * t.gradient_accumulation),
        "ss_mixed_precision": mixed_precision,
        "ss_full_fp16": "False",
        "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_cache_latents": str(t.cache_latents),
        "ss_max_grad_norm": str(t.max_grad_norm or 0.0),
        "ss_enable_bucket": str(ds.buckets),
        "ss_min_bucket_reso": str(ds.min_bucket),
        "ss_max_bucket_reso": str(ds.max_bucket),
        "ss_bucket_no_upscale": "False",
        "ss_shuffle_caption": str(t.shuffle_captions),
        "ss_keep_tokens": str(t.keep_tokens),
        "ss_flip_aug": str(t.flip),
        "ss_color_aug": "False",
        "ss_random_crop": "False",
        "ss_caption_dropout_rate": "0.0",
        "ss_prior_loss_weight": "1.0",
        "ss_clip_skip": "None",
        "ss_max_token_length": "None",
        "ss_training_comment": "trained with loratune",
        "ss_lr_scheduler": t.lr_scheduler,
        "ss_num_epochs": str(t.epochs),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation),
        "ss_noise_offset": str(t.noise_offset),
        "ss_min_snr_gamma": str(t.min_snr_gamma or ""),
        "ss_output_name": t.output_name,
    }
    extra |= dataset_metadata(items, config.model.base)
    for strategy in strategies:
        extra |= strategy.metadata()
    extra |= models.family.kohya_extra(t)
    extra |= modelspec_metadata(models.family.modelspec(models, t), t.output_name, resolution, now,
                                description="trained with loratune")
    return kohya_metadata(
        config.model.family,
        rank,
        alpha,
        epoch,
        step,
        t.effective_learning_rate,
        t.optimizer,
        t.seed,
        resolution,
        extra,
    )
