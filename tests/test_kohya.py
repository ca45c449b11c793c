"""kohya export: key names, true alpha, metadata, epoch discovery (pure tensor code, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loratune.families.sdxl import sgm_unet_path
from loratune.lora.kohya import checkpoint_epoch, kohya_metadata, read_metadata, save_kohya, to_kohya


def _pair(r: int = 4, n: int = 8) -> dict[str, torch.Tensor]:
    return {"A": torch.randn(r, n), "B": torch.randn(n, r)}


def _peft(paths: list[str]) -> dict[str, torch.Tensor]:
    sd = {}
    for p in paths:
        pair = _pair()
        sd[f"{p}.lora_A.weight"], sd[f"{p}.lora_B.weight"] = pair["A"], pair["B"]
    return sd


def test_sd15_names_use_lora_te_text_model_and_true_alpha() -> None:
    unet = _peft(["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"])
    te = _peft(["encoder.layers.1.self_attn.q_proj"])  # transformers 5 names: no text_model. level
    out = to_kohya("sd15", unet, alpha=2.0, text_encoders=(te,))
    assert sorted(out) == [
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj.alpha",
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
    ]
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert out[f"{key}.alpha"].item() == 2.0
    peft_key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert torch.equal(out[f"{key}.lora_down.weight"], unet[f"{peft_key}.lora_A.weight"])
    assert torch.equal(out[f"{key}.lora_up.weight"], unet[f"{peft_key}.lora_B.weight"])


def test_sdxl_names_are_sgm_blocks_and_two_text_encoders() -> None:
    assert sgm_unet_path("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", 2) == (
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    )
    assert sgm_unet_path("up_blocks.0.attentions.2.proj_in", 2) == "output_blocks.2.1.proj_in"
    assert sgm_unet_path("mid_block.attentions.0.transformer_blocks.3.attn2.to_k", 2) == (
        "middle_block.1.transformer_blocks.3.attn2.to_k"
    )
    te = _peft(["text_model.encoder.layers.0.self_attn.k_proj"])  # transformers 4 names keep text_model.
    out = to_kohya("sdxl", _peft(["mid_block.attentions.0.transformer_blocks.0.attn1.to_v"]), 8.0, (te, te))
    prefixes = sorted({k.split(".")[0] for k in out})
    assert prefixes == [
        "lora_te1_text_model_encoder_layers_0_self_attn_k_proj",
        "lora_te2_text_model_encoder_layers_0_self_attn_k_proj",
        "lora_unet_middle_block_1_transformer_blocks_0_attn1_to_v",
    ]
    with pytest.raises(ValueError, match="SGM"):
        sgm_unet_path("conv_in", 2)


def test_metadata_and_epoch_discovery(tmp_path: Path) -> None:
    meta = kohya_metadata("sdxl", 8, 4.0, 3, 120, 1e-4, "prodigy", 7, 1024, {"loratune_curriculum": {"1": 512}})
    # Written as sd-scripts writes them: str() of its float alpha and learning rate, its (w, h) resolution.
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "4.0" and meta["ss_epoch"] == "3"
    assert meta["ss_resolution"] == "(1024, 1024)" and meta["ss_unet_lr"] == "0.0001"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_module"] == "networks.lora"
    assert meta["ss_learning_rate"] == "0.0001" and meta["loratune_curriculum"] == '{"1": 512}'
    tensors = to_kohya("sdxl", _peft(["mid_block.attentions.0.proj_in"]), 4.0)
    path = save_kohya(tmp_path / "x.safetensors", tensors, meta)
    written = read_metadata(path)
    assert {k: v for k, v in written.items() if not k.startswith("sshs_")} == meta and checkpoint_epoch(path) == 3
    assert len(written["sshs_model_hash"]) == 64 and len(written["sshs_legacy_hash"]) == 8
    named = save_kohya(tmp_path / "luca-000012.safetensors", tensors, {})
    assert checkpoint_epoch(named) == 12
    assert checkpoint_epoch(save_kohya(tmp_path / "final.safetensors", tensors, {})) is None
