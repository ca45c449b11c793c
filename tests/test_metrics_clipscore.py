"""CLIPScore backends: torchmetrics' formula on identical weights, and every way of naming an open_clip model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import BackendConfig
from loratune.errors import LoratuneError
from loratune.metrics.base import EvalImage, Runtime
from loratune.metrics.registry import create_backend

PROMPTS = ["a red ball on grass", "a portrait of a boy", "a red ball on grass", "a sea monster", "blue sky", "a boy"]


def make(name: str, model: str | None, **options: object):
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.float32, batch_size=4)
    return create_backend(BackendConfig(name=name, model=model, **options), runtime, "alignment")


@pytest.fixture(scope="module")
def images() -> list[EvalImage]:
    rng = np.random.default_rng(0)
    out = []
    for i, prompt in enumerate(PROMPTS):
        pixels = rng.integers(0, 256, (48 + 8 * i, 80, 3), dtype=np.uint8)  # odd sizes: resize + crop are exercised
        out.append(EvalImage(Path(f"{i}.png"), Image.fromarray(pixels), prompt=prompt))
    return out


def score(backend, images: list[EvalImage]):
    backend.load()
    backend.update(images[:4])  # two batches: accumulation across update() calls
    backend.update(images[4:])
    return backend.compute()


def _torchmetrics_scores(model, processor, images: list[EvalImage]) -> torch.Tensor:
    """torchmetrics' own CLIPScore update (normalise, 100 * cosine) on our images and prompts; clamped at 0 the way
    torchmetrics clamps its aggregate."""
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchvision.transforms.functional import pil_to_tensor

    tensors = [pil_to_tensor(img.image) for img in images]
    with torch.no_grad():
        raw, count = _clip_score_update(tensors, [img.prompt for img in images], model, processor)
    assert count == len(images)
    return raw.clamp_min(0.0)


def test_open_clip_equals_torchmetrics_formula(tiny_models, images):
    import open_clip
    from torchvision.transforms.functional import to_pil_image

    result = score(make("clipscore", str(tiny_models.open_clip)), images)

    # The same weights loaded independently, handed to torchmetrics through its model/processor interface.
    ref = f"local-dir:{tiny_models.open_clip}"
    model, _, preprocess = open_clip.create_model_and_transforms(ref)
    tokenizer = open_clip.get_tokenizer(ref)
    model.eval()

    class Adapter:
        config = SimpleNamespace()

        def to(self, device):
            return self

        def get_image_features(self, pixel_values):
            return model.encode_image(pixel_values)

        def get_text_features(self, input_ids, attention_mask):
            return model.encode_text(input_ids)

    def processor(images=None, text=None, **_kwargs):
        if images is not None:
            return {"pixel_values": torch.stack([preprocess(to_pil_image(t)) for t in images])}
        ids = tokenizer(text)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    expected = _torchmetrics_scores(Adapter(), processor, images)
    assert result.per_image == pytest.approx(expected.tolist(), abs=1e-4)
    assert any(v > 0 for v in result.per_image)  # not a vacuous all-clamped comparison
    assert result.value == pytest.approx(float(expected.mean()), abs=1e-4)
    assert result.stand_in and result.backend == "clipscore"


def test_hf_clip_equals_torchmetrics(tiny_models, images):
    from transformers import CLIPModel, CLIPProcessor

    result = score(make("hf_clipscore", str(tiny_models.hf_clip)), images)

    model = CLIPModel.from_pretrained(str(tiny_models.hf_clip)).eval()
    processor = CLIPProcessor.from_pretrained(str(tiny_models.hf_clip))

    class Transformers5:
        """torchmetrics expects tensors from get_*_features; transformers 5 returns model outputs (pooler_output)."""

        config = model.config

        def to(self, device):
            return self

        def get_image_features(self, *args, **kwargs):
            return model.get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return model.get_text_features(*args, **kwargs).pooler_output

    expected = _torchmetrics_scores(Transformers5(), processor, images)
    assert result.per_image == pytest.approx(expected.tolist(), abs=1e-4)
    assert any(v > 0 for v in result.per_image)
    assert result.stand_in


def test_images_without_prompt_are_left_out(tiny_models, images):
    mixed = [EvalImage(img.path, img.image, prompt=None if i % 2 else img.prompt) for i, img in enumerate(images)]
    full = score(make("clipscore", str(tiny_models.open_clip)), images)
    part = score(make("clipscore", str(tiny_models.open_clip)), mixed)
    assert part.per_image[1::2] == [None] * 3
    assert part.per_image[0::2] == pytest.approx(full.per_image[0::2], abs=1e-5)
    assert part.details["images_without_prompt"] == 3

    none = make("clipscore", str(tiny_models.open_clip))
    none.load()
    none.update([EvalImage(img.path, img.image) for img in images])
    assert none.compute().value is None


@pytest.fixture(scope="module")
def checkpoint_files(tiny_models, tmp_path_factory):
    """The tiny open_clip registered as a named architecture, its weights as .safetensors and as a torch .pt file."""
    import open_clip
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("open_clip_ckpt")
    model_cfg = json.loads((tiny_models.open_clip / "open_clip_config.json").read_text())["model_cfg"]
    (folder / "loratune-tiny-clip.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(folder / "loratune-tiny-clip.json")
    state = load_file(str(tiny_models.open_clip / "open_clip_model.safetensors"))
    torch.save(state, folder / "weights.pt")
    return tiny_models.open_clip / "open_clip_model.safetensors", folder / "weights.pt"


def test_checkpoint_files_and_pretrained_paths_give_identical_scores(tiny_models, images, checkpoint_files):
    safetensors_file, pt_file = checkpoint_files
    folder = score(make("clipscore", str(tiny_models.open_clip)), images).per_image
    # The folder's preprocessing (bicubic, shortest-edge) matches the built-in default, so scores must be identical.
    for variant in (
        make("clipscore", str(safetensors_file), architecture="loratune-tiny-clip"),
        make("clipscore", str(pt_file), architecture="loratune-tiny-clip"),
        make("clipscore", "loratune-tiny-clip", pretrained=str(pt_file)),
    ):
        assert score(variant, images).per_image == pytest.approx(folder, abs=1e-5)


def test_eva02_names_and_tags_resolve():
    from loratune.metrics.openclip_models import resolve_open_clip

    source = resolve_open_clip("EVA02-L-14", "merged2b_s4b_b131k", None, "evaluation.backends.alignment.model")
    assert (source.model_name, source.pretrained, source.stand_in) == ("EVA02-L-14", "merged2b_s4b_b131k", False)
    assert resolve_open_clip("ViT-L/14", None, None, "f.model").pretrained == "openai"
    assert resolve_open_clip("laion/CLIP-ViT-g-14", None, None, "f.model").model_name == "hf-hub:laion/CLIP-ViT-g-14"
    with pytest.raises(LoratuneError, match=r"alignment\.pretrained: unknown tag 'nope' .*merged2b_s4b_b131k"):
        make("clipscore", "EVA02-L-14", pretrained="nope")
    assert make("clipscore", "EVA02-B-16").source.pretrained == "merged2b_s8b_b131k"  # its only release
    with pytest.raises(LoratuneError, match=r"alignment\.pretrained: required for open_clip model coca_ViT-B-32"):
        make("clipscore", "coca_ViT-B-32")


def test_eva02_style_timm_tower_scores(images, tmp_path):
    """EVA02-CLIP's open_clip configs use a timm EVA vision tower; a tiny one goes through the same code path."""
    import open_clip
    from safetensors.torch import save_file

    cfg = json.loads(json.dumps(open_clip.get_model_config("EVA02-B-16")))
    cfg["embed_dim"] = 32
    cfg["vision_cfg"]["timm_model_name"] = "eva02_tiny_patch14_224"
    cfg["text_cfg"].update(width=32, heads=2, layers=2)
    (tmp_path / "EVA02-Tiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "EVA02-Tiny-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("EVA02-Tiny-test")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "eva.safetensors"))

    result = score(make("clipscore", "EVA02-Tiny-test", pretrained=str(tmp_path / "eva.safetensors")), images[:2])
    with torch.no_grad():
        _, _, preprocess = open_clip.create_model_and_transforms("EVA02-Tiny-test")
        img = torch.nn.functional.normalize(
            model.eval().encode_image(torch.stack([preprocess(i.image) for i in images[:2]])), dim=-1
        )
        txt = torch.nn.functional.normalize(
            model.encode_text(open_clip.get_tokenizer("EVA02-Tiny-test")(PROMPTS[:2])), dim=-1
        )
    assert result.per_image == pytest.approx((100 * (img * txt).sum(-1).clamp_min(0)).tolist(), abs=1e-4)


def test_missing_and_unloadable_models_name_the_field(tmp_path, images):
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.alignment\.model: model path not found"):
        make("clipscore", str(tmp_path / "nowhere.safetensors"), architecture="ViT-B-32")
    with pytest.raises(LoratuneError, match=r"alignment\.architecture: an open_clip checkpoint file needs"):
        (tmp_path / "w.safetensors").write_bytes(b"")
        make("clipscore", str(tmp_path / "w.safetensors"))
    with pytest.raises(LoratuneError, match=r"alignment\.model: .* is not an open_clip model folder"):
        make("clipscore", str(tmp_path))
    broken = make("clipscore", str(tmp_path / "w.safetensors"), architecture="ViT-B-32")
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.alignment\.model: cannot load open_clip model"):
        broken.load()
    offline = make("clipscore", "ViT-B-32", pretrained="openai")  # real tag: only the download can fail
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.alignment\.model: cannot load open_clip model"):
        offline.load()
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.alignment\.model: model path not found"):
        make("hf_clipscore", str(tmp_path / "missing_clip"))
    hf = make("hf_clipscore", str(tmp_path))
    with pytest.raises(LoratuneError, match=r"^evaluation\.backends\.alignment\.model: cannot load transformers model"):
        hf.load()


def test_half_precision_runtime_and_seeded_random_weights(tiny_models, images, checkpoint_files):
    """bfloat16 (what a GPU run would use) feeds open_clip inputs of the right dtype; 'random' weights repeat."""
    from loratune.metrics.cache import clear_model_cache

    fp32 = make("clipscore", str(tiny_models.open_clip))
    full = score(fp32, images).per_image
    runtime = Runtime(device=torch.device("cpu"), dtype=torch.bfloat16, batch_size=4)
    half = create_backend(BackendConfig(name="clipscore", model=str(tiny_models.open_clip)), runtime, "alignment")
    assert score(half, images).per_image == pytest.approx(full, abs=2.0)
    # The model cache keys on the dtype: the bfloat16 runtime got its own bfloat16 model, not the float32 one.
    assert half.encoder is not fp32.encoder and half.encoder.dtype == torch.bfloat16
    assert any(p.dtype == torch.bfloat16 for p in half.encoder.model.parameters())

    random_a = score(make("clipscore", "loratune-tiny-clip", pretrained="random"), images)
    clear_model_cache()
    random_b = score(make("clipscore", "loratune-tiny-clip", pretrained="random"), images)
    assert random_a.stand_in and random_a.per_image == random_b.per_image
