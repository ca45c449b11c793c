"""A cafe_aesthetic-shaped image classifier (labels ``aesthetic`` / ``not_aesthetic``) with random weights.

Not part of ``build_tiny_models``: the tiny config does not use it; the cafe_aesthetic test and the throughput
benchmark build one where they need it. It loads through ``transformers.pipeline("image-classification", path)``.
"""

from __future__ import annotations

from pathlib import Path

LABELS = ("aesthetic", "not_aesthetic")


def build_image_classifier(folder: Path, seed: int = 0, bias: tuple[float, float] | None = None) -> Path:
    """Write a tiny ViT classifier on 32-px inputs to ``folder``; ``bias`` sets the two logits' biases (e.g. to make
    ``not_aesthetic`` the top label, so the top label's score would be the wrong answer)."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    from loratune.modelref import write_stand_in_marker

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    write_stand_in_marker(folder, "tiny cafe_aesthetic-shaped classifier")
    return folder
