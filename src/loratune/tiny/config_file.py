"""The ``loratune.yaml`` that ties the tiny models and the procedural dataset into one runnable config.

Paths are relative to the yaml's folder (``load_config`` resolves them there), so the whole folder can be moved.
Quality uses PIQE, a real weight-free metric, because MUSIQ's multi-scale ViT on random weights costs ~5 s an image on
a 2-core CPU and would measure nothing.
"""

from __future__ import annotations

from typing import Any

from loratune.tiny.dataset import BACKGROUNDS, CHARACTERS


def tiny_config() -> dict[str, Any]:
    """The config as a mapping."""
    backgrounds = list(BACKGROUNDS.values())
    characters = {
        look.token: {"token": look.token, "traits": list(look.traits), "references": f"dataset/references/{look.token}"}
        for look in CHARACTERS
    }
    prompts = [
        {"text": f"{look.token}, {look.description}, {backgrounds[i % len(backgrounds)]}", "character": look.token}
        for i, look in enumerate(CHARACTERS)
    ]
    backends: dict[str, Any] = {
        "alignment": {"name": "vqascore", "model": "vlm"},
        "consistency": {"name": "clip_i", "model": "open_clip"},
        "aesthetics": {"name": "laion_aesthetic", "model": "aesthetic/aesthetic.pth", "clip_model": "open_clip"},
        "quality": {"name": "piqe"},
        # No torchvision AlexNet offline: LPIPS runs its shipped linear heads on a random backbone (stand-in).
        "diversity": {"name": "lpips", "pretrained_backbone": False, "size": 64},
    }
    return {
        "model": {"base": "sd15", "family": "sd15"},
        "dataset": {
            "path": "dataset/train",
            "caption_extension": ".txt",
            "resolution": 64,
            "buckets": False,
            "min_bucket": 64,
            "max_bucket": 128,
            "bucket_step": 64,
            "characters": characters,
        },
        "sampling": {
            "prompts": prompts,
            "negative_prompt": "",
            "seeds": [0, 1],
            "steps": 4,
            "cfg": 5.0,
            "width": 64,
            "height": 64,
        },
        "evaluation": {
            "backends": backends,
            # Copy risk and CMMD on the tiny CLIP: no DINOv2 / ViT-L/14@336 offline.
            "learning": {"copy_embedder": {"name": "clip_i", "model": "open_clip"},
                         "cmmd_embedder": {"name": "clip_i", "model": "open_clip"}},
            "device": "cpu",
            "dtype": "float32",
            "batch_size": 8,
            "trust_remote_code": False,
        },
        "train": {
            "rank": 4,
            "learning_rate": 1e-4,
            "optimizer": "adamw",
            "epochs": 2,
            "batch_size": 2,
            "save_every_epochs": 1,
            "mixed_precision": "no",
            "device": "cpu",
            "seed": 0,
            "output_name": "tiny",
        },
        # The tagger: instant on a CPU. The prose captioners: `--set caption.backend=florence2 --set
        # caption.model=florence2`, or `--set caption.backend=vlm --set caption.model=vlm`.
        "caption": {"backend": "wd14", "model": "tagger"},
        "search": {
            "n_trials": 6,
            "sampler": "tpe",
            "seed": 0,
            "pruner": "hyperband",
            "space": {
                "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True},
                "rank": {"type": "categorical", "choices": [2, 4]},
                "epochs": {"type": "int", "low": 2, "high": 3},
            },
            "phases": {"baseline": True, "refine_trials": 2, "ensemble_top_k": 2, "ensemble_method": "svd"},
        },
    }
