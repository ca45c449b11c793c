"""A tiny Flux.1 pipeline: the real ``FluxPipeline`` parts at toy width, saved with ``save_pretrained``.

``FluxPipeline.from_pretrained(path)`` loads it like FLUX.1-dev: a ``FluxTransformer2DModel`` (one double-stream and
one single-stream block, guidance embedding on, as in dev), a 16-channel VAE with Flux's shift and scale (two
blocks, so a 64-px image is a 32×32 latent, 16×16 packed tokens), CLIP-L's and T5's roles at width 32 (CLIP's real
tokenizer, a T5 tokenizer built offline) and the flow-matching Euler scheduler with FLUX.1-dev's settings.
"""

from __future__ import annotations

from pathlib import Path

import torch

from loratune.tiny.clip_tokenizer import make_clip_tokenizer, write_slow_tokenizer_files
from loratune.tiny.t5_tokenizer import make_t5_tokenizer

WIDTH = 32  # every encoder's and the transformer's hidden width


def build_flux(folder: Path, seed: int = 0, guidance_embeds: bool = True) -> None:
    """A FLUX.1-dev-shaped pipeline (``guidance_embeds=False``: schnell-shaped)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from loratune.tiny.sd import clip_text_config

    torch.manual_seed(seed)
    latent_channels = 16
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=latent_channels * 4,  # 2×2 patches of latents, packed
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,  # T5's width
        pooled_projection_dim=WIDTH,  # CLIP's pooled width
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, as (16, 56, 56) sums to 128 in the real model
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        sample_size=64,
        scaling_factor=0.3611,  # FLUX.1's VAE config
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    tokenizer_2 = make_t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=WIDTH,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",  # T5 v1.1 (FLUX's T5-XXL)
            is_encoder_decoder=False,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=CLIPTextModel(clip_text_config(WIDTH, WIDTH)),
        tokenizer=make_clip_tokenizer(),
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    write_slow_tokenizer_files(folder / "tokenizer")
