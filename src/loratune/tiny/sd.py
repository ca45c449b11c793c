"""Tiny Stable Diffusion 1.5 and SDXL pipelines: the real architectures at toy width, saved with ``save_pretrained``.

Load them exactly like hub checkpoints: ``StableDiffusionPipeline.from_pretrained(path)`` /
``StableDiffusionXLPipeline.from_pretrained(path)``. The VAE has two blocks (downsampling 2×), so a 64-px image is a
32×32 latent and renders in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loratune.tiny.clip_tokenizer import make_clip_tokenizer, write_slow_tokenizer_files

# Token ids of the real CLIP vocabulary (see clip_tokenizer.py).
_BOS_ID, _EOS_ID = 49406, 49407
_VOCAB = 49408


def clip_text_config(hidden: int, projection_dim: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=_VOCAB,
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        pad_token_id=_EOS_ID,
        hidden_act="quick_gelu",
    )


# The UNet layout both tiny pipelines share: two resolution levels, cross-attention in the lower one.
_UNET_BLOCKS = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 32,
}


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )


def build_sd15(folder: Path, seed: int = 0) -> None:
    """An SD1.5-shaped ``StableDiffusionPipeline`` (UNet (32, 64), cross-attention 32, 2-layer CLIP text encoder)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **_UNET_BLOCKS,
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(clip_text_config(32, 32))
    # SD1.5's own scheduler settings (scaled_linear betas, steps_offset=1, epsilon prediction).
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        clip_sample=False,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=make_clip_tokenizer(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_slow_tokenizer_files(folder / "tokenizer")


def build_sdxl(folder: Path, seed: int = 0) -> None:
    """An SDXL-shaped ``StableDiffusionXLPipeline``: ``text_time`` conditioning, two text encoders, Euler scheduler.

    ``cross_attention_dim`` is the sum of both encoders' widths and the added-condition input is
    6 × ``addition_time_embed_dim`` + the second encoder's projection width, as in the real model.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    hidden_1, hidden_2, projection_2, time_dim = 32, 32, 32, 8
    unet = UNet2DConditionModel(
        **_UNET_BLOCKS,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_dim + projection_2,
        cross_attention_dim=hidden_1 + hidden_2,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(clip_text_config(hidden_1, 32))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(hidden_2, projection_2))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=make_clip_tokenizer(),
        tokenizer_2=make_clip_tokenizer(pad_token="!"),
        scheduler=scheduler,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_slow_tokenizer_files(folder / "tokenizer")
    write_slow_tokenizer_files(folder / "tokenizer_2")
