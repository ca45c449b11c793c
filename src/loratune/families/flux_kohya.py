"""Flux.1 LoRAs in kohya's format: diffusers' module paths <-> the original (Black Forest Labs) names kohya's
``networks/lora_flux.py`` writes, ComfyUI and Forge read, with the fused projections handled exactly.

diffusers splits what the original model fuses: a double block's image-attention ``qkv`` is ``to_q``, ``to_k``,
``to_v``; its text-attention ``qkv`` is ``add_q_proj``, ``add_k_proj``, ``add_v_proj``; a single block's ``linear1``
is ``to_q``, ``to_k``, ``to_v`` and ``proj_mlp`` stacked along the output. A LoRA trained on the split modules is
written on the fused one without approximation: the downs stacked (rank n·r), the ups block-diagonal (each part's
rows read only its own rank block) and alpha n·α, so that alpha / rank stays α / r. That is what kohya's
``LoRANetwork.state_dict`` writes for ``split_qkv`` and what diffusers' kohya converter recognises ("sparse") and
splits back. ``final_layer.adaLN_modulation.1`` orders its halves (shift, scale) where diffusers' ``norm_out.linear``
has (scale, shift): the up rows are swapped, as diffusers' single-file converter swaps the weight.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Inside a double-stream block: diffusers path -> (original path, part of the fused output or None).
_DOUBLE: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("img_attn.qkv", 0),
    "attn.to_k": ("img_attn.qkv", 1),
    "attn.to_v": ("img_attn.qkv", 2),
    "attn.to_out.0": ("img_attn.proj", None),
    "attn.add_q_proj": ("txt_attn.qkv", 0),
    "attn.add_k_proj": ("txt_attn.qkv", 1),
    "attn.add_v_proj": ("txt_attn.qkv", 2),
    "attn.to_add_out": ("txt_attn.proj", None),
    "ff.net.0.proj": ("img_mlp.0", None),
    "ff.net.2": ("img_mlp.2", None),
    "ff_context.net.0.proj": ("txt_mlp.0", None),
    "ff_context.net.2": ("txt_mlp.2", None),
    "norm1.linear": ("img_mod.lin", None),
    "norm1_context.linear": ("txt_mod.lin", None),
}
# Inside a single-stream block.
_SINGLE: dict[str, tuple[str, int | None]] = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation.lin", None),
}
# Outside the blocks (not in kohya's default set, but any of them can be a target).
_OUTER: dict[str, str] = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
SWAPPED_HALVES = "final_layer.adaLN_modulation.1"  # (shift, scale) where diffusers has (scale, shift)
BLOCK_PATH = re.compile(r"^(?P<kind>transformer_blocks|single_transformer_blocks)\.(?P<i>\d+)\.(?P<rest>.+)$")
_PARTS = {"qkv": 3, "linear1": 4}  # how many diffusers modules a fused original one holds

# kohya's default Flux set (networks/lora_flux.py: every Linear of DoubleStreamBlock and SingleStreamBlock), as one
# peft regex over diffusers paths: a plain name list cannot tell a single block's proj_out from the final proj_out.
DEFAULT_TARGETS = (
    r"(transformer_blocks\.\d+\.(" + "|".join(re.escape(k) for k in _DOUBLE) + r")"
    r"|single_transformer_blocks\.\d+\.(" + "|".join(re.escape(k) for k in _SINGLE) + r"))"
)


def original_name(path: str) -> tuple[str, int | None]:
    """(original module path, part of its fused output or None) for a diffusers Flux transformer module path.

    >>> original_name("single_transformer_blocks.3.proj_mlp")
    ('single_blocks.3.linear1', 3)
    """
    match = BLOCK_PATH.match(path)
    if match:
        table, prefix = (_DOUBLE, "double_blocks") if match["kind"] == "transformer_blocks" else (_SINGLE, "single_blocks")
        if match["rest"] in table:
            name, part = table[match["rest"]]
            return f"{prefix}.{match['i']}.{name}", part
    elif path in _OUTER:
        return _OUTER[path], None
    raise ValueError(f"no original Flux name for transformer module {path}")


def _parts(name: str) -> int:
    return _PARTS.get(name.rsplit(".", 1)[-1], 1)


def part_sizes(name: str, config: Mapping[str, Any]) -> list[int]:
    """Output rows of each part of a fused original module, from the transformer's config."""
    if "num_attention_heads" not in config or "attention_head_dim" not in config:
        raise ValueError(f"{name}: writing a fused module needs the transformer's config (its attention widths)")
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    # FluxSingleTransformerBlock's mlp_ratio is 4.0 (not in the config: diffusers and BFL fix it).
    return [inner] * 3 + ([inner * 4] if _parts(name) == 4 else [])


def to_kohya(modules: Mapping[str, Mapping[str, Any]], alpha: float, config: Mapping[str, Any]) -> dict[str, Any]:
    """kohya tensors (``lora_unet_<original name>``) from the transformer's peft modules ({path: {"A", "B"}})."""
    import torch

    from loratune.lora.kohya import kohya_module

    grouped: dict[str, dict[int | None, Mapping[str, Any]]] = {}
    for path, weights in modules.items():
        name, part = original_name(path.removeprefix("transformer."))
        grouped.setdefault(name, {})[part] = weights
    out: dict[str, Any] = {}
    for name, parts in sorted(grouped.items()):
        key = "lora_unet_" + name.replace(".", "_")
        if None in parts:
            up = parts[None]["B"]
            if name == SWAPPED_HALVES:
                up = torch.cat(up.chunk(2, dim=0)[::-1])
            out |= kohya_module(key, parts[None]["A"], up, alpha)
            continue
        ranks = {w["A"].shape[0] for w in parts.values()}
        if len(ranks) != 1:
            raise ValueError(f"{name}: its parts have different ranks {sorted(ranks)}; one fused module takes one")
        rank, present = ranks.pop(), sorted(parts)
        sizes = part_sizes(name, config)
        down = torch.cat([parts[p]["A"] for p in present])
        up = torch.zeros(sum(sizes), rank * len(present), dtype=down.dtype)
        for column, p in enumerate(present):
            row = sum(sizes[:p])
            up[row:row + sizes[p], column * rank:(column + 1) * rank] = parts[p]["B"]
        out |= kohya_module(key, down, up, alpha * len(present))
    return out


def from_kohya(tensors: Mapping[str, Any], transformer: Any, text_encoder: Any = None) -> dict[str, Any] | None:
    """The diffusers/peft state dict (``transformer.<path>.lora_A/B.weight``, scale folded into B; CLIP's
    ``lora_te1_`` modules as ``text_encoder.<path>``) of a kohya Flux file whose every module names a module of these
    models; None for anything else (another trainer's layout), which diffusers' own loader then reads.

    A fused module is split exactly however its ranks are laid out: each part keeps the whole down and its own rows
    of the up. diffusers' converter does the same unless the up is block-diagonal, but it hard-codes FLUX.1's
    widths for ``linear1``, so it cannot read single-block LoRAs of any other width (the tiny stand-in's).
    """
    import torch

    targets: dict[str, tuple[str, list[tuple[str, int | None]]]] = {}
    for path, _ in transformer.named_modules():
        try:
            name, part = original_name(path)
        except ValueError:
            continue
        targets.setdefault("lora_unet_" + name.replace(".", "_"), (name, []))[1].append((f"transformer.{path}", part))
    if text_encoder is not None:
        for path, module in text_encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{path}" and "lora_" not in path:
                kohya = "lora_te1_" + ("text_model." + path.removeprefix("text_model.")).replace(".", "_")
                targets[kohya] = (path, [(f"text_encoder.{path}", None)])
    names = {key.split(".", 1)[0] for key in tensors}
    if not names or not names <= set(targets):
        return None
    out: dict[str, Any] = {}
    for key in sorted(names):
        down, up = tensors[f"{key}.lora_down.weight"].float(), tensors[f"{key}.lora_up.weight"].float()
        alpha = tensors.get(f"{key}.alpha")
        up = up * (float(alpha) if alpha is not None else down.shape[0]) / down.shape[0]
        name, modules = targets[key]
        if name == SWAPPED_HALVES:
            up = torch.cat(up.chunk(2, dim=0)[::-1])
        sizes = part_sizes(name, transformer.config) if _parts(name) > 1 else [up.shape[0]]
        for prefix, part in modules:
            row = sum(sizes[:part or 0])
            out[f"{prefix}.lora_A.weight"] = down
            out[f"{prefix}.lora_B.weight"] = up[row:row + sizes[part or 0]]
    return out
