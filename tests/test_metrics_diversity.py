"""LPIPS diversity: our grouped, feature-reusing computation equals the lpips package's own pairwise numbers."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, Runtime
from loratune.metrics.diversity import backbone_checkpoint
from loratune.metrics.registry import create_backend

SIZE = 64


def make(model: str | None = None, **options: object):
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=2)
    return create_backend(BackendConfig(name="lpips", model=model, **options), runtime, "diversity")


@pytest.fixture(scope="module")
def images() -> list[EvalImage]:
    rng = np.random.default_rng(7)
    spec = [
        ("a boy", "luca"),
        ("a boy", "luca"),
        ("a cat", None),
        ("a boy", "luca"),
        ("a cat", None),
        ("a boy", "alberto"),
        ("a dog", None),
        ("a boy", "alberto"),
    ]
    out = []
    for i, (prompt, character) in enumerate(spec):
        base = rng.integers(0, 256, (1, 1, 3))  # a colour per image plus noise: distances differ from pair to pair
        pixels = np.clip(base + rng.normal(0, 40, (70 + i, 90, 3)), 0, 255).astype(np.uint8)
        out.append(EvalImage(Path(f"{i}.png"), Image.fromarray(pixels), prompt=prompt, seed=i, character=character))
    return out


def test_matches_lpips_package_pairwise(images):
    import lpips

    backend = make(pretrained_backbone=False, size=SIZE)
    backend.load()
    backend.update(images[:3])
    backend.update(images[3:])
    result = backend.compute()

    # The package's own forward and preprocessing (im2tensor: x / 127.5 - 1) on the same weights.
    model = backend.lpips.model

    def tensor(img: EvalImage) -> torch.Tensor:
        return lpips.im2tensor(np.array(img.image.resize((SIZE, SIZE), Image.Resampling.BICUBIC)))

    groups: dict[str, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.group, []).append(i)
    expected_groups, expected_per_image = [], [None] * len(images)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        with torch.no_grad():
            d = {(a, b): float(model(tensor(images[a]), tensor(images[b]))) for a, b in combinations(rows, 2)}
        expected_groups.append(sum(d.values()) / len(d))
        for r in rows:
            expected_per_image[r] = sum(v for pair, v in d.items() if r in pair) / (len(rows) - 1)

    assert [g["mean_lpips"] for g in result.details["groups"]] == pytest.approx(expected_groups, abs=1e-5)
    assert [g["images"] for g in result.details["groups"]] == [3, 2, 2]  # luca/a boy, a cat, alberto/a boy
    assert result.per_image == pytest.approx(expected_per_image, abs=1e-5)
    assert result.per_image[6] is None and result.details["single_image_groups"] == 1
    assert result.value == pytest.approx(sum(expected_groups) / len(expected_groups), abs=1e-5)
    assert result.stand_in and "stand-in" in result.details["backbone"]


def test_pairwise_distances_equal_lpips_per_pair():
    # Features once per image, all pairs from them at once, against lpips.LPIPS(x, y) called on each pair.
    from loratune.metrics.diversity import load_lpips

    pairs, _ = load_lpips("alex", False, "error", torch.device("cpu"), "diversity.model")
    torch.manual_seed(3)
    x = torch.rand(5, 3, SIZE, SIZE) * 2 - 1
    distances = pairs.distances(pairs.features(x))
    with torch.no_grad():
        expected = torch.tensor([[float(pairs.model(x[a : a + 1], x[b : b + 1])) for b in range(5)] for a in range(5)])
    off = ~torch.eye(5, dtype=torch.bool)
    assert (distances[off] - expected[off]).abs().max() < 1e-6
    assert expected[off].min() > 0.01  # distinct images: the comparison is not between zeros
    assert distances.diagonal().abs().max() < 1e-6


def test_stand_in_backbone_is_seeded(images):
    a = make(pretrained_backbone=False, size=SIZE)
    a.load()
    a.update(images)
    first = a.compute().value
    from loratune.metrics.cache import clear_model_cache

    clear_model_cache()
    b = make(pretrained_backbone=False, size=SIZE)
    b.load()
    b.update(images)
    assert b.compute().value == pytest.approx(first, abs=1e-6)


@pytest.mark.skipif(backbone_checkpoint("alex").exists(), reason="torchvision's AlexNet weights are cached here")
def test_missing_pretrained_backbone_errors_or_falls_back(images):
    with pytest.raises(
        LoratuneError,
        match=r"^evaluation\.backends\.diversity\.model: cannot load torchvision's "
        r"pretrained alex backbone .*pretrained_backbone: false",
    ):
        make().load()
    fallback = make(missing_backbone="stand_in", size=SIZE)
    fallback.load()
    fallback.update(images)
    result = fallback.compute()
    direct = make(pretrained_backbone=False, size=SIZE)  # the fallback is the same seeded random backbone
    direct.load()
    direct.update(images)
    assert result.stand_in and result.value == pytest.approx(direct.compute().value, abs=1e-6)


def test_no_shared_prompt_is_missing_and_bad_net_is_rejected(images):
    backend = make(pretrained_backbone=False, size=SIZE)
    backend.load()
    backend.update([images[0], images[2], images[6]])
    result = backend.compute()
    assert result.value is None and "two or more images" in result.missing_reason
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.diversity\.model: LPIPS network must be one of"):
        make("resnet")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.diversity\.size: "):
        make(size=8)


def test_vendi_matches_vendi_score_package(tiny_models, images):
    import open_clip
    from vendi_score import vendi

    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=3)
    backend = create_backend(BackendConfig(name="vendi", model=str(tiny_models.open_clip)), runtime, "diversity")
    backend.load()
    backend.update(images[:5])
    backend.update(images[5:])
    result = backend.compute()

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models.open_clip}")
    groups: dict[str, list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(img.group, []).append(i)
    expected = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        with torch.no_grad():
            x = model.eval().encode_image(torch.stack([preprocess(images[r].image) for r in rows])).double().numpy()
        vs = vendi.score_X(x)  # the package normalises the rows and builds the cosine kernel itself
        expected.append((vs, (vs - 1) / (len(rows) - 1)))
    assert [g["vendi"] for g in result.details["groups"]] == pytest.approx([e[0] for e in expected], abs=1e-4)
    assert result.value == pytest.approx(sum(e[1] for e in expected) / len(expected), abs=1e-4)
    assert 0.0 <= result.value <= 1.0 and result.stand_in
