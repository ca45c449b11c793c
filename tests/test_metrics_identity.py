"""Character consistency by embedding similarity: exact cosines against independently loaded models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, References, Runtime
from loratune.metrics.embedding_identity import mean_pairwise_cosine
from loratune.metrics.registry import create_backend


def make(name: str, model: str | None, **options: object):
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=3)
    return create_backend(BackendConfig(name=name, model=model, **options), runtime, "consistency")


def picture(seed: int, size: tuple[int, int] = (72, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def generations() -> list[EvalImage]:
    chars = ["luca", "luca", "alberto", "luca", "alberto", "giulia"]
    return [EvalImage(Path(f"{i}.png"), picture(i), prompt="p", character=c) for i, c in enumerate(chars)]


@pytest.fixture(scope="module")
def references() -> References:
    return References(images={"luca": [picture(100), picture(101)], "alberto": [picture(102)]})


def run(backend, images, refs):
    backend.load()
    backend.setup(refs)
    backend.update(images[:4])
    backend.update(images[4:])
    return backend.compute()


def expected_values(embed, images: list[EvalImage], refs: References) -> tuple[list[float | None], dict[str, float]]:
    """The definition, spelt out: mean cosine to the character's references; mean pairwise cosine per character."""
    gen = F.normalize(embed([img.image for img in images]).float(), dim=-1)
    to_refs: list[float | None] = []
    for img, g in zip(images, gen):
        ref_images = refs.for_character(img.character)
        r = F.normalize(embed(ref_images).float(), dim=-1)
        to_refs.append(float(torch.stack([torch.dot(g, rr) for rr in r]).mean()))
    across = {}
    for c in dict.fromkeys(img.character for img in images):
        rows = [gen[i] for i, img in enumerate(images) if img.character == c]
        pairs = [torch.dot(rows[i], rows[j]) for i in range(len(rows)) for j in range(i + 1, len(rows))]
        if pairs:
            across[c] = float(torch.stack(pairs).mean())
    return to_refs, across


def test_mean_pairwise_cosine():
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    mean, per_row = mean_pairwise_cosine(e)
    c = 2**-0.5
    assert mean == pytest.approx((0 + c + c) / 3)
    assert per_row == pytest.approx([c / 2, c / 2, c])
    assert mean_pairwise_cosine(e[:1]) == (None, [None])


def test_clip_i_open_clip_matches_definition(tiny_models, generations, references):
    import open_clip

    result = run(make("clip_i", str(tiny_models.open_clip)), generations, references)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models.open_clip}")
    model.eval()

    def embed(imgs):
        with torch.no_grad():
            return model.encode_image(torch.stack([preprocess(i) for i in imgs]))

    to_refs, across = expected_values(embed, generations, references)
    # giulia has no references of her own: References.for_character falls back to all of them.
    assert result.per_image == pytest.approx(to_refs, abs=1e-5)
    assert result.value == pytest.approx(sum(to_refs) / len(to_refs), abs=1e-5)
    per_char = result.details["per_character"]
    assert per_char["luca"]["across_generations"] == pytest.approx(across["luca"], abs=1e-5)
    assert per_char["alberto"]["across_generations"] == pytest.approx(across["alberto"], abs=1e-5)
    assert per_char["giulia"]["across_generations"] is None
    assert result.details["across_generations"] == pytest.approx((across["luca"] + across["alberto"]) / 2, abs=1e-5)
    assert per_char["luca"]["references"] == 2 and per_char["giulia"]["references"] == 3
    assert result.stand_in


def test_clip_i_hf_and_no_references(tiny_models, generations):
    from transformers import CLIPModel, CLIPProcessor

    result = run(make("clip_i", str(tiny_models.hf_clip)), generations, References())
    model = CLIPModel.from_pretrained(str(tiny_models.hf_clip)).eval()
    processor = CLIPProcessor.from_pretrained(str(tiny_models.hf_clip))

    def embed(imgs):
        with torch.no_grad():
            return model.get_image_features(
                pixel_values=processor(images=imgs, return_tensors="pt")["pixel_values"]
            ).pooler_output

    _, across = expected_values(embed, generations, References(images={None: [generations[0].image]}))
    assert "across generations only" in result.details["mode"]
    assert result.details["to_references"] is None
    assert result.value == pytest.approx((across["luca"] + across["alberto"]) / 2, abs=1e-5)
    assert result.per_image[-1] is None  # giulia: a single generation, nothing to compare with
    assert result.stand_in and result.details["per_character"]["luca"]["references"] == 0


def test_no_references_and_single_images_is_missing(tiny_models):
    backend = make("clip_i", str(tiny_models.open_clip))
    result = run(
        backend,
        [EvalImage(Path("a.png"), picture(1), character="a"), EvalImage(Path("b.png"), picture(2), character="b")],
        References(),
    )
    assert result.value is None and "no reference images" in result.missing_reason


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory) -> Path:
    """A tiny DINOv2 (transformers' Dinov2Model + its BitImageProcessor) saved like the hub's facebook/dinov2-*."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
    )
    Dinov2Model(config).save_pretrained(str(folder))
    BitImageProcessor(
        size={"shortest_edge": 64},
        crop_size={"height": 56, "width": 56},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(str(folder))
    return folder


def test_dino_hf_uses_pooled_cls(dino_folder, generations, references):
    from transformers import AutoImageProcessor, AutoModel

    result = run(make("dino", str(dino_folder)), generations, references)
    model = AutoModel.from_pretrained(str(dino_folder)).eval()
    processor = AutoImageProcessor.from_pretrained(str(dino_folder))

    def embed(imgs):
        with torch.no_grad():
            return model(pixel_values=processor(images=imgs, return_tensors="pt")["pixel_values"]).pooler_output

    to_refs, _ = expected_values(embed, generations, references)
    assert result.per_image == pytest.approx(to_refs, abs=1e-5)
    assert not result.stand_in  # no stand-in marker in this folder: the flag follows the marker

    mean_pooled = run(make("dino", str(dino_folder), pooling="mean"), generations, references)
    assert mean_pooled.per_image != pytest.approx(to_refs, abs=1e-5)


def test_dino_timm_folder_file_and_name(generations, references, tmp_path):
    import timm
    from safetensors.torch import save_file
    from timm.data import create_transform, resolve_model_data_config
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=0).eval()
    save_for_hf(model, str(tmp_path / "timm_folder"), safe_serialization=True)
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    transform = create_transform(**resolve_model_data_config(model), is_training=False)

    def embed(imgs):
        with torch.no_grad():
            return model(torch.stack([transform(i) for i in imgs]))

    to_refs, _ = expected_values(embed, generations, references)
    from_folder = run(make("dino", str(tmp_path / "timm_folder")), generations, references)
    assert from_folder.per_image == pytest.approx(to_refs, abs=1e-5)
    from_file = run(
        make("dino", str(tmp_path / "weights.safetensors"), architecture="test_vit"), generations, references
    )
    assert from_file.per_image == pytest.approx(to_refs, abs=1e-5)
    random_named = make("dino", "test_vit", pretrained=False)
    assert random_named.stand_in and random_named.library == "timm"


def test_identity_errors_name_the_field(tmp_path):
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.model: model path not found"):
        make("dino", str(tmp_path / "missing"))
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.model: model path not found"):
        make("clip_i", str(tmp_path / "missing.safetensors"), architecture="ViT-B-32")
    (tmp_path / "w.pt").write_bytes(b"junk")
    with pytest.raises(LoratuneError, match=r"consistency\.architecture: a timm checkpoint file needs"):
        make("dino", str(tmp_path / "w.pt")).load()
    with pytest.raises(
        LoratuneError, match=r"^evaluation\.backends\.consistency\.model: cannot load transformers model"
    ):
        make("dino", str(tmp_path)).load()
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.consistency\.library: Input should be"):
        make("dino", "test_vit", library="keras")
