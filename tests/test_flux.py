"""Flux.1 as a family: kohya's Flux format read back by diffusers' own loader, the key forms ComfyUI maps, the
flow-matching noise levels against sd-scripts' formulas, and the tiny Flux through train, evaluate, optimize and
report."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from loratune.cli import main
from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.families.flux import flow_sigmas
from loratune.families.flux_kohya import _DOUBLE, _SINGLE
from loratune.lora.kohya import read_metadata, to_kohya

# ComfyUI's LoRA key forms for Flux (comfy/lora.py, model_lora_keys_unet): "lora_unet_" + an original diffusion-model
# weight name with dots as underscores; CLIP-L's as lora_te1_text_model_encoder_layers_N_<LORA_CLIP_MAP name>.
COMFY_UNET = re.compile(
    r"^lora_unet_(double_blocks_\d+_(img|txt)_(attn_(qkv|proj)|mlp_[02]|mod_lin)"
    r"|single_blocks_\d+_(linear[12]|modulation_lin))\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
COMFY_CLIP_L = re.compile(
    r"^lora_te1_text_model_encoder_layers_\d+_(mlp_fc[12]|self_attn_(q|k|v|out)_proj)"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$"
)
PROMPT = "lucaboy, a boy with curly brown hair, on a beach"


def _flux1_shapes(inner: int = 3072, mlp: int = 12288) -> dict[str, tuple[int, int]]:
    """(in, out) of every module in kohya's default set, in one double and one single block of FLUX.1."""
    shapes = {}
    for name in _DOUBLE:
        out = {"ff.net.0.proj": mlp, "ff_context.net.0.proj": mlp, "norm1.linear": 6 * inner,
               "norm1_context.linear": 6 * inner}.get(name, inner)
        shapes[f"transformer_blocks.0.{name}"] = (mlp if name.endswith("net.2") else inner, out)
    for name in _SINGLE:
        out = {"proj_mlp": mlp, "norm.linear": 3 * inner}.get(name, inner)
        shapes[f"single_transformer_blocks.0.{name}"] = (inner + mlp if name == "proj_out" else inner, out)
    return shapes


def test_kohya_flux_file_loads_in_diffusers_at_flux1_widths() -> None:
    """Our kohya export of a LoRA on every module of kohya's default set, at FLUX.1's real widths (only the LoRA
    factors are real-sized), read back by diffusers' own kohya converter: every module's delta is the one trained."""
    from diffusers import FluxPipeline

    rank, alpha = 2, 1.0
    g = torch.Generator().manual_seed(0)
    peft = {}
    for path, (n_in, n_out) in _flux1_shapes().items():
        peft[f"{path}.lora_A.weight"] = torch.randn(rank, n_in, generator=g)
        peft[f"{path}.lora_B.weight"] = torch.randn(n_out, rank, generator=g)
    tensors = to_kohya("flux", peft, alpha, denoiser_config={"num_attention_heads": 24, "attention_head_dim": 128})
    assert all(COMFY_UNET.match(k) for k in tensors), [k for k in tensors if not COMFY_UNET.match(k)]
    # Fused modules: downs stacked, alpha scaled with them so that alpha / rank is the trained 0.5.
    assert tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (3 * rank, 3072)
    assert tensors["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape == (3 * 3072 + 12288, 4 * rank)
    assert tensors["lora_unet_single_blocks_0_linear1.alpha"].item() == 4 * alpha
    converted = FluxPipeline.lora_state_dict({k: v.clone() for k, v in tensors.items()})
    assert len(converted) == len(peft)
    for path, (n_in, _) in _flux1_shapes().items():
        # The deltas compared on probe vectors: the full matrices are up to 18432 × 3072.
        probe = torch.randn(n_in, 3, generator=g)
        want = alpha / rank * peft[f"{path}.lora_B.weight"] @ (peft[f"{path}.lora_A.weight"] @ probe)
        got = converted[f"transformer.{path}.lora_B.weight"] @ (converted[f"transformer.{path}.lora_A.weight"] @ probe)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_flow_sigmas_are_sd_scripts_formulas() -> None:
    """sd-scripts' get_noisy_model_input_and_timesteps: sigmoid of N(0, 1), then the shift or FLUX.1-dev's
    resolution-dependent shift (mu linear from 0.5 at 256 tokens to 1.15 at 4096)."""
    config = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}

    def draw(method: str, seq_len: int = 256) -> torch.Tensor:
        return flow_sigmas(method, 1000, torch.Generator().manual_seed(3), 3.1582, seq_len, config)

    s = torch.randn(1000, generator=torch.Generator().manual_seed(3)).sigmoid()
    torch.testing.assert_close(draw("sigmoid"), s, rtol=0, atol=0)
    torch.testing.assert_close(draw("shift"), s * 3.1582 / (1 + 2.1582 * s), rtol=0, atol=1e-7)
    for seq_len, mu in [(256, 0.5), (4096, 1.15), (1024, 0.5 + 0.65 * 768 / 3840)]:
        torch.testing.assert_close(draw("flux_shift", seq_len), math.exp(mu) / (math.exp(mu) + (1 / s - 1)),
                                   rtol=0, atol=1e-6)
    uniform = draw("uniform")
    assert 0 < float(uniform.min()) and float(uniform.max()) < 1 and abs(float(uniform.mean()) - 0.5) < 0.03
    assert float(draw("shift").mean()) > float(s.mean())  # the shift moves training towards the noisy end


def test_each_family_refuses_the_other_objectives_settings(tiny_models) -> None:
    flux = tiny_models.config_flux
    for setting, field in [("train.min_snr_gamma=5", "train.min_snr_gamma"),
                           ("train.prediction_type=v_prediction", "train.prediction_type"),
                           ("train.noise_offset=0.05", "train.noise_offset"),
                           ("sampling.scheduler=euler", "sampling.scheduler"),
                           ("sampling.negative_prompt=blurry", "sampling.negative_prompt")]:
        with pytest.raises(LoratuneError, match=re.escape(field)):
            load_config(flux, [setting])
    with pytest.raises(LoratuneError, match="train.timestep_sampling: a flow-matching setting"):
        load_config(tiny_models.config, ["train.timestep_sampling=shift"])
    with pytest.raises(LoratuneError, match="model.family: unknown family 'sd3'"):
        load_config(flux, ["model.family=sd3"])
    config = load_config(flux, ["train.timestep_sampling=flux_shift", "train.guidance_scale=1.0"])
    assert config.model.family == "flux" and config.train.timestep_sampling == "flux_shift"


def test_a_refused_setting_is_one_line_and_writes_nothing(tiny_models, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(tiny_models.config_flux), "--out", str(out), "--set", "train.min_snr_gamma=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.min_snr_gamma" in err and "Traceback" not in err
    assert not out.exists()


def _random_lora(models, targets, seed: int = 0) -> None:
    """A LoRA with rank 4, alpha 2 (scale 0.5) and random B, so that it changes the images."""
    from loratune.train.model import add_lora, lora_modules

    add_lora(models, 4, 2.0, targets, None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in lora_modules(models.denoiser):
            weight = module.lora_B["default"].weight
            weight.copy_(torch.randn(weight.shape, generator=g) * 0.5)


@pytest.mark.slow
def test_diffusers_and_our_loader_draw_our_files_as_the_trained_model(tiny_models, tmp_path) -> None:
    """The same images (to 1e-5) from the LoRA in memory, from our kohya file through diffusers'
    FluxPipeline.load_lora_weights, from the diffusers twin, and from the kohya file through our loader."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from loratune.families.flux_kohya import DEFAULT_TARGETS
    from loratune.train.checkpoint import save_checkpoint
    from loratune.train.model import load_models, remove_lora

    base = str(tiny_models.flux)
    models = load_models(base, "flux")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler")
    reference = FluxPipeline.from_pretrained(base)
    reference.set_progress_bar_config(disable=True)

    def draw(pipe) -> np.ndarray:
        return pipe(prompt=PROMPT, num_inference_steps=3, guidance_scale=3.5, width=64, height=64,
                    max_sequence_length=64, generator=torch.Generator().manual_seed(0), output_type="np").images

    plain = draw(reference)
    # diffusers' kohya converter hard-codes FLUX.1's widths for a single block's linear1 (q, k, v, mlp): on the tiny
    # transformer its reader gets every module but those (the test above covers them at FLUX.1's widths).
    double_and_rest = (r"(transformer_blocks\.\d+\.(" + "|".join(map(re.escape, _DOUBLE)) + r")"
                       r"|single_transformer_blocks\.\d+\.(proj_out|norm\.linear))")
    for name, targets in [("diffusers-readable", double_and_rest), ("kohya default", DEFAULT_TARGETS)]:
        _random_lora(models, targets)
        ours = draw(models.family.pipeline(models, scheduler))
        _, diffusers_file, kohya_file = save_checkpoint(tmp_path / name, models, 1, "tiny", {}, {}, {})
        remove_lora(models)
        assert np.abs(ours - plain).max() > 0.01  # the LoRA changes the picture
        loaders = {"ours": lambda path: models.family.load_lora(reference, path, "t"),
                   "diffusers": lambda path: reference.load_lora_weights(str(path.parent), weight_name=path.name,
                                                                         adapter_name="t")}
        files = [(kohya_file, "ours"), (diffusers_file, "diffusers")]
        if targets == double_and_rest:
            files.append((kohya_file, "diffusers"))
        for path, loader in files:
            loaders[loader](path)
            drawn = draw(reference)
            reference.unload_lora_weights()
            assert np.abs(drawn - ours).max() < 1e-5, (name, path.name, loader, np.abs(drawn - ours).max())
    assert np.abs(draw(reference) - plain).max() == 0  # unloaded: the base again


@pytest.fixture(scope="module")
def flux_run(tiny_models, small_dataset_factory, tmp_path_factory):
    """Two epochs of the tiny Flux on one image per character, each checkpoint sampled (1 prompt, 1 seed)."""
    from loratune.train import train

    config = load_config(tiny_models.config_flux, [
        f"dataset.path={small_dataset_factory(1)}", "train.epochs=2", "train.learning_rate=1e-3",
        "sampling.seeds=[0]", "sampling.steps=2", f"sampling.prompts=[{{text: '{PROMPT}', character: lucaboy}}]",
    ])
    out = tmp_path_factory.mktemp("flux-run")
    return config, train(config, out)


@pytest.mark.slow
def test_train_two_epochs_writes_kohya_flux_files(flux_run) -> None:
    _, result = flux_run
    assert result.epochs == 2 and result.steps == 2 and np.isfinite(result.final_loss)
    tensors = load_file(result.last.kohya_path)
    assert tensors and all(COMFY_UNET.match(k) for k in tensors)
    ups = [v for k, v in tensors.items() if k.endswith("lora_up.weight")]
    assert len(ups) == 13 and all(v.abs().max() > 0 for v in ups)  # 10 double-block + 3 single-block modules
    meta = read_metadata(result.last.kohya_path)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora" and "modelspec.prediction_type" not in meta
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_timestep_sampling"] == "shift"
    assert meta["ss_guidance_scale"] == "1.0" and meta["ss_epoch"] == "2"
    assert [len(c.samples) for c in result.checkpoints] == [1, 1]
    losses = [c.validation_loss for c in result.checkpoints]  # the flow-matching loss at fixed sigmas and noise
    assert all(isinstance(v, float) and np.isfinite(v) for v in losses) and losses[0] != losses[1]


@pytest.mark.slow
def test_evaluate_ranks_the_epochs_in_both_formats(flux_run, capsys) -> None:
    config, result = flux_run
    folder = result.out_dir / "checkpoints"
    config_file = result.out_dir / "run.yaml"
    from loratune.config import dump_config

    config_file.write_text(dump_config(config))
    assert main(["evaluate", str(folder), "--config", str(config_file), "--json"]) == 0
    ranking = json.loads((folder.parent / "checkpoints-loratune-eval" / "ranking.json").read_text())
    assert len(ranking) == 4 and {r["epoch"] for r in ranking} == {1, 2, None}
    assert all(r["composite"] is not None for r in ranking)
    capsys.readouterr()


@pytest.mark.slow
def test_optimize_three_trials_and_report(tiny_models, small_dataset_factory, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = [
        "optimize", str(tiny_models.config_flux), "--run", str(run),
        "--set", f"dataset.path={small_dataset_factory(1)}", "--set", "sampling.steps=2", "--set", "sampling.seeds=[0]",
        "--set", "train.epochs=2", "--set", "search.n_trials=3", "--set", "search.pruner=none",
        "--set", "search.space={learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}",
        "--set", "search.phases={refine_trials: 0, ensemble_top_k: 2, ensemble_method: concat}",
    ]
    assert main(args) == 0, capsys.readouterr().err
    study = optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}")
    trials = study.get_trials()
    assert [t.user_attrs["phase"] for t in trials] == ["baseline", "search", "search", "ensemble"]
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("fail_reason") for t in trials]
    assert all(len(t.intermediate_values) == 2 for t in trials[:3])  # both epochs of every trial scored
    # The ensemble merged two trials' kohya Flux files (fused modules included) and was drawn through our loader.
    ensemble = load_file(str(run / trials[-1].user_attrs["trial_dir"] / trials[-1].user_attrs["lora"]))
    assert ensemble["lora_unet_single_blocks_0_linear1.lora_down.weight"].shape[0] == 2 * 4 * 4
    best = json.loads((run / "best" / "best.json").read_text())
    assert all(COMFY_UNET.match(k) for k in load_file(str(run / "best" / best["lora"])))
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    page = (run / "report.html").read_text()
    assert "<code>" in page and "flux" in page


def test_a_quantised_base_is_refused_off_cuda_in_one_line(tiny_models, tmp_path, capsys) -> None:
    with pytest.raises(LoratuneError, match="model.quantize: nf4 needs a CUDA GPU and this run is on cpu"):
        load_config(tiny_models.config_flux, ["model.quantize=nf4", "train.device=cpu"])
    out = tmp_path / "run"
    args = ["train", str(tiny_models.config_flux), "--out", str(out), "--set", "model.quantize=fp8",
            "--set", "train.device=cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.quantize: fp8 needs a CUDA GPU" in err and not out.exists()


def test_quantised_loading_goes_through_bitsandbytes_and_diffusers(tiny_models) -> None:
    """What a CUDA run loads: nf4 as diffusers' BitsAndBytesConfig (bitsandbytes refuses to quantise without a GPU,
    so only the request is checked here); fp8 as diffusers' layerwise casting, which also runs on a CPU: the Linear
    weights are stored in float8 and the forward pass, computed in bf16, stays close to the unquantised one."""
    from diffusers import BitsAndBytesConfig

    from loratune.families import get_family
    from loratune.train.quantize import load_kwargs

    nf4 = load_kwargs("nf4")
    request = nf4["quantization_config"]
    assert isinstance(request, BitsAndBytesConfig) and request.load_in_4bit and request.bnb_4bit_quant_type == "nf4"
    assert request.bnb_4bit_compute_dtype == torch.bfloat16 and nf4["torch_dtype"] == torch.bfloat16
    flux = get_family("flux")
    plain = flux.load(str(tiny_models.flux)).denoiser.to(torch.bfloat16)
    fp8 = flux.load(str(tiny_models.flux), quantize="fp8").denoiser
    assert fp8.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn
    assert fp8.single_transformer_blocks[0].proj_mlp.weight.dtype == torch.float8_e4m3fn
    g = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 16, 64, generator=g), "encoder_hidden_states": torch.randn(1, 8, 32, generator=g),
        "pooled_projections": torch.randn(1, 32, generator=g), "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([1.0]), "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(8, 3),
    }
    inputs = {k: v.bfloat16() for k, v in inputs.items()}
    with torch.no_grad():
        want, got = plain(**inputs, return_dict=False)[0], fp8(**inputs, return_dict=False)[0]
    assert float((got - want).abs().max()) < 0.1 * float(want.abs().max())
