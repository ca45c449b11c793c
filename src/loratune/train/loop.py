"""The built-in LoRA trainer: one loop you can read top to bottom, in the manner of diffusers' training examples.

Everything the user can get wrong is checked in ``prepare`` before a model loads. The loop then runs epochs of
bucketed batches; strategies (curriculum resolution, progressive rank) act at each epoch start; every
``save_every_epochs`` a checkpoint is written (``loratune.train.epoch_checkpoint``, which also resumes from one),
sampled and handed to ``on_checkpoint``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.atomic import atomic_write_json
from loratune.config import Config
from loratune.errors import LoratuneError
from loratune.residency.policy import Residency
from loratune.sampling import BASE_SAMPLES
from loratune.timing import Stopwatch, device_label
from loratune.train.data import Item
from loratune.train.epoch_checkpoint import drop_log_after, restore_training_state, save_epoch_checkpoint
from loratune.train.epochs import count_steps, epoch_batches
from loratune.train.loss import diffusion_loss
from loratune.train.records import (
    FAILED_MARKER,
    CheckpointInfo,
    SampleWhen,
    StopTraining,
    TrainingDiverged,
    TrainResult,
)
from loratune.train.strategies import CurriculumResolution, ProgressiveRank

if TYPE_CHECKING:
    from loratune.train.cache import Base, BaseCache
    from loratune.train.logging import StepLogger
    from loratune.train.model import Precision


def prepare(config: Config) -> list[Item]:
    """Validate everything that does not need a model: base reference, dataset, optimizer, sample prompts."""
    from loratune.modelref import check_model_ref
    from loratune.sampling import sample_prompts
    from loratune.train.logging import check_loggers
    from loratune.train.optim import check_optimizer

    check_model_ref(config.model.base, "model.base")
    from loratune.learning.holdout import dataset_split

    items = dataset_split(config)[0]  # held-out images never train: they are the identity references
    check_optimizer(config.train)
    check_loggers(config)
    if config.train.sample_checkpoints:
        sample_prompts(config)
    return items


class _Run:
    """What strategies may change mid-run: the resolution, and the rank (which rebuilds the optimizer)."""

    def __init__(self, config: Config, models: Any, rebuild: Callable[[dict[int, Any]], None]) -> None:
        self.config, self.models, self._rebuild = config, models, rebuild
        self.resolution = config.dataset.resolution
        self.rank = config.train.rank

    def grow_rank(self, rank: int) -> None:
        from loratune.train.model import grow_rank

        replaced: dict[int, Any] = {}
        for index, module in enumerate([self.models.denoiser, *self.models.text_encoders]):
            if index == 0 or index - 1 in self.models.trained_text_encoders:
                replaced |= grow_rank(module, rank, seed=self.config.train.seed + 7919 * rank + index)
        self.rank = rank
        self._rebuild(replaced)


def _accelerator(mixed_precision: str, cpu: bool) -> Any:
    """An Accelerator for this run; a search trains many runs in one process, with different precisions."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and (
        state.get("_mixed_precision") != mixed_precision
        or (cpu and state.get("device") and state["device"].type != "cpu")
    ):
        # accelerate's state is a process-wide singleton that refuses a second precision; single-process runs
        # hold nothing else in it, so starting it afresh is safe.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def train(
    config: Config,
    out_dir: str | Path,
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None,
    resume: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
    cache: BaseCache | None = None,
    base_samples: str | Path | None = None,
    residency: Residency | None = None,
    sample_when: SampleWhen | None = None,
) -> TrainResult:
    """Train a LoRA on ``config.dataset`` into ``out_dir``; see the module docstring.

    ``resume=True`` continues from the newest checkpoint in ``out_dir`` (weights, optimizer, schedule, step count).
    ``progress`` is called after each optimizer step with {epoch, step, total_steps, loss, lr}.
    ``cache`` lends the base model (and latents, text embeddings) kept from earlier runs in this process; without one
    the base is loaded for this run only.
    ``base_samples``: where the base model's own samples (no LoRA) go, drawn once before training when checkpoints
    are sampled and kept if already there (default ``out_dir/samples/base``; a search passes one folder per run).
    ``residency``: the device policy a search runs under (``loratune.residency.policy``), told of each phase.
    ``sample_when(epoch, validation_loss, last)``: whether to sample this checkpoint (a search's cheap-signal gate,
    ``loratune.search.gating``); the last checkpoint is always sampled. Each ``CheckpointInfo`` carries the seconds of
    its setup (first one only), training, validation and sampling, and the device they ran on.
    """
    watch = Stopwatch()
    items = prepare(config)
    out_dir = Path(out_dir)
    if not resume and (out_dir / "checkpoints").is_dir() and any((out_dir / "checkpoints").iterdir()):
        raise LoratuneError(f"{out_dir}: already holds checkpoints; resume it (--resume) or choose another --out")

    from loratune.train.cache import BaseCache
    from loratune.train.logging import StepLogger
    from loratune.train.model import training_precision

    out_dir.mkdir(parents=True, exist_ok=True)
    precision = training_precision(config.train)
    accelerator = _accelerator(precision.mixed, cpu=precision.device.type == "cpu")
    with (cache or BaseCache()).borrow(config, precision) as base, closing(StepLogger(config, out_dir)) as step_log:
        watch.device = precision.device
        return _train(config, items, out_dir, base, precision, accelerator, on_checkpoint, resume, progress, step_log,
                      Path(base_samples) if base_samples is not None else None, residency or Residency("keep", None),
                      watch, sample_when)


def _train(
    config: Config,
    items: list[Item],
    out_dir: Path,
    base: Base,
    precision: Precision,
    accelerator: Any,
    on_checkpoint: Callable[[CheckpointInfo], None] | None,
    resume: bool,
    progress: Callable[[dict[str, Any]], None] | None,
    step_log: StepLogger,
    base_samples: Path | None,
    residency: Residency,
    watch: Stopwatch,
    sample_when: SampleWhen | None,
) -> TrainResult:
    import torch
    from accelerate.utils import set_seed

    from loratune.train import checkpoint as ckpt
    from loratune.train.encode import LatentCache, TextCache, encode_images, encode_text, load_pixels
    from loratune.train.logging import optimizer_d
    from loratune.train.model import (
        add_lora,
        enable_checkpointing,
        place,
        trainable_parameters,
        upcast_lora,
    )
    from loratune.train.optim import build_optimizer, build_scheduler, carry_over, restore_scheduler
    from loratune.train.validation import run_validation_loss

    t = config.train
    device, weight_dtype = precision.device, precision.weight_dtype
    set_seed(t.seed)

    models = base.models
    if t.prediction_type:
        models.noise_scheduler.register_to_config(prediction_type=t.prediction_type)
    if t.sample_checkpoints:
        from loratune.sampling import render_base_samples

        # Before the adapter exists: the base model's own images, the report's "no LoRA" comparison row.
        render_base_samples(config, models, precision, base_samples or out_dir / BASE_SAMPLES)
    add_lora(
        models, t.rank, t.lora_alpha, t.target_modules, t.text_encoder_target_modules if t.train_text_encoder else None
    )
    # The new LoRA weights go the base's way (device, dtype), then the trained ones back to fp32.
    place(models, precision)
    modules = [models.denoiser, *(models.text_encoders[i] for i in models.trained_text_encoders)]
    for module in modules:
        upcast_lora(module)
    if t.gradient_checkpointing:
        enable_checkpointing(models)
    frozen_text = t.cache_text_embeddings and not models.trained_text_encoders
    # Shuffled captions differ at every step: caching them beyond this run would only grow.
    text_cache = TextCache(models, device, None if t.shuffle_captions else base.texts) if frozen_text else None
    latent_cache = LatentCache(models.vae, items, device, torch.float32, base.latents) if t.cache_latents else None

    validation = run_validation_loss(config, models, items, device, weight_dtype, accelerator)
    curriculum = CurriculumResolution(t.curriculum, config.dataset.resolution)
    strategies = [curriculum, ProgressiveRank(t.rank_schedule, t.rank)]
    total_steps = count_steps(config, items, curriculum)

    def param_groups() -> list[dict[str, Any]]:
        groups = [{"params": trainable_parameters(models.denoiser), "lr": t.effective_learning_rate}]
        for i in models.trained_text_encoders:
            groups.append(
                {"params": trainable_parameters(models.text_encoders[i]), "lr": t.effective_text_encoder_lr}
            )
        return groups

    # Prepared by accelerate so that fp16's gradient scaler unscales before clipping and skips overflowing steps.
    optimizer = accelerator.prepare_optimizer(build_optimizer(t, param_groups()))
    lr_scheduler = build_scheduler(t, optimizer, total_steps)
    residency.enter("train", models, optimizer)

    def rebuild_optimizer(replaced: dict[int, Any]) -> None:
        nonlocal optimizer, lr_scheduler
        new_optimizer = accelerator.prepare_optimizer(build_optimizer(t, param_groups()))
        carry_over(optimizer, new_optimizer, replaced)
        # accelerate unscales the gradients of every optimizer it prepared; the old one shares parameters with the
        # new one, so it must go or fp16 gradients would be unscaled twice.
        accelerator._optimizers = [o for o in accelerator._optimizers if o is not optimizer]
        new_scheduler = build_scheduler(t, new_optimizer, total_steps)
        restore_scheduler(new_scheduler, lr_scheduler.state_dict())
        optimizer, lr_scheduler = new_optimizer, new_scheduler

    history = out_dir / "train_log.jsonl"
    run = _Run(config, models, rebuild_optimizer)
    generator = torch.Generator().manual_seed(t.seed)
    step, start_epoch = 0, 1
    if resume:
        folder = ckpt.latest_checkpoint(out_dir)
        if folder is None:
            raise LoratuneError(f"--resume: no checkpoint to resume from in {out_dir / 'checkpoints'}")
        state = ckpt.load_training_state(folder)
        if state["rank"] > run.rank:  # first: growing the rank rebuilds the optimizer the state then loads into
            run.grow_rank(state["rank"])
        step, start_epoch = restore_training_state(state, models, optimizer, lr_scheduler, generator)
        drop_log_after(history, step)
    (out_dir / FAILED_MARKER).unlink(missing_ok=True)
    step_log.start(step)

    checkpoints: list[CheckpointInfo] = []
    started = time.time()
    watch.lap("setup")
    device_name = device_label(device)
    loss_value: float | None = None
    stopped = False
    epochs_done = start_epoch - 1
    for epoch in range(start_epoch, t.epochs + 1):
        if t.max_steps and step >= t.max_steps:
            break
        epoch_losses: list[float] = []
        for strategy in strategies:
            strategy.on_epoch_start(epoch, run)
        for module in modules:
            module.train()
        batches = epoch_batches(config, items, epoch, run.resolution)
        for index, batch in enumerate(batches):
            with torch.no_grad():
                if latent_cache is not None:
                    latents = latent_cache(batch.indices, batch.bucket, batch.flips)
                else:
                    pixels = torch.stack(
                        [load_pixels(items[i], batch.bucket, f) for i, f in zip(batch.indices, batch.flips)]
                    )
                    latents = encode_images(models.vae, pixels.to(device), sample=True, generator=generator)
            latents = latents.to(device, weight_dtype)
            with accelerator.autocast():
                cond = (
                    text_cache(batch.captions)
                    if text_cache is not None
                    else encode_text(models, batch.captions, device)
                )
                loss = diffusion_loss(models, latents, cond, batch.bucket, t, generator)
            if not torch.isfinite(loss):
                marker = atomic_write_json(
                    out_dir / FAILED_MARKER,
                    {
                        "reason": "diverged",
                        "detail": f"loss is {loss.item()}",
                        "epoch": epoch,
                        "step": step,
                        "config": t.model_dump(mode="json"),
                    },
                )
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch}, step {step}: loss is {loss.item()}", marker
                )
            accelerator.backward(loss / t.gradient_accumulation)
            if (index + 1) % t.gradient_accumulation and index + 1 < len(batches):
                continue
            if t.max_grad_norm:
                accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], t.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.item())
            epoch_losses.append(loss_value)
            record = {
                "epoch": epoch,
                "step": step,
                "total_steps": total_steps,
                "loss": loss_value,
                "lr": lr_scheduler.get_last_lr()[0],
                "resolution": run.resolution,
                "rank": run.rank,
                "latent_size": list(latents.shape[-2:]),
            }
            if models.trained_text_encoders:
                record["text_encoder_lr"] = lr_scheduler.get_last_lr()[1]
            d = optimizer_d(optimizer)
            if d is not None:
                record["d"] = d
            with history.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            step_log.step(record)
            if progress is not None:
                progress(record)
            if t.max_steps and step >= t.max_steps:
                break
        epochs_done = epoch

        last = epoch == t.epochs or bool(t.max_steps and step >= t.max_steps)
        if epoch % t.save_every_epochs and not last:
            continue
        info = save_epoch_checkpoint(
            config, out_dir, models, run.rank, run.resolution, strategies, epoch, step, optimizer, lr_scheduler,
            generator, precision, items, len(batches), started,
        )
        watch.lap("train")
        info.train_loss = sum(epoch_losses) / len(epoch_losses) if epoch_losses else None
        info.validation_loss = validation() if validation is not None else None
        if validation is not None:
            watch.lap("validation")
        # The cheap signal first: a gate that finds nothing to learn from this epoch saves its sampling and scoring.
        if t.sample_checkpoints and (last or sample_when is None or sample_when(epoch, info.validation_loss, last)):
            from loratune.sampling import render_samples, with_seeds

            residency.enter("sample", models, optimizer)
            folder = out_dir / "samples" / f"epoch-{epoch:04d}"
            info.samples = render_samples(config, models, precision, folder)
            watch.lap("sample")

            def sample_more(seeds: list[int], folder: Path = folder) -> list[Any]:
                residency.enter("sample", models, optimizer)  # the callback may have moved the models to score
                return render_samples(with_seeds(config, seeds), models, precision, folder, append=True)

            info.sample_more = sample_more
        info.seconds, info.device = watch.take(), device_name
        step_log.epoch(epoch, step, info.validation_loss, info.train_loss)
        checkpoints.append(info)
        step_log.flush()  # a search may stop the trial at this checkpoint: its curve is complete on disk by then
        if on_checkpoint is not None:
            try:
                on_checkpoint(info)
            except StopTraining:
                stopped = True
                break
            finally:
                info.sample_more = None  # it holds the live models: only this epoch's callback may draw with them
        residency.enter("train", models, optimizer)
        watch.lap("checkpoint")  # the callback's time (scoring) is its own to count: not the next epoch's training
        watch.take()
    return TrainResult(out_dir, checkpoints, step, epochs_done, stopped_early=stopped, final_loss=loss_value)
