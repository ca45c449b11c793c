"""Stable Diffusion XL: SD1.5's noise-prediction UNet objective with two CLIP text encoders (penultimate states side
by side, the second's pooled embedding) and size conditioning; kohya names its UNet modules in SGM block names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from loratune.families import published
from loratune.families.base import GIB, Component
from loratune.families.sd15 import SD15

if TYPE_CHECKING:
    from loratune.train.encode import TextCondition
    from loratune.train.model import Models


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers SDXL UNet module path in SGM block names, e.g. ``down_blocks.1.attentions.0.x`` -> ``input_blocks.4.1.x``."""
    parts = path.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        block = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["input_blocks", str(block), "1", *parts[4:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        block = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["output_blocks", str(block), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", str(1 + int(parts[2])), *parts[3:]])
    raise ValueError(f"no SGM name for UNet module {path} (only attention blocks are mapped)")


class SDXL(SD15):
    name = "sdxl"
    label = "Stable Diffusion XL"
    pipeline_class = "StableDiffusionXLPipeline"
    text_encoders = (
        Component("text_encoder", "transformers.CLIPTextModel"),
        Component("text_encoder_2", "transformers.CLIPTextModelWithProjection"),
    )
    tokenizers = (
        Component("tokenizer", "transformers.CLIPTokenizer", weights=False),
        Component("tokenizer_2", "transformers.CLIPTokenizer", weights=False),
    )
    trainable_text_encoders = (0, 1)
    kohya_model_version = "sdxl_base_v1-0"
    kohya_text_prefixes = ("lora_te1", "lora_te2")
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    default_repo = "stabilityai/stable-diffusion-xl-base-1.0"
    published_configs = published.SDXL
    single_file_keys = ("conditioner.embedders.1.model.",)  # the OpenCLIP bigG encoder
    # ~14 GiB per image at 1024 px without checkpointing, ~4 GiB with; the VAE's decode at 1024 px ~5 GiB.
    native_resolution = 1024
    train_activation_bytes = (14.0 * GIB, 4.0 * GIB)
    sample_activation_bytes = 5.0 * GIB

    def pipeline_extras(self) -> dict[str, Any]:
        return {}

    def encode_text(self, models: Models, captions: list[str], device: Any) -> TextCondition:
        """Both encoders' penultimate hidden states side by side, and the second encoder's pooled embedding."""
        import torch

        from loratune.train.encode import TextCondition, tokenize

        hidden, pooled = [], None
        for tokenizer, encoder in zip(models.tokenizers, models.text_encoders):
            out = encoder(tokenize(tokenizer, captions).to(device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if hasattr(out, "text_embeds"):  # the second encoder (with projection) gives the pooled embedding
                pooled = out.text_embeds
        return TextCondition(torch.cat(hidden, dim=-1), pooled)

    def added_conditions(self, cond: TextCondition, bucket: tuple[int, int], batch: int, device: Any) -> dict[str, Any]:
        import torch

        width, height = bucket
        # original size, crop top-left, target size: we train on the resized, centred crop at bucket size
        time_ids = torch.tensor([height, width, 0, 0, height, width], dtype=cond.hidden.dtype, device=device)
        return {"added_cond_kwargs": {"text_embeds": cond.pooled, "time_ids": time_ids.repeat(batch, 1)}}

    def call_kwargs(self, models: Models, *, lora_scale: float, width: int, height: int,
                    negative_prompt: str | None) -> dict[str, Any]:
        return super().call_kwargs(models, lora_scale=lora_scale, width=width, height=height,
                                   negative_prompt=negative_prompt) | {
            "original_size": (height, width), "target_size": (height, width)}

    def kohya_unet_path(self, path: str, denoiser_config: Any) -> str:
        value = (denoiser_config or {}).get("layers_per_block", 2)
        return sgm_unet_path(path, int(value if isinstance(value, int) else value[0]))

    def single_file_tensors(self, folder: Path) -> dict[str, Any]:
        """The SGM layout: UNet and VAE as SD1.5's, CLIP-L under conditioner.embedders.0 (transformers names),
        OpenCLIP bigG under conditioner.embedders.1 (OpenCLIP names)."""
        from loratune.singlefile.ldm import clip_to_ldm, openclip_to_ldm, unet_vae_to_ldm
        from loratune.singlefile.write import folder_weights

        return (unet_vae_to_ldm(folder)
                | clip_to_ldm(folder_weights(folder, "text_encoder"), "conditioner.embedders.0.transformer.")
                | openclip_to_ldm(folder_weights(folder, "text_encoder_2"), "conditioner.embedders.1.model."))

    def build_tiny(self, folder: Path, seed: int) -> None:
        from loratune.tiny.sd import build_sdxl

        build_sdxl(folder, seed)
