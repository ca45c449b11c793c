"""Flux.1's transformer in the original (Black Forest Labs) layout, as ``flux1-dev.safetensors`` and the fine-tunes on
model sites ship it (``double_blocks.…``, ``single_blocks.…``; ComfyUI's all-in-one files hold it under
``model.diffusion_model.``): diffusers' names <-> the original ones, both ways, exactly, at any width.

The names and fusions are ``flux_kohya``'s module table (a fused ``qkv`` / ``linear1`` is its diffusers parts stacked
along the output; ``final_layer.adaLN_modulation.1`` has its halves swapped); the query/key RMSNorm scales are the only
weights outside it. diffusers' own ``convert_flux_transformer_checkpoint_to_diffusers`` splits ``linear1`` at FLUX.1's
width (3072, MLP 4×) whatever the file holds, so it reads no narrower transformer (the tiny stand-in's); this module
splits at the width the transformer's config gives, and is checked against diffusers' converter at FLUX.1's width in
``tests/test_flux_single_file.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loratune.errors import LoratuneError, first_line
from loratune.families.flux_kohya import BLOCK_PATH, SWAPPED_HALVES, original_name, part_sizes

PREFIX = "model.diffusion_model."  # ComfyUI's all-in-one files; BFL's own have no prefix
# Each attention's query/key RMSNorm scale: diffusers module -> original module, inside a block.
_NORMS = {
    "transformer_blocks": {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                           "attn.norm_added_q": "txt_attn.norm.query_norm",
                           "attn.norm_added_k": "txt_attn.norm.key_norm"},
    "single_transformer_blocks": {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"},
}
_BLOCKS = {"transformer_blocks": "double_blocks", "single_transformer_blocks": "single_blocks"}


def original_key(key: str) -> tuple[str, int | None]:
    """(original key, part of its fused output or None) for a diffusers transformer key.

    >>> original_key("transformer_blocks.0.attn.to_k.bias")
    ('double_blocks.0.img_attn.qkv.bias', 1)
    >>> original_key("single_transformer_blocks.2.attn.norm_q.weight")
    ('single_blocks.2.norm.query_norm.scale', None)
    """
    path, kind = key.rsplit(".", 1)
    match = BLOCK_PATH.match(path)
    if match and match["rest"] in _NORMS[match["kind"]]:
        return f"{_BLOCKS[match['kind']]}.{match['i']}.{_NORMS[match['kind']][match['rest']]}.scale", None
    name, part = original_name(path)
    return f"{name}.{kind}", part


def _swap_halves(value: Any) -> Any:
    import torch

    return torch.cat(value.chunk(2, dim=0)[::-1])


def to_original(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``FluxTransformer2DModel`` state dict under the original names (fused parts concatenated)."""
    import torch

    grouped: dict[str, dict[int | None, Any]] = {}
    for key, value in state_dict.items():
        name, part = original_key(key)
        grouped.setdefault(name, {})[part] = value
    out: dict[str, Any] = {}
    for name, parts in grouped.items():
        if None in parts:
            out[name] = _swap_halves(parts[None]) if name.startswith(SWAPPED_HALVES + ".") else parts[None]
            continue
        count = len(part_sizes(name.rsplit(".", 1)[0], config))
        if sorted(parts) != list(range(count)):
            raise ValueError(f"{name}: the transformer lacks some of its fused parts (has {sorted(parts)})")
        out[name] = torch.cat([parts[p] for p in range(count)])
    return out


def from_original(checkpoint: Mapping[str, Any], transformer: Any) -> dict[str, Any]:
    """``transformer``'s state dict (diffusers names) from an original-layout checkpoint: every key the model has,
    fused ones split at the widths of its config. A key the model lacks, or one it has that the file does not, is a
    ``ValueError`` naming it (another variant: Fill, Depth, a different depth or width)."""
    if any(k.startswith(PREFIX) for k in checkpoint):  # all-in-one: the transformer is what sits under the prefix
        checkpoint = {k.removeprefix(PREFIX): v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    out: dict[str, Any] = {}
    used: set[str] = set()
    for key, like in transformer.state_dict().items():
        name, part = original_key(key)
        if name not in checkpoint:
            raise ValueError(f"no {name} in the file (the transformer's {key})")
        value = checkpoint[name]
        used.add(name)
        if name.startswith(SWAPPED_HALVES + "."):
            value = _swap_halves(value)
        if part is not None:
            sizes = part_sizes(name.rsplit(".", 1)[0], transformer.config)
            if value.shape[0] != sum(sizes):
                raise ValueError(f"{name} has {value.shape[0]} rows; this transformer's parts need {sum(sizes)}")
            start = sum(sizes[:part])
            value = value[start:start + sizes[part]]
        if value.shape != like.shape:
            raise ValueError(f"{name} is {tuple(value.shape)} in the file; this transformer's {key} is "
                             f"{tuple(like.shape)}")
        out[key] = value
    extra = sorted(set(checkpoint) - used)
    if extra:
        raise ValueError(f"{len(extra)} keys this transformer does not have, e.g. {extra[0]}")
    return out


def load_transformer(path: str | Path, folder: str) -> Any:
    """A ``FluxTransformer2DModel`` configured by ``folder``'s ``transformer/config.json``, its weights from the
    original-layout file ``path``; float32 on the CPU, as every part loads."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    from loratune.singlefile.load import read_checkpoint

    try:
        config = FluxTransformer2DModel.load_config(folder, subfolder="transformer", local_files_only=True)
    except (OSError, ValueError) as err:
        raise LoratuneError(f"model.config: no Flux transformer config in {folder} ({first_line(err)})") from None
    checkpoint = read_checkpoint(path)
    # dev embeds the guidance value, schnell does not; their other parts differ too (schnell's scheduler has no
    # resolution-dependent shift), so the config folder must be the file's variant, not patched to fit it.
    variants = {True: "FLUX.1-dev", False: "FLUX.1-schnell"}
    in_file = any(".guidance_in." in f".{k}" for k in checkpoint)
    if in_file != bool(config.get("guidance_embeds", False)):
        raise LoratuneError(f"model.base: {path} is a {variants[in_file]} transformer and the configs of {folder} are "
                            f"{variants[not in_file]}'s: set model.config to a {variants[in_file]} diffusers folder")
    with init_empty_weights():  # parameters on the meta device: the file's tensors take their place
        transformer = FluxTransformer2DModel.from_config(config)
    try:
        state = from_original(checkpoint, transformer)
        transformer.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
    except (ValueError, RuntimeError) as err:
        raise LoratuneError(f"model.base: cannot load {path} as a Flux.1 transformer with the config of {folder}: "
                            f"{first_line(err)}") from None
    return transformer
