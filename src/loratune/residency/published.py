"""Component configs of the default models, from their published config files, for estimating memory offline.

Where a model's own config is neither a local folder nor in the Hugging Face cache, the estimate builds the model on
the meta device from these values: the diffusers/transformers config files published with
stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0, OpenGVLab/InternVL3-1B-hf
and OpenGVLab/InternVL2-8B. InternVL2-8B is remote code (InternViT-300M + InternLM2-7B); it is built here as the
native InternVL class with a Llama text model of InternLM2-7B's shape, which has the same parameters (InternLM2 fuses
q, k and v into one matrix of the same size). Each is checked against its published parameter count in the tests.
"""

from __future__ import annotations

from typing import Any

CLIP_L_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_BIGG_TEXT = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
                  "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}
SD_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
          "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
          "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512}
SD15_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
SDXL_UNET = {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
             "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
             "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]}

# family -> {subfolder: (class name, config)}; the family's default repository is what these describe.
BASES: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "sd15": {"unet": ("UNet2DConditionModel", SD15_UNET), "vae": ("AutoencoderKL", SD_VAE),
             "text_encoder": ("CLIPTextModel", CLIP_L_TEXT)},
    "sdxl": {"unet": ("UNet2DConditionModel", SDXL_UNET), "vae": ("AutoencoderKL", {**SD_VAE, "sample_size": 1024}),
             "text_encoder": ("CLIPTextModel", CLIP_L_TEXT),
             "text_encoder_2": ("CLIPTextModelWithProjection", CLIP_BIGG_TEXT)},
}
DEFAULT_REPOS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}

# InternViT-300M-448px: transformers' InternVLVisionConfig defaults are this model.
INTERNVIT_300M = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
                  "image_size": [448, 448], "patch_size": [14, 14]}
VLMS: dict[str, dict[str, Any]] = {
    # Qwen2.5-0.5B inside; published total 0.9 B.
    "OpenGVLab/InternVL3-1B-hf": {
        "vision_config": INTERNVIT_300M,
        "text_config": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
                        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                        "vocab_size": 151674, "tie_word_embeddings": True},
        "image_seq_length": 256, "downsample_ratio": 0.5,
    },
    # InternLM2-7B inside (GQA 32/8 heads, vocab 92553, untied output); published total 8.08 B.
    "OpenGVLab/InternVL2-8B": {
        "vision_config": INTERNVIT_300M,
        "text_config": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "vocab_size": 92553, "tie_word_embeddings": False},
        "image_seq_length": 256, "downsample_ratio": 0.5, "tie_word_embeddings": False,
    },
}
