"""Training and scoring take turns on the device: the memory estimate (weights exact against the loaded tiny models,
and against published parameter counts), the choice of residency, and the swap policy's moves at each phase."""

from __future__ import annotations

import pytest

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.residency.components import Part, module_bytes
from loratune.residency.estimate import GIB, Estimate, choose, estimate


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_estimated_weights_equal_the_loaded_tiny_models_bytes(tiny_models, family) -> None:
    from loratune.evaluation import Evaluator
    from loratune.residency.policy import scorer_modules
    from loratune.train.model import add_lora, load_models, state_dict

    config = load_config(tiny_models.configs[family], ["train.train_text_encoder=true", "train.rank=4"])
    found = estimate(config, "cpu")
    models = load_models(config.model.base, family)
    f = models.family
    loaded = {f.denoiser.subfolder: models.denoiser, f.vae.subfolder: models.vae}
    loaded |= {c.subfolder: m for c, m in zip(f.text_encoders, models.text_encoders)}
    assert {p.name: p.bytes for p in found.base} == {k: module_bytes(m) for k, m in loaded.items()}
    add_lora(models, 4, 4.0, config.train.target_modules, config.train.text_encoder_target_modules)
    lora = sum(t.numel() for t in state_dict(models.denoiser).values()) + sum(
        t.numel() for i in models.trained_text_encoders for t in state_dict(models.text_encoders[i]).values())
    assert found.lora[0].numel == lora and found.lora[0].bytes == 4 * lora

    if family == "sd15":  # the scorers, as the evaluator loads them (shared open_clip counted once)
        from loratune.metrics.cache import clear_model_cache

        clear_model_cache()
        Evaluator(config, show_progress=False).load()
        assert sum(p.bytes for p in found.scorers) == sum(module_bytes(m) for m in scorer_modules())
        assert {p.name.split(":")[0] for p in found.scorers} == {"alignment", "consistency", "aesthetics",
                                                                  "diversity"}  # piqe has no weights


def test_published_configs_give_the_published_parameter_counts() -> None:
    """Built on the meta device offline: SD1.5's UNet 859.5 M, VAE 83.7 M, CLIP-L text 123.1 M; SDXL's UNet
    2.567 B and OpenCLIP-bigG text 694.7 M; FLUX.1-dev's transformer 11.90 B (11,901,408,320), its VAE 83.8 M and
    T5-XXL's encoder 4.76 B; InternVL2-8B 8.08 B."""
    from loratune.families import get_family
    from loratune.residency.components import base_configs, build_part, build_vlm, module_numel

    millions = {}
    for family in ("sd15", "sdxl", "flux"):
        configs, source = base_configs(get_family(family).default_repo, family)
        assert "published" in source
        millions[family] = {sub: round(module_numel(build_part(cls, conf)) / 1e6, 1)
                            for sub, (cls, conf) in configs.items()}
    assert millions["sd15"] == {"unet": 859.5, "vae": 83.7, "text_encoder": 123.1}
    assert millions["sdxl"] == {"unet": 2567.5, "vae": 83.7, "text_encoder": 123.1, "text_encoder_2": 694.7}
    assert millions["flux"] == {"transformer": 11901.4, "vae": 83.8, "text_encoder": 123.1, "text_encoder_2": 4762.3}
    model, source = build_vlm("OpenGVLab/InternVL2-8B")
    assert round(module_numel(model) / 1e9, 2) == 8.08 and "published" in source


def test_a_quantised_denoiser_is_estimated_as_stored(tiny_models) -> None:
    """fp8 (diffusers' layerwise casting, which runs on a CPU too): the estimate equals the loaded tiny Flux's bytes;
    nf4 (bitsandbytes needs a GPU to load) sits between 4 and 8 bits per element."""
    import torch

    from loratune.families import get_family
    from loratune.residency.components import base_configs, build_part, module_numel, quantized_part

    configs, source = base_configs(str(tiny_models.flux), "flux")
    loaded = get_family("flux").load(str(tiny_models.flux), quantize="fp8").denoiser
    fp8 = quantized_part("transformer", build_part(*configs["transformer"]), "fp8", source)
    assert fp8.bytes == module_bytes(loaded) and fp8.name == "transformer (fp8)"
    assert loaded.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    model = build_part(*configs["transformer"])
    nf4 = quantized_part("transformer", model, "nf4", source)
    assert module_numel(model) / 2 < nf4.bytes < fp8.bytes


def _estimate(train: float, sample: float, score: float, base: float = 4, scorers: float = 10) -> Estimate:
    gib = int(GIB)
    return Estimate([Part("unet", int(base * gib), 1, "")], [Part("LoRA weights", 0, 4, "")],
                    [Part("vlm", int(scorers * gib), 1, "")],
                    {"train": int(train * gib), "sample": int(sample * gib), "score": int(score * gib)})


def test_auto_keeps_when_everything_fits_swaps_when_not_and_stops_when_swap_cannot_fit() -> None:
    e = _estimate(train=2, sample=1, score=1)
    assert (e.peak("keep"), e.peak("swap")) == (16 * GIB, 11 * GIB)  # 4 + 10 + 2; max(4 + 2, 4 + 1, 10 + 1)
    assert choose(e, "auto", 20 * GIB) == ("keep", None)
    assert choose(e, "auto", 12 * GIB) == ("swap", None)
    assert choose(e, "auto", None) == ("keep", None)  # the CPU: no limit
    chosen, stop = choose(e, "auto", 8 * GIB)
    assert chosen == "swap" and "11.0 GiB" in stop and "8.0 GiB free" in stop
    chosen, stop = choose(e, "keep", 12 * GIB)
    assert chosen == "keep" and "swap would need 11.0 GiB" in stop


@pytest.mark.slow
def test_swap_moves_models_at_each_phase_boundary(tiny_models, small_dataset_factory, tmp_path) -> None:
    import torch

    from loratune.evaluation import Evaluator
    from loratune.residency.policy import Residency, scorer_modules
    from loratune.train import train

    config = load_config(tiny_models.config, [f"dataset.path={small_dataset_factory(1)}", "train.epochs=2",
                                              "sampling.steps=2", "sampling.seeds=[0]", "train.sample_checkpoints=true"])
    evaluator = Evaluator(config, show_progress=False)
    evaluator.load()
    residency = Residency("swap", torch.device("cpu"))
    placed: list[tuple[str, set[str]]] = []

    def on_checkpoint(info) -> None:  # what a search does: score the epoch's samples
        residency.enter("score")
        placed.append(("score", {str(p.device) for m in scorer_modules() for p in m.parameters()}))
        evaluator.score(info.samples)

    train(config, tmp_path / "run", on_checkpoint=on_checkpoint, residency=residency)
    per_epoch = [("sample", "scorers", "cpu"), ("sample", "optimizer", "cpu"), ("sample", "trainer", "cpu"),
                 ("score", "optimizer", "cpu"), ("score", "trainer", "cpu"), ("score", "scorers", "cpu"),
                 ("train", "scorers", "cpu"), ("train", "trainer", "cpu"), ("train", "optimizer", "cpu")]
    assert residency.moves == per_epoch[-3:] + per_epoch * 2
    assert residency.optimizer is not None and residency.models.denoiser is not None
    assert placed == [("score", {"cpu"})] * 2 and len(scorer_modules()) >= 3


def test_preflight_stops_with_one_line_when_even_swap_cannot_fit(tiny_models, monkeypatch) -> None:
    from loratune.residency.policy import preflight

    lines: list[str] = []
    monkeypatch.setattr("loratune.residency.estimate.free_memory", lambda device: 1)  # one free byte
    with pytest.raises(LoratuneError, match="evaluation.residency swap exceeds the 0.0 MiB free"):
        preflight(load_config(tiny_models.config, ["evaluation.residency=swap"]), say=lines.append)
    assert lines[0].startswith("estimated peak device memory") and any("unet" in line for line in lines)
