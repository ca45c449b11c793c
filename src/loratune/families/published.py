"""The published component configs of each family's reference model (``Family.default_repo``), for the memory
estimate offline.

Where a base's own configs are neither a local folder nor in the Hugging Face cache, ``loratune.residency`` builds
its parts on the meta device from these values: the diffusers/transformers config files published with
stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0 and black-forest-labs/FLUX.1-dev
(keys that only change behaviour, not shapes, are left out). Each is checked against its published parameter count in
``tests/test_residency.py``. Plain dicts, so that importing a family stays light.
"""

from __future__ import annotations

from typing import Any

# openai/clip-vit-large-patch14's text tower: SD1.5's encoder, SDXL's first and FLUX.1's CLIP-L (123.1 M).
CLIP_L_TEXT: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"}
# OpenCLIP ViT-bigG/14's text tower, SDXL's second encoder (694.7 M).
CLIP_BIGG_TEXT: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}
SD_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512}

SD15: dict[str, dict[str, Any]] = {
    "unet": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3},
    "vae": SD_VAE,
    "text_encoder": CLIP_L_TEXT,
}
SDXL: dict[str, dict[str, Any]] = {
    "unet": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
             "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
             "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]},
    "vae": {**SD_VAE, "sample_size": 1024},
    "text_encoder": CLIP_L_TEXT,
    "text_encoder_2": CLIP_BIGG_TEXT,
}
FLUX1_DEV: dict[str, dict[str, Any]] = {
    # 11.90 B: 19 double-stream and 38 single-stream blocks at width 3072 (24 heads of 128), guidance embedding (dev).
    "transformer": {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]},
    # 83.8 M: SD's VAE layout with 16 latent channels and no quant convolutions.
    "vae": {**SD_VAE, "latent_channels": 16, "sample_size": 1024, "use_quant_conv": False,
            "use_post_quant_conv": False, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "text_encoder": CLIP_L_TEXT,
    # google/t5-v1_1-xxl's encoder (4.76 B): gated GELU, untied output (the encoder alone keeps one embedding).
    "text_encoder_2": {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                       "num_decoder_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
                       "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
                       "dense_act_fn": "gelu_new", "is_gated_act": True, "layer_norm_epsilon": 1e-6,
                       "tie_word_embeddings": False},
}
