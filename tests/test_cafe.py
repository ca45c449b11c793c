"""cafe_aesthetic through the transformers pipeline: P(aesthetic) whatever the label's rank, on a tiny ViT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.registry import create_backend
from loratune.tiny.classifier import build_image_classifier

RUNTIME = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> Path:
    # "not_aesthetic" made the top label, so the top label's score would be the wrong answer.
    return build_image_classifier(tmp_path_factory.mktemp("cafe"), bias=(0.0, 1.0))


def test_cafe_scores_probability_of_aesthetic_label(tiny_classifier: Path) -> None:
    from transformers import ViTForImageClassification, ViTImageProcessor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    backend = create_backend(BackendConfig(name="cafe_aesthetic", model=str(tiny_classifier)), RUNTIME, "aesthetics")
    backend.load()
    backend.setup(References())
    backend.update([EvalImage(Path(f"{i}.png"), img) for i, img in enumerate(images)])
    result = backend.compute()

    model = ViTForImageClassification.from_pretrained(tiny_classifier).eval()
    processor = ViTImageProcessor.from_pretrained(tiny_classifier)
    with torch.no_grad():
        probs = model(**processor(images=images, return_tensors="pt")).logits.softmax(-1)[:, 0].tolist()
    assert all(p < 0.5 for p in probs)  # the pipeline's top entry is "not_aesthetic" with score 1 - p
    assert result.per_image == pytest.approx(probs, abs=1e-5)
    assert result.value == pytest.approx(float(np.mean(probs)), abs=1e-5)
    assert result.stand_in

    wrong = create_backend(
        BackendConfig(name="cafe_aesthetic", model=str(tiny_classifier), label="pretty"), RUNTIME, "aesthetics"
    )
    with pytest.raises(LoratuneError, match="label"):
        wrong.load()


def test_missing_or_unloadable_classifier_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: model path not found"):
        create_backend(BackendConfig(name="cafe_aesthetic", model=str(tmp_path / "missing")), RUNTIME, "aesthetics")
    not_a_model = create_backend(BackendConfig(name="cafe_aesthetic", model=str(tmp_path)), RUNTIME, "aesthetics")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.aesthetics\.model: cannot load image classifier"):
        not_a_model.load()
