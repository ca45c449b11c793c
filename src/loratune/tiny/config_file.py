"""The ``loratune.yaml`` that ties the tiny models and the procedural dataset into one runnable config.

Paths are relative to the yaml's folder (``load_config`` resolves them there), so the whole folder can be moved.
Axes whose backend is not in the metric registry yet are left out (reported missing) rather than failing evaluation.
"""

from __future__ import annotations

from typing import Any

from loratune.tiny.dataset import BACKGROUNDS, CHARACTERS


def tiny_config(available_backends: set[str]) -> dict[str, Any]:
    """The config as a mapping; ``available_backends`` are the registry names (to pick what can run now)."""
    backgrounds = list(BACKGROUNDS.values())
    characters = {
        look.token: {"token": look.token, "traits": list(look.traits), "references": f"dataset/references/{look.token}"}
        for look in CHARACTERS
    }
    prompts = [
        {"text": f"{look.token}, {look.description}, {backgrounds[i % len(backgrounds)]}", "character": look.token}
        for i, look in enumerate(CHARACTERS)
    ]
    wanted: dict[str, list[dict[str, Any]]] = {
        # First entry that the registry knows wins.
        "alignment": [{"name": "vqascore", "model": "vlm"}, {"name": "clipscore", "model": "open_clip"}],
        "consistency": [{"name": "clip_i", "model": "open_clip"}],
        "aesthetics": [{"name": "laion_aesthetic", "model": "aesthetic/aesthetic.pth", "clip_model": "open_clip"}],
        "quality": [{"name": "musiq"}, {"name": "piqe"}],
        # No torchvision AlexNet offline: LPIPS runs its shipped linear heads on a random backbone (stand-in).
        "diversity": [{"name": "lpips", "pretrained_backbone": False, "size": 64}],
    }
    backends: dict[str, Any] = {}
    for axis, choices in wanted.items():
        backends[axis] = next((c for c in choices if c["name"] in available_backends), None)
    return {
        "model": {"base": "sd15", "family": "sd15", "dtype": "float32"},
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


def registered_backends() -> set[str]:
    """Backends in the registry whose module exists (a registry entry can land before its module)."""
    import importlib.util

    from loratune.metrics.registry import BACKENDS

    return {name for name, spec in BACKENDS.items() if importlib.util.find_spec(spec.target.partition(":")[0])}
