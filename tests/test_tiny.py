"""The tiny models load through each library's normal by-path loader and run; the dataset and config are complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.modelref import is_stand_in


def test_sd15_pipeline_renders_and_tokenizer_matches_open_clip(tiny_models):
    import open_clip
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models.sd15)
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    text = "a photo of a cat"
    ours = CLIPTokenizer.from_pretrained(tiny_models.sd15 / "tokenizer")(text)["input_ids"]
    reference = open_clip.get_tokenizer("ViT-B-32")([text])[0].tolist()
    assert ours == reference[: len(ours)] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
    assert is_stand_in(str(tiny_models.sd15))


def test_sd15_text_encoder_reloads_its_weights(tiny_models):
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(tiny_models.sd15 / "text_encoder")
    saved = load_file(tiny_models.sd15 / "text_encoder" / "model.safetensors")
    loaded = model.state_dict()
    for key, value in saved.items():
        match = [k for k in loaded if k == key or k.endswith("." + key) or key.endswith("." + k)]
        assert match, key
        assert torch.equal(loaded[match[0]], value), key


def test_sdxl_pipeline_renders(tiny_models):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_models.sdxl)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.tokenizer_2.pad_token == "!"
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()


def test_open_clip_folder_loads_by_local_dir(tiny_models):
    import open_clip

    ref = f"local-dir:{tiny_models.open_clip}"
    model, _, preprocess = open_clip.create_model_and_transforms(ref)
    tokenizer = open_clip.get_tokenizer(ref)
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.new("RGB", (80, 60), (200, 40, 30)))[None])
        text = model.encode_text(tokenizer(["a photo of a cat"]))
    assert image.shape == text.shape == (1, 32)
    assert (tiny_models.open_clip / "open_clip_model.safetensors").is_file()
    assert is_stand_in(str(tiny_models.open_clip))


def test_hf_clip_model_and_processor(tiny_models):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_models.hf_clip)
    processor = CLIPProcessor.from_pretrained(tiny_models.hf_clip)
    inputs = processor(
        text=["a photo of a cat"], images=[Image.new("RGB", (100, 70))], return_tensors="pt", padding=True
    )
    assert inputs["input_ids"].tolist() == [[49406, 320, 1125, 539, 320, 2368, 49407]]
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 1)


def test_aesthetic_state_dict_has_public_layout(tiny_models):
    from safetensors.torch import load_file

    state = torch.load(tiny_models.aesthetic, weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes == {
        "layers.0.weight": (1024, 32),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    }
    copy = load_file(tiny_models.aesthetic.with_suffix(".safetensors"))
    assert all(torch.equal(copy[k], v) for k, v in state.items())
    assert is_stand_in(str(tiny_models.aesthetic))


def test_insightface_loads_the_arcface_onnx(tiny_models):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    model = get_model(str(tiny_models.arcface), providers=["CPUExecutionProvider"])
    assert isinstance(model, ArcFaceONNX) and model.input_size == (112, 112)
    faces = [np.full((112, 112, 3), v, np.uint8) for v in (10, 200)]
    assert model.get_feat(faces).shape == (2, 512)


def test_face_pack_finds_the_characters_faces_not_noise(tiny_models):
    import cv2
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(tiny_models.arcface.parent), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    assert set(app.models) == {"detection", "recognition"}
    for reference in sorted(tiny_models.references.rglob("*.png")):
        rgb = np.asarray(Image.open(reference).convert("RGB"))
        faces = app.get(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert len(faces) == 1, reference
        assert faces[0].embedding.shape == (512,)
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    assert app.get(noise) == []


def test_vlm_forward_gives_logits_over_its_vocabulary(tiny_models):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models.vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models.vlm).eval()
    tokenizer = processor.tokenizer
    for word in ("Yes", " Yes", "No", " No"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this a cat?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<IMG_CONTEXT>\n" in prompt
    inputs = processor(images=[Image.new("RGB", (64, 64))], text=[prompt], return_tensors="pt", crop_to_patches=False)
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == model.config.image_seq_length == 256
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == len(tokenizer) == model.config.text_config.vocab_size
    assert torch.isfinite(logits).all()


def test_dataset_has_a_caption_for_every_image(tiny_models):
    folders = sorted(p.name for p in tiny_models.dataset.iterdir())
    assert folders == ["10_albertoboy", "10_lucaboy"]
    images = sorted(tiny_models.dataset.rglob("*.png"))
    assert len(images) == 16
    for image in images:
        caption = image.with_suffix(".txt").read_text().strip()
        assert caption.startswith(image.parent.name.split("_", 1)[1] + ", a boy with ")
    for character in ("lucaboy", "albertoboy"):
        assert len(list((tiny_models.references / character).glob("*.png"))) >= 2


def test_dataset_is_deterministic(tmp_path):
    from loratune.tiny.dataset import make_character_dataset

    a = make_character_dataset(tmp_path / "a", n_per_character=3, size=64, seed=3)
    b = make_character_dataset(tmp_path / "b", n_per_character=3, size=64, seed=3)
    c = make_character_dataset(tmp_path / "c", n_per_character=3, size=64, seed=4)
    bytes_of = lambda d: [p.read_bytes() for p in sorted(d.train.rglob("*.png"))]
    assert bytes_of(a) == bytes_of(b) != bytes_of(c)


def test_config_validates_with_relative_paths(tiny_models):
    from loratune.config import load_config

    config = load_config(tiny_models.config)
    assert config.model.base == str(tiny_models.sd15)
    assert config.dataset.path == str(tiny_models.dataset)
    assert set(config.dataset.characters) == {"lucaboy", "albertoboy"}
    assert config.evaluation.backends["consistency"].model == str(tiny_models.open_clip)
    assert config.evaluation.backends["alignment"].model == str(tiny_models.vlm)
    aesthetics = config.evaluation.backends["aesthetics"]
    assert aesthetics.model == str(tiny_models.aesthetic)
    assert aesthetics.options()["clip_model"] == str(tiny_models.open_clip)
    assert [p.character for p in config.sampling.prompts] == ["lucaboy", "albertoboy"]
    assert str(tiny_models.root) not in tiny_models.config.read_text()  # relocatable


def test_sdxl_config_validates(tiny_models):
    from loratune.config import load_config

    config = load_config(tiny_models.config_sdxl)
    assert (config.model.base, config.model.family) == (str(tiny_models.sdxl), "sdxl")


def test_cli_prints_the_paths(tiny_models, capsys):
    from loratune.cli import main

    assert main(["tiny-models", str(tiny_models.root)]) == 0
    out = capsys.readouterr().out
    assert f"config: {tiny_models.config}\n" in out
    assert main(["tiny-models", str(tiny_models.root), "--family", "flux"]) == 0
    out = capsys.readouterr().out
    assert f"config: {tiny_models.config_flux}\n" in out and f"config (Flux.1): {tiny_models.config_flux}\n" in out
    assert main(["tiny-models", str(tiny_models.root), "--family", "sd3"]) == 2
    assert "--family: unknown family 'sd3'" in capsys.readouterr().err


def test_flux_pipeline_loads_like_flux1_dev_with_a_local_t5_tokenizer(tiny_models):
    from diffusers import FluxPipeline
    from transformers import T5TokenizerFast

    from loratune.config import load_config

    pipe = FluxPipeline.from_pretrained(tiny_models.flux)
    assert pipe.transformer.config.guidance_embeds and pipe.vae.config.shift_factor == 0.1159
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels == 64
    tokenizer = T5TokenizerFast.from_pretrained(tiny_models.flux / "tokenizer_2")
    ids = tokenizer(["a boy with brown hair"], padding="max_length", max_length=12).input_ids[0]
    # T5's conventions: whole words are one piece each, </s> (1) closes the text, <pad> (0) fills the rest.
    assert tokenizer.convert_ids_to_tokens(ids[:6]) == ["▁a", "▁boy", "▁with", "▁brown", "▁hair", "</s>"]
    assert ids[6:] == [0] * 6
    image = pipe("a boy", num_inference_steps=2, height=64, width=64, max_sequence_length=16,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    config = load_config(tiny_models.config_flux)
    assert (config.model.base, config.model.family) == (str(tiny_models.flux), "flux")


def test_refuses_to_replace_a_folder_with_other_content(tmp_path):
    from loratune.cli import main
    from loratune.errors import LoratuneError
    from loratune.tiny import build_tiny_models

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(LoratuneError, match="not a tiny-models folder"):
        build_tiny_models(tmp_path)
    assert main(["tiny-models", str(tmp_path / "notes.txt")]) == 2
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_every_model_is_marked_stand_in(tiny_models):
    models = ("sd15", "sdxl", "open_clip", "hf_clip", "aesthetic", "arcface", "face_detector", "vlm")
    for name in models:
        assert is_stand_in(str(getattr(tiny_models, name))), name
    assert not is_stand_in(str(tiny_models.dataset))


def test_reuses_a_complete_build(tiny_models):
    from loratune.tiny import build_tiny_models

    manifest = json.loads((tiny_models.root / "loratune-tiny.json").read_text())
    before = (tiny_models.sd15 / "model_index.json").stat().st_mtime_ns
    again = build_tiny_models(tiny_models.root)
    assert again == tiny_models and manifest["version"] >= 1
    assert (tiny_models.sd15 / "model_index.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("name", ["sd15", "sdxl", "flux"])
def test_each_family_loads_every_part_it_declares_from_its_tiny_folder(tiny_models, name):
    from loratune.families import FAMILIES

    family = FAMILIES[name]
    folder = tiny_models.bases[name]
    assert all((folder / c.subfolder).is_dir() for c in family.components())
    models = family.load(str(folder))
    loaded = [models.denoiser, models.vae, *models.text_encoders, *models.tokenizers, models.noise_scheduler]
    for component, part in zip(family.components(), loaded):
        assert isinstance(part, component.load_class()), (component.subfolder, type(part))
    assert not any(p.requires_grad for m in [models.denoiser, models.vae, *models.text_encoders] for p in m.parameters())
    # What the memory estimate builds offline is exactly the parts with weights; the one-file twin is the family's.
    assert set(family.published_configs) == {c.subfolder for c in family.components() if c.weights}
    if family.single_file_keys:
        from loratune.singlefile.load import detect_family

        assert detect_family(tiny_models.files[name]) == name
