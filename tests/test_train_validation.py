"""The per-epoch validation loss: the plain MSE at fixed images, timesteps and noise, logged under kohya's tags."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F
from test_train import make_config
from test_train_logging import _scalars

from loratune.train import train
from loratune.train.data import scan_dataset
from loratune.train.encode import encode_images, encode_text, load_pixels
from loratune.train.logging import LOG_DIR
from loratune.train.model import load_models
from loratune.train.validation import VALIDATION_SEED, ValidationLoss, validation_images

pytestmark = pytest.mark.slow


def test_validation_loss_is_the_plain_mse_at_fixed_timesteps_and_noise(tiny_models, small_dataset_factory) -> None:
    config = make_config(tiny_models, small_dataset_factory(2), "train.validation_images=3",
                         "train.validation_timesteps=4")
    items = scan_dataset(config.dataset.path, ".txt")
    images = validation_images(config, items)
    assert images is not None and images.source == "training subset" and len(images.items) == 3
    assert validation_images(config, items) == images  # picked by seed: the same images every time
    models = load_models(config.model.base, "sd15")
    loss = ValidationLoss(config, models, images, torch.device("cpu"), torch.float32, contextlib.nullcontext)

    # The reference, written out: stratum midpoints of the 1000-step schedule, noise from the fixed seed.
    assert loss.levels == [0.125, 0.375, 0.625, 0.875]
    with torch.no_grad():
        pixels = torch.stack([load_pixels(it, (64, 64), False) for it in images.items])
        latents = encode_images(models.vae, pixels, sample=False)
        hidden = encode_text(models, [it.caption for it in images.items], "cpu").hidden
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        errors = []
        for step in (125, 375, 625, 875):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.full((3,), step)
            pred = models.denoiser(models.noise_scheduler.add_noise(latents, noise, t), t, hidden).sample
            errors.append(F.mse_loss(pred, noise, reduction="none").mean(dim=[1, 2, 3]))
    expected = float(torch.cat(errors).mean())

    models.denoiser.train()  # as in training: the call switches to eval mode and back
    torch.manual_seed(1)
    first = loss()
    torch.manual_seed(2)
    state = torch.get_rng_state()
    second = loss()
    assert first == pytest.approx(expected, rel=1e-6) and first == second  # deterministic, whatever the global RNG
    assert torch.equal(torch.get_rng_state(), state)  # the training's random stream is left where it was
    assert models.denoiser.training  # modes restored


def test_each_epoch_has_a_validation_loss_on_the_held_out_images_in_tensorboard(tiny_models, small_dataset_factory,
                                                                               tmp_path) -> None:
    config = make_config(tiny_models, small_dataset_factory(2), "train.epochs=3", "train.learning_rate=2e-2",
                         "dataset.holdout=0.5")
    held = validation_images(config, [])
    assert held is not None and held.source == "held-out" and len(held.items) == 2
    result = train(config, tmp_path)
    losses = [c.validation_loss for c in result.checkpoints]
    assert all(isinstance(v, float) for v in losses) and len(set(losses)) == 3  # the LoRA moves it every epoch
    scalars = _scalars(tmp_path / LOG_DIR)
    steps = [c.step for c in result.checkpoints]
    assert scalars["loss/validation/epoch_average"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in zip(steps, losses)]
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    for checkpoint, (_, divergence) in zip(result.checkpoints, scalars["loss/validation/epoch_divergence"]):
        train_average = sum(r["loss"] for r in log if r["epoch"] == checkpoint.epoch) / 1  # one step per epoch
        assert divergence == pytest.approx(checkpoint.validation_loss - train_average, rel=1e-5)


def test_validation_can_be_off(tiny_models, small_dataset_factory, tmp_path) -> None:
    config = make_config(tiny_models, small_dataset_factory(1), "train.validation_images=0")
    assert train(config, tmp_path).last.validation_loss is None


def test_the_gate_hears_each_validation_loss_before_sampling_and_the_last_epoch_is_always_sampled(
        tiny_models, small_dataset_factory, tmp_path) -> None:
    config = make_config(tiny_models, small_dataset_factory(2), "train.epochs=3", "train.learning_rate=2e-2",
                         "train.sample_checkpoints=true")
    heard: list[tuple[int, float | None, bool]] = []

    def never(epoch: int, validation_loss: float | None, last: bool) -> bool:
        heard.append((epoch, validation_loss, last))
        return False

    result = train(config, tmp_path, sample_when=never)
    assert heard == [(c.epoch, c.validation_loss, False) for c in result.checkpoints[:2]]  # the last is not asked
    assert [bool(c.samples) for c in result.checkpoints] == [False, False, True]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir() if p.name != "base") == ["epoch-0003"]
    # Each checkpoint's seconds: the setup once, training and validation every epoch, sampling where it was drawn.
    seconds = [c.seconds for c in result.checkpoints]
    assert "setup" in seconds[0] and not any("setup" in s for s in seconds[1:])
    assert all(s["train"] > 0 and s["validation"] > 0 for s in seconds)
    assert [("sample" in s) for s in seconds] == [False, False, True] and seconds[2]["sample"] > 0
    assert {c.device for c in result.checkpoints} == {"cpu"}
