"""Tiny CLIP models in the two layouts loratune reads: open_clip's hub folder and HF ``CLIPModel`` + ``CLIPProcessor``.

open_clip folder (the layout of an ``hf-hub:`` repo: ``open_clip_config.json`` holding ``model_cfg`` and
``preprocess_cfg``, plus ``open_clip_model.safetensors``) loads with::

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{path}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")   # the default SimpleTokenizer (real CLIP BPE)

HF folder loads with ``CLIPModel.from_pretrained(path)`` and ``CLIPProcessor.from_pretrained(path)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from loratune.tiny.clip_tokenizer import make_clip_tokenizer, write_slow_tokenizer_files

OPEN_CLIP_EMBED_DIM = 32
OPEN_CLIP_IMAGE_SIZE = 64
# OpenAI CLIP's normalisation constants (open_clip.constants.OPENAI_DATASET_MEAN/STD).
_MEAN = (0.48145466, 0.4578275, 0.40821073)
_STD = (0.26862954, 0.26130258, 0.27577711)

OPEN_CLIP_MODEL_CFG: dict = {
    "embed_dim": OPEN_CLIP_EMBED_DIM,
    "vision_cfg": {"image_size": OPEN_CLIP_IMAGE_SIZE, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def build_open_clip(folder: Path, seed: int = 0) -> None:
    """A ViT CLIP at width 32 saved as open_clip's hub layout (config JSON + ``open_clip_model.safetensors``)."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=OPEN_CLIP_MODEL_CFG["embed_dim"],
        vision_cfg=OPEN_CLIP_MODEL_CFG["vision_cfg"],
        text_cfg=OPEN_CLIP_MODEL_CFG["text_cfg"],
    )
    config = {
        "model_cfg": OPEN_CLIP_MODEL_CFG,
        "preprocess_cfg": {
            "mean": list(_MEAN),
            "std": list(_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))


def build_hf_clip(folder: Path, seed: int = 0) -> None:
    """A ``CLIPModel`` (text and vision width 32, 2 layers, 64-px images, 8-px patches) with its ``CLIPProcessor``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
            "image_size": 64,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    model = CLIPModel(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        image_mean=list(_MEAN),
        image_std=list(_STD),
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=make_clip_tokenizer())
    processor.save_pretrained(str(folder))
    write_slow_tokenizer_files(folder)
