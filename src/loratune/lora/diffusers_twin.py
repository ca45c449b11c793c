"""The diffusers-format twin of a checkpoint (``pytorch_lora_weights.safetensors``), written so that every diffusers
release reads it at the strength it was trained at.

diffusers >= 0.33 reads lora_alpha from the file's ``lora_adapter_metadata``; older releases (0.32 is the one kohya's
sd-scripts pins) ignore it and apply scale = rank / rank = 1, and look up text-encoder modules by the transformers 4
names (``text_model.encoder.layers.N…``), which transformers 5 no longer has. So the twin carries each module's scale
in its B factor (B · alpha / rank, with alpha = rank in the metadata: the same product B·A·alpha/rank for a reader
that honours the metadata and for one that does not) and keeps the ``text_model.`` level, which current diffusers
strips again when the text encoder lacks it (``lora_base``: "LoRA checkpoints can still contain the 'text_model.'
prefix"). The kohya file keeps the true alpha and the unscaled factors, as kohya's tools expect.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loratune.lora.kohya import peft_modules


def portable_layers(state_dict: Mapping[str, Any], alpha: float, text_encoder: bool = False) -> dict[str, Any]:
    """peft LoRA tensors with every B scaled by ``alpha`` / its rank (and, for a text encoder, keys under
    ``text_model.``)."""
    out: dict[str, Any] = {}
    for module, weights in peft_modules(state_dict).items():
        rank = weights["A"].shape[0]
        path = "text_model." + module.removeprefix("text_model.") if text_encoder else module
        out[f"{path}.lora_A.weight"] = weights["A"]
        out[f"{path}.lora_B.weight"] = weights["B"] * (float(alpha) / rank)
    return out


def portable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The adapter config to store beside ``portable_layers``: alpha equal to rank, per module too, since the scale
    is now inside B."""
    out = dict(config)
    out["lora_alpha"] = out["r"]
    out["alpha_pattern"] = dict(out.get("rank_pattern") or {})
    return out
