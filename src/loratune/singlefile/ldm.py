"""The Stable Diffusion families' original (LDM / SGM) one-file layout, as model sites ship SD1.5 and SDXL derivatives
and A1111, ComfyUI and kohya read them: a diffusers folder's parts under their LDM names.

The key names are the inverse of what diffusers' single-file loader converts (``diffusers.loaders.single_file_utils``),
with the block numbering derived from the UNet's and VAE's configs, so the tiny models (two levels) convert as the real
ones do; ``tests/test_single_file.py`` loads the file back through ``from_single_file`` and gets every tensor of the
folder back. Layout: ``model.diffusion_model.`` (UNet), ``first_stage_model.`` (VAE); each text encoder under the
prefix its family gives (``Family.single_file_tensors``), in transformers' names (CLIP-L) or OpenCLIP's (fused q/k/v,
transposed projection).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))


def _blocks(config: Mapping[str, Any]) -> tuple[int, int]:
    lpb = config["layers_per_block"]
    return len(config["block_out_channels"]), int(lpb if isinstance(lpb, int) else lpb[0])


def unet_prefix_map(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) of every UNet block: input_blocks count ``layers_per_block`` resnets (+ their
    attention) and one downsampler per level, output_blocks ``layers_per_block + 1`` resnets and one upsampler."""
    levels, per = _blocks(config)
    pairs: list[tuple[str, str]] = []
    for i in range(levels):
        for j in range(per):
            block = (per + 1) * i + j + 1
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (i + 1)}.0.op."))
        has_attention = "CrossAttn" in config["up_block_types"][i]
        for j in range(per + 1):
            block = (per + 1) * i + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."))
        if i < levels - 1:
            pairs.append((f"up_blocks.{i}.upsamplers.0.", (f"output_blocks.{(per + 1) * i + per}."
                                                           f"{2 if has_attention else 1}.")))
    pairs += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
              ("mid_block.resnets.1.", "middle_block.2.")]
    return pairs


def unet_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    prefixes = unet_prefix_map(config)
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key in fixed:
            out[UNET_PREFIX + fixed[key]] = value
            continue
        for hf, ldm in prefixes:
            if key.startswith(hf):
                rest = key[len(hf):]
                if ".resnets." in hf:
                    for hf_part, ldm_part in _RESNET:
                        if rest.startswith(hf_part + "."):
                            rest = ldm_part + rest[len(hf_part):]
                out[UNET_PREFIX + ldm + rest] = value
                break
        else:
            raise ValueError(f"UNet key with no LDM name: {key}")
    return out


def vae_to_ldm(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    levels = len(config["block_out_channels"])
    pairs = [("encoder.mid_block.resnets.0.", "encoder.mid.block_1."),
             ("encoder.mid_block.resnets.1.", "encoder.mid.block_2."),
             ("decoder.mid_block.resnets.0.", "decoder.mid.block_1."),
             ("decoder.mid_block.resnets.1.", "decoder.mid.block_2."),
             ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
             ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1.")]
    for i in range(levels):
        pairs += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                  # The decoder's levels run the other way in LDM.
                  (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")]
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key in fixed:
            out[VAE_PREFIX + fixed[key]] = value
            continue
        for hf, ldm in pairs:
            if key.startswith(hf):
                rest = key[len(hf):].replace("conv_shortcut", "nin_shortcut")
                if ".attentions." in hf:
                    part = next(p for p in attention if rest.startswith(p))
                    rest = attention[part] + rest[len(part):]
                    if value.ndim == 2:  # LDM's attention is 1x1 convolutions
                        value = value[:, :, None, None]
                out[VAE_PREFIX + ldm + rest] = value
                break
        else:
            raise ValueError(f"VAE key with no LDM name: {key}")
    return out


def clip_to_ldm(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIP text encoder under its transformers 4 names (``text_model.…``), as LDM files store CLIP-L."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state_dict.items()}


def openclip_to_ldm(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's names, as SDXL files store their second encoder."""
    import torch
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    table = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    layer_names = {hf: ldm for hf, ldm in table["transformer"].items() if not hf.startswith("transformer.")}
    sd = {("text_model." + k if not k.startswith(("text_model.", "text_projection")) else k): v
          for k, v in state_dict.items()}
    out: dict[str, Any] = {}
    fused: dict[str, dict[str, dict[str, Any]]] = {}
    for key, value in sd.items():
        if key in table["layers"]:
            ldm = table["layers"][key]
            out[prefix + ldm] = value.T.contiguous() if ldm == "text_projection" else value
            continue
        if key.endswith("position_ids"):
            continue
        name = key
        for hf, ldm in layer_names.items():
            name = name.replace(hf, ldm)
        for which in ("q", "k", "v"):
            marker = f".attn.{which}_proj."
            if marker in name:
                stem, kind = name.split(marker)
                fused.setdefault(stem, {}).setdefault(kind, {})[which] = value
                break
        else:
            out[prefix + "transformer." + name] = value
    for stem, kinds in fused.items():
        for kind, parts in kinds.items():
            out[f"{prefix}transformer.{stem}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def unet_vae_to_ldm(folder: str | Path) -> dict[str, Any]:
    """A diffusers SD folder's UNet and VAE under their LDM names."""
    from loratune.singlefile.write import folder_config, folder_weights

    return (unet_to_ldm(folder_weights(folder, "unet"), folder_config(folder, "unet"))
            | vae_to_ldm(folder_weights(folder, "vae"), folder_config(folder, "vae")))
