"""LoRA merging: exact concatenation, Eckart–Young-optimal SVD, parameter average, file round trips."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import safe_open, save_file

from loratune.errors import LoratuneError
from loratune.lora.merge import merge_files, merge_loras, module_delta, modules

LIN = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"


def kohya(rank: int, alpha: float, seed: int, out: int = 12, inp: int = 10, conv_in: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{LIN}.lora_down.weight": torch.randn(rank, inp, generator=g),
        f"{LIN}.lora_up.weight": torch.randn(out, rank, generator=g),
        f"{LIN}.alpha": torch.tensor(float(alpha)),
        f"{CONV}.lora_down.weight": torch.randn(rank, conv_in, 3, 3, generator=g),
        f"{CONV}.lora_up.weight": torch.randn(6, rank, 1, 1, generator=g),
        f"{CONV}.alpha": torch.tensor(float(alpha)),
    }


def forward(state: dict[str, torch.Tensor], module: str, x: torch.Tensor) -> torch.Tensor:
    """kohya's LoRAModule forward: up(down(x)) * alpha / rank."""
    down, up = state[f"{module}.lora_down.weight"].double(), state[f"{module}.lora_up.weight"].double()
    scale = float(state[f"{module}.alpha"]) / down.shape[0]
    if down.dim() == 4:
        return F.conv2d(F.conv2d(x, down, padding=1), up) * scale
    return x @ down.T @ up.T * scale


def test_concat_computes_exactly_the_weighted_sum_of_functions() -> None:
    a, b, c = kohya(4, 2.0, 0), kohya(8, 8.0, 1), kohya(2, 1.0, 2)
    w = [0.5, 0.3, -0.2]
    merged = merge_loras([a, b, c], method="concat", weights=w)
    assert merged[f"{LIN}.lora_down.weight"].shape == (14, 10)
    assert merged[f"{CONV}.lora_up.weight"].shape == (6, 14, 1, 1)
    x = torch.randn(5, 10, dtype=torch.float64)
    want = sum(wi * forward(s, LIN, x) for wi, s in zip(w, (a, b, c)))
    torch.testing.assert_close(forward(merged, LIN, x), want, rtol=1e-5, atol=1e-5)
    img = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    want = sum(wi * forward(s, CONV, img) for wi, s in zip(w, (a, b, c)))
    torch.testing.assert_close(forward(merged, CONV, img), want, rtol=1e-5, atol=1e-5)


def test_svd_error_is_the_best_rank_k_error() -> None:
    a, b = kohya(4, 2.0, 3), kohya(6, 3.0, 4)
    exact = merge_loras([a, b], method="concat")
    for k in (1, 3, 5):
        merged = merge_loras([a, b], method="svd", rank=k)
        assert merged[f"{LIN}.lora_down.weight"].shape == (k, 10)
        assert merged[f"{CONV}.lora_down.weight"].shape == (k, 4, 3, 3)
        for module in (LIN, CONV):
            target = module_delta(exact, module)
            s = torch.linalg.svdvals(target)
            err = torch.linalg.matrix_norm(module_delta(merged, module) - target)
            assert float(err) == pytest.approx(float(s[k:].square().sum().sqrt()), rel=1e-5, abs=1e-6)


def test_svd_at_full_rank_is_exact() -> None:
    a, b = kohya(2, 2.0, 5), kohya(3, 1.0, 6)
    merged = merge_loras([a, b], method="svd", rank=5, weights=[1.0, 1.0])
    torch.testing.assert_close(module_delta(merged, LIN), module_delta(a, LIN) + module_delta(b, LIN))


def test_avg_is_exact_when_inputs_share_down_projections() -> None:
    a, b = kohya(4, 4.0, 7), kohya(4, 2.0, 8)
    for key in a:
        if key.endswith("lora_down.weight"):
            b[key] = a[key].clone()
    merged = merge_loras([a, b], method="avg", weights=[0.25, 0.75])
    for module in (LIN, CONV):
        want = 0.25 * module_delta(a, module) + 0.75 * module_delta(b, module)
        torch.testing.assert_close(module_delta(merged, module), want)


def test_avg_of_identical_loras_is_the_same_lora() -> None:
    a = kohya(4, 1.0, 9)
    merged = merge_loras([a, a, a], method="avg")
    torch.testing.assert_close(module_delta(merged, LIN), module_delta(a, LIN))


def test_avg_refuses_different_ranks() -> None:
    with pytest.raises(LoratuneError, match="equal ranks"):
        merge_loras([kohya(4, 4, 0), kohya(8, 8, 1)], method="avg")


def test_missing_module_counts_as_zero() -> None:
    a, b = kohya(2, 2, 0), kohya(2, 2, 1)
    b = {k: v for k, v in b.items() if not k.startswith(CONV)}
    merged = merge_loras([a, b], method="concat", weights=[0.5, 0.5])
    torch.testing.assert_close(module_delta(merged, CONV), 0.5 * module_delta(a, CONV))


def test_refuses_non_lora_keys_and_shape_mismatch() -> None:
    a = kohya(2, 2, 0)
    with pytest.raises(LoratuneError, match="not a plain kohya LoRA"):
        modules({**a, "x.hada_w1_a": torch.zeros(1)})
    with pytest.raises(LoratuneError, match="different layer shapes"):
        merge_loras([a, kohya(2, 2, 1, out=7)])


def test_merge_files_writes_loadable_safetensors_with_metadata(tmp_path) -> None:
    a, b = kohya(4, 2.0, 0), kohya(4, 4.0, 1)
    meta = {"ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_base_model_version": "sd_v1", "other": "x"}
    save_file({k: v.half() for k, v in a.items()}, str(tmp_path / "a.safetensors"), metadata=meta)
    save_file({k: v.half() for k, v in b.items()}, str(tmp_path / "b.safetensors"), metadata=meta)
    out = merge_files([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "m.safetensors",
                      method="svd", rank=3, weights=[0.6, 0.4])
    with safe_open(str(out), framework="pt") as fh:
        got_meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118  safe_open has no __iter__
    assert got_meta["ss_network_dim"] == "3" and got_meta["ss_network_alpha"] == "3"
    assert got_meta["ss_base_model_version"] == "sd_v1" and "other" not in got_meta
    assert json.loads(got_meta["loratune_merge"]) == {"method": "svd", "weights": [0.6, 0.4], "rank": 3,
                                                       "sources": ["a.safetensors", "b.safetensors"]}
    assert tensors[f"{LIN}.lora_down.weight"].dtype == torch.float16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors", "m.safetensors"]
