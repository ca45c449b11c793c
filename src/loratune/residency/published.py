"""Configs of the default scoring models, from their published config files, for estimating memory offline.

Where a model's own config is neither a local folder nor in the Hugging Face cache, the estimate builds the model on
the meta device from these values: the transformers config files published with OpenGVLab/InternVL3-1B-hf and
OpenGVLab/InternVL2-8B. InternVL2-8B is remote code (InternViT-300M + InternLM2-7B); it is built here as the
native InternVL class with a Llama text model of InternLM2-7B's shape, which has the same parameters (InternLM2 fuses
q, k and v into one matrix of the same size). Each is checked against its published parameter count in the tests.
The base models' published configs are their families' (``Family.published_configs``).
"""

from __future__ import annotations

from typing import Any

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
