"""The built-in trainer on the tiny SD1.5 and SDXL models: real training steps, real files, loaded back, and the
base model a search worker keeps between trials."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from loratune.config import Config, load_config
from loratune.errors import LoratuneError
from loratune.lora.kohya import read_metadata
from loratune.train import StopTraining, TrainingDiverged, train
from loratune.train.cache import BaseCache
from loratune.train.model import load_models, training_precision

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_dataset(small_dataset_factory) -> Path:
    """One captioned image per character, one repeat: a single batch of two per epoch."""
    return small_dataset_factory(1)


def make_config(tiny_models, dataset: Path, *overrides: str, family: str = "sd15") -> Config:
    base = [
        f"model.base={getattr(tiny_models, family)}",
        f"model.family={family}",
        f"dataset.path={dataset}",
        "dataset.resolution=64",
        "train.rank=4",
        "train.learning_rate=1e-3",
        "train.epochs=1",
        "train.batch_size=2",
        "train.sample_checkpoints=false",
        "sampling.steps=2",
        "sampling.seeds=[0]",
        "sampling.width=32",
        "sampling.height=32",
        "sampling.cfg=1.0",
        "sampling.prompts=[{text: lucaboy on a beach, character: lucaboy}]",
    ]
    return load_config(tiny_models.config, [*base, *overrides])


def _pixels(path: Path | str) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("optimizer", ["adamw", "prodigy", "lion"])
def test_each_optimizer_moves_the_lora_weights(tiny_models, small_dataset, tmp_path, family, optimizer) -> None:
    lr = {"adamw": "1e-3", "prodigy": "1.0", "lion": "1e-4"}[optimizer]
    config = make_config(
        tiny_models,
        small_dataset,
        f"train.optimizer={optimizer}",
        f"train.learning_rate={lr}",
        "train.epochs=2",
        family=family,
    )
    result = train(config, tmp_path)
    assert result.steps == 2 and result.epochs == 2 and np.isfinite(result.final_loss)
    tensors = load_file(result.last.kohya_path)
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and all(v.abs().max() > 0 for v in ups)  # B starts at zero: every module was trained
    meta = read_metadata(result.last.kohya_path)
    assert meta["ss_optimizer"] == optimizer and meta["ss_steps"] == "2" and meta["ss_epoch"] == "2"
    assert meta["ss_base_model_version"] == {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}[family]


def test_prodigy_without_a_learning_rate_trains_at_1(tiny_models, small_dataset, tmp_path) -> None:
    # Prodigy's step is d * lr with d estimated from d0 = 1e-6 upwards: the old default lr 1e-4 on top of that
    # leaves the LoRA where it started (B moves ~1e-9 in three steps), while lr 1.0 moves it 10^4 times as far.
    moved = {}
    for lr in ("null", "1e-4"):
        config = make_config(
            tiny_models, small_dataset, "train.optimizer=prodigy", f"train.learning_rate={lr}", "train.epochs=3"
        )
        records: list[dict] = []
        result = train(config, tmp_path / lr, progress=records.append)
        assert [r["lr"] for r in records] == [config.train.effective_learning_rate] * 3
        ups = [v for k, v in load_file(result.last.kohya_path).items() if k.endswith("lora_up.weight")]
        moved[lr] = max(float(v.abs().max()) for v in ups)
    assert read_metadata(tmp_path / "null" / "checkpoints" / "epoch-0003" / "tiny-000003.safetensors")[
        "ss_learning_rate"
    ] == "1.0"
    assert moved["null"] > 1000 * moved["1e-4"] > 0


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_text_encoder_lora_gets_gradients_under_gradient_checkpointing(
    tiny_models, small_dataset, tmp_path, family
) -> None:
    cache = BaseCache()
    te_ups = {}
    for checkpointing in ("true", "false"):
        config = make_config(
            tiny_models,
            small_dataset,
            "train.train_text_encoder=true",
            f"train.gradient_checkpointing={checkpointing}",
            family=family,
        )
        result = train(config, tmp_path / checkpointing, cache=cache)
        tensors = load_file(result.last.kohya_path)
        te_ups[checkpointing] = {
            k: v for k, v in tensors.items() if k.startswith("lora_te") and k.endswith("lora_up.weight")
        }
    # B starts at zero, so a module that moved got a gradient. Checkpointing recomputes the same forward pass: every
    # module gets the gradient it gets without (all but SDXL's first-encoder last layer, whose output is unused).
    on, off = te_ups["true"], te_ups["false"]
    assert on.keys() == off.keys()
    for key in on:
        torch.testing.assert_close(on[key], off[key], rtol=0, atol=1e-6)
    moved = {k for k, v in on.items() if v.abs().max() > 0}
    unused = {k for k in on if family == "sdxl" and k.startswith("lora_te1_text_model_encoder_layers_1_")}
    assert moved == on.keys() - unused and len(unused) == (4 if family == "sdxl" else 0)


def test_adamw8bit_and_bf16_mixed_precision_in_one_process(tiny_models, small_dataset, tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    for precision, optimizer in [("bf16", "adamw"), ("no", "adamw8bit")]:
        config = make_config(
            tiny_models, small_dataset, f"train.mixed_precision={precision}", f"train.optimizer={optimizer}"
        )
        result = train(config, tmp_path / precision)
        assert np.isfinite(result.final_loss)
        ups = [v for k, v in load_file(result.last.kohya_path).items() if k.endswith("lora_up.weight")]
        assert all(v.dtype == torch.float32 and v.abs().max() > 0 for v in ups)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_kohya_file_gives_the_same_images_as_the_diffusers_file(tiny_models, small_dataset, tmp_path, family) -> None:
    from loratune.sampling import render_samples

    config = make_config(
        tiny_models,
        small_dataset,
        "train.alpha=2",
        "train.train_text_encoder=true",
        "train.sample_checkpoints=true",
        "train.learning_rate=1e-2",
        family=family,
    )
    result = train(config, tmp_path / "run")
    info = result.last
    kohya = load_file(info.kohya_path)
    prefixes = {
        "sd15": ("lora_unet_", "lora_te_text_model_"),
        "sdxl": ("lora_unet_", "lora_te1_text_model_", "lora_te2_text_model_"),
    }
    assert {next(p for p in prefixes[family] if k.startswith(p)) for k in kohya} == set(prefixes[family])
    assert {v.item() for k, v in kohya.items() if k.endswith(".alpha")} == {2.0}

    precision = training_precision(config.train)
    with BaseCache().borrow(config, precision) as loaded:
        base = render_samples(config, loaded.models, precision, tmp_path / "base")
        ours = render_samples(config, loaded.models, precision, tmp_path / "diffusers", lora=info.diffusers_path)
        theirs = render_samples(config, loaded.models, precision, tmp_path / "kohya", lora=info.kohya_path)
    for b, d, k, live in zip(base, ours, theirs, info.samples):
        assert np.abs(_pixels(b.path) - _pixels(d.path)).max() > 0  # the LoRA changes the image ...
        assert np.array_equal(_pixels(d.path), _pixels(k.path))  # ... identically from both files (alpha 2 != rank 4)
        assert np.array_equal(_pixels(d.path), _pixels(live.path))  # ... and as during training


def test_curriculum_changes_the_resolution_the_unet_sees(tiny_models, small_dataset, tmp_path) -> None:
    config = make_config(tiny_models, small_dataset, "train.epochs=3", "train.curriculum={2: 96, 3: 128}")
    seen: list[tuple[int, list[int]]] = []
    train(config, tmp_path, progress=lambda r: seen.append((r["epoch"], r["latent_size"])))
    # the tiny VAE halves the size: 64 px -> 32 latent pixels
    assert seen == [(1, [32, 32]), (2, [48, 48]), (3, [64, 64])]
    meta = read_metadata(tmp_path / "checkpoints" / "epoch-0003" / "tiny-000003.safetensors")
    assert meta["ss_resolution"] == "(128, 128)" and json.loads(meta["loratune_curriculum"]) == {"2": 96, "3": 128}


def test_progressive_rank_growth_keeps_the_function_exactly(tiny_models) -> None:
    from diffusers import UNet2DConditionModel

    from loratune.train.model import Models, add_lora, current_rank, grow_rank, lora_modules

    unet = UNet2DConditionModel.from_pretrained(tiny_models.sd15, subfolder="unet")
    add_lora(Models("sd15", unet, None, [], [], None), 4, 2.0, ["to_q", "to_k", "to_v", "to_out.0"], None)
    torch.manual_seed(0)
    for _, module in lora_modules(unet):
        torch.nn.init.normal_(module.lora_B["default"].weight)  # a trained adapter: B no longer zero
    latents, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        before = unet(latents, t, text).sample
        replaced = grow_rank(unet, 8, seed=0)
        after = unet(latents, t, text).sample
    assert current_rank(unet) == 8 and len(replaced) == 2 * len(lora_modules(unet))
    assert unet.peft_config["default"].r == 8 and unet.peft_config["default"].lora_alpha == 4.0  # scale kept: 0.5
    assert torch.equal(before, after)


def test_progressive_rank_in_training_rebuilds_the_optimizer(tiny_models, small_dataset, tmp_path) -> None:
    config = make_config(
        tiny_models, small_dataset, "train.epochs=2", "train.rank_schedule={2: 8}", "train.train_text_encoder=true"
    )
    result = train(config, tmp_path)
    first, second = (load_file(c.kohya_path) for c in result.checkpoints)
    key = next(k for k in first if k.startswith("lora_unet") and k.endswith("lora_down.weight"))
    assert first[key].shape[0] == 4 and second[key].shape[0] == 8
    meta = read_metadata(result.checkpoints[1].kohya_path)
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "8.0"
    assert json.loads(meta["loratune_rank_schedule"]) == {"1": 4, "2": 8}
    up = next(k for k in second if k.startswith("lora_te") and k.endswith("lora_up.weight"))
    assert second[up][:, 4:].abs().max() > 0  # the new columns trained after the growth


def test_resume_continues_step_count_and_optimizer_state(tiny_models, small_dataset, tmp_path) -> None:
    # The interruption falls after the rank grew: resuming must rebuild rank 8 before loading the optimizer state.
    config = make_config(
        tiny_models, small_dataset, "train.epochs=3", "train.lr_scheduler=cosine", "train.rank_schedule={2: 8}"
    )
    straight = train(config, tmp_path / "straight")

    def stop_after_second(info):
        if info.epoch == 2:
            raise StopTraining

    interrupted = train(config, tmp_path / "resumed", on_checkpoint=stop_after_second)
    assert interrupted.stopped_early and interrupted.steps == 2 and len(interrupted.checkpoints) == 2
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert resumed.steps == straight.steps == 3 and [c.epoch for c in resumed.checkpoints] == [3]
    a, b = load_file(straight.last.kohya_path), load_file(resumed.last.kohya_path)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    log = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3]
    with pytest.raises(LoratuneError, match="already holds checkpoints"):
        train(config, tmp_path / "straight")


def test_training_features_together(tiny_models, small_dataset, tmp_path) -> None:
    config = make_config(
        tiny_models,
        small_dataset,
        "train.prediction_type=v_prediction",
        "train.min_snr_gamma=5",
        "train.noise_offset=0.1",
        "train.gradient_accumulation=2",
        "train.gradient_checkpointing=true",
        "train.flip=true",
        "train.shuffle_captions=true",
        "train.keep_tokens=1",
        "train.cache_latents=false",
        "train.lr_scheduler=cosine_with_restarts",
        "train.lr_warmup_steps=1",
        "train.batch_size=1",
        "train.epochs=2",
        "train.optimizer=prodigy",
        "train.learning_rate=1.0",
        "train.prodigy.use_bias_correction=true",
        "train.prodigy.safeguard_warmup=true",
        "train.prodigy.d_coef=2",
    )
    result = train(config, tmp_path)
    assert result.steps == 2  # per epoch two batches of one, accumulated into one step; the first at warmup lr 0
    assert np.isfinite(result.final_loss)
    assert all(v.abs().max() > 0 for k, v in load_file(result.last.kohya_path).items() if k.endswith("lora_up.weight"))


# -- one base per worker: trials borrow it and leave it pristine; the ensemble is drawn on it like the epochs ------


class CountingLoader:
    """``load_models`` with a count of its calls (each call reads every part with ``from_pretrained``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def __call__(self, base: str, family: str, variant: str | None = None):  # type: ignore[no-untyped-def]
        self.calls.append((base, family, variant))
        return load_models(base, family, variant)


def test_a_trial_does_not_depend_on_the_trial_before(tiny_models, small_dataset, tmp_path) -> None:
    a = make_config(tiny_models, small_dataset, "train.epochs=2")
    # B touches everything a trial may leave behind: text-encoder adapters, a larger rank, checkpointing, another
    # prediction type (the noise scheduler's config), shuffled captions, uncached latents, another optimizer.
    b = make_config(
        tiny_models,
        small_dataset,
        "train.epochs=2",
        "train.rank=8",
        "train.rank_schedule={2: 16}",
        "train.train_text_encoder=true",
        "train.gradient_checkpointing=true",
        "train.prediction_type=v_prediction",
        "train.shuffle_captions=true",
        "train.cache_latents=false",
        "train.optimizer=lion",
        "train.learning_rate=1e-4",
    )
    loader = CountingLoader()
    cache = BaseCache(loader=loader)
    first = train(a, tmp_path / "a1", cache=cache)
    train(b, tmp_path / "b", cache=cache)
    again = train(a, tmp_path / "a2", cache=cache)
    assert len(loader.calls) == 1  # three trials, one load
    before, after = load_file(first.last.kohya_path), load_file(again.last.kohya_path)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(k.startswith("lora_te") for k in after)  # B's text-encoder adapters are gone
    with cache.borrow(a, training_precision(a.train)) as base:
        assert base.models.noise_scheduler.config.prediction_type == "epsilon"
        assert not any("lora_" in name for name, _ in base.models.denoiser.named_parameters())
        assert len(base.latents) == 2 and len(base.texts) == 2  # two images, two captions: kept across trials


def test_a_new_base_or_precision_loads_again(tiny_models, small_dataset) -> None:
    loader = CountingLoader()
    cache = BaseCache(loader=loader)
    for overrides in [(), ("train.mixed_precision=bf16",), ("train.mixed_precision=bf16",), ()]:
        config = make_config(tiny_models, small_dataset, *overrides)
        with cache.borrow(config, training_precision(config.train)) as base:
            assert base.models.denoiser.dtype == (torch.bfloat16 if overrides else torch.float32)
    assert len(loader.calls) == 3


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_the_ensemble_is_drawn_like_the_epoch_it_came_from(tiny_models, small_dataset, tmp_path, precision) -> None:
    """An epoch's LoRA, merged alone (as the ensemble trial does) and scored by the trial backend, gives the very
    images its epoch gave during training: same pipeline, scheduler and precision, on the same loaded base.

    Identical to the bit, in bf16 too: a file's LoRA loads in the base's dtype, the trained one is float32, but
    autocast rounds both to bf16 the same way before any matmul."""
    from loratune.lora.merge import merge_files
    from loratune.search.trials import TrainAndScore

    config = make_config(
        tiny_models,
        small_dataset,
        "train.sample_checkpoints=true",
        "sampling.seeds=[0, 1]",
        "sampling.cfg=2.0",
        "train.train_text_encoder=true",
        "train.prediction_type=v_prediction",  # the ensemble must be drawn with the trained prediction type too
        "sampling.scheduler=euler",
        f"train.mixed_precision={precision}",
        "train.learning_rate=1e-2",
        "evaluation.backends.alignment=null",
        "evaluation.backends.aesthetics=null",
        "evaluation.backends.quality=null",
    )
    loader = CountingLoader()
    backend = TrainAndScore(cache=BaseCache(loader=loader))
    epochs = []
    backend.train(config, tmp_path / "trial", epochs.append)
    epoch = epochs[-1]
    for method in ("concat", "avg"):
        merged = merge_files([epoch.lora], tmp_path / method / "ensemble.safetensors", method=method)
        ensemble = backend.score_lora(config, merged, tmp_path / method)
        live = sorted(epoch.samples_dir.glob("*.png"))
        drawn = sorted(ensemble.samples_dir.glob("*.png"))
        assert [p.name for p in live] == [p.name for p in drawn] == ["p00-s0.png", "p00-s1.png"]
        assert all(np.array_equal(_pixels(x), _pixels(y)) for x, y in zip(live, drawn))  # identical, not close
        assert ensemble.composite == epoch.composite
    from loratune.sampling import render_samples

    with backend.cache.borrow(config, training_precision(config.train)) as base:
        plain = render_samples(config, base.models, training_precision(config.train), tmp_path / "plain")
    assert all(np.abs(_pixels(p.path) - _pixels(x)).max() > 0 for p, x in zip(plain, live))  # the LoRA shows
    assert len(loader.calls) == 1  # training, both ensembles and the plain base on one loaded base


def test_nan_loss_raises_and_leaves_a_marker(tiny_models, small_dataset, tmp_path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models.sd15, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["conv_in.bias"] = torch.full_like(tensors["conv_in.bias"], float("nan"))
    save_file(tensors, weights)
    config = make_config(tiny_models, small_dataset, f"model.base={broken}")
    with pytest.raises(TrainingDiverged, match="loss is nan") as err:
        train(config, tmp_path / "run")
    marker = json.loads((tmp_path / "run" / "FAILED.json").read_text())
    assert err.value.marker == tmp_path / "run" / "FAILED.json"
    assert marker["reason"] == "diverged" and marker["step"] == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.rank=0", "train.rank"),
        ("train.optimizer=sgd", "train.optimizer"),
        ("train.learning_rate=-1", "train.learning_rate"),
        ("train.rank_schedule={2: 2}", "rank must grow"),
        ("train.curriculum={1: 100}", "multiple of 8"),
    ],
)
def test_bad_config_values_are_one_clear_error(tiny_models, small_dataset, override, message) -> None:
    with pytest.raises(LoratuneError, match=message):
        make_config(tiny_models, small_dataset, override)


def test_bad_dataset_fails_before_any_model_loads(tiny_models, tmp_path) -> None:
    (tmp_path / "data" / "10_x").mkdir(parents=True)
    config = make_config(tiny_models, tmp_path / "data", "model.base=/nonexistent/but/never/loaded")
    with pytest.raises(LoratuneError, match="model.base"):
        train(config, tmp_path / "run")
    config = make_config(tiny_models, tmp_path / "data")
    with pytest.raises(LoratuneError, match="no training images"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
