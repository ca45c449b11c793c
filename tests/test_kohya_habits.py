"""kohya habits: dataset TOML with regularisation images, --sample_prompts files, the metadata web UIs read, and the
base model's own samples beside the LoRA's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from loratune.config import dump_config, load_config
from loratune.errors import LoratuneError
from loratune.families import get_family
from loratune.lora.kohya import (
    dataset_metadata,
    modelspec_metadata,
    read_metadata,
    safetensors_hashes,
    save_kohya,
)
from loratune.train.config import TrainSection
from loratune.train.data import Item, balance_regularisation, read_kohya_toml, scan_dataset


def _image(path: Path, caption: str | None = None, ext: str = ".txt", size: tuple[int, int] = (64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)
    if caption is not None:
        path.with_suffix(ext).write_text(caption + "\n")
    return path


TOML = """
[general]
caption_extension = ".caption"
shuffle_caption = true

[[datasets]]
resolution = 512
batch_size = 2

  [[datasets.subsets]]
  image_dir = "img/luca"
  num_repeats = 5
  class_tokens = "luca boy"

  [[datasets.subsets]]
  image_dir = "reg/boy"
  class_tokens = "boy"
  is_reg = true
"""


@pytest.fixture
def kohya_toml(tmp_path: Path) -> Path:
    _image(tmp_path / "img" / "luca" / "a.png", "luca boy, beach", ".caption")
    _image(tmp_path / "img" / "luca" / "b.png")  # no caption: its subset's class_tokens, as kohya does
    for i in range(3):
        _image(tmp_path / "reg" / "boy" / f"r{i}.png", "a boy, park" if i == 0 else None, ".caption")
    path = tmp_path / "dataset.toml"
    path.write_text(TOML)
    return path


def test_kohya_toml_dataset_with_regularisation_images(kohya_toml: Path, caplog) -> None:
    subsets = read_kohya_toml(kohya_toml)
    assert [(s.image_dir, s.num_repeats, s.class_tokens, s.caption_extension, s.is_reg) for s in subsets] == [
        (kohya_toml.parent / "img" / "luca", 5, "luca boy", ".caption", False),  # [general]'s extension inherited
        (kohya_toml.parent / "reg" / "boy", 1, "boy", ".caption", True),
    ]
    assert "batch_size, resolution, shuffle_caption come from loratune's config" in caplog.text
    items = scan_dataset(kohya_toml)
    # 2 training images x 5 repeats = 10; the 3 reg images are repeated to match (kohya's balancing): 4, 3, 3.
    assert [(i.image.name, i.caption, i.repeats, i.is_reg) for i in items] == [
        ("a.png", "luca boy, beach", 5, False),
        ("b.png", "luca boy", 5, False),
        ("r0.png", "a boy, park", 4, True),
        ("r1.png", "boy", 3, True),
        ("r2.png", "boy", 3, True),
    ]


def test_regularisation_balance_follows_sd_scripts() -> None:
    reg = [Item(Path(f"r{i}.png"), "boy", r, 64, 64, True) for i, r in enumerate([2, 1, 1])]
    assert [it.repeats for it in balance_regularisation(3, reg)] == [2, 1]  # enough after two: the third unused
    assert [it.repeats for it in balance_regularisation(9, reg)] == [4, 3, 2]  # 4 in the first round, +1 each
    assert balance_regularisation(9, []) == []


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('image_dir = "reg/boy"', 'image_dir = "nowhere"'), "image_dir folder not found"),
    (lambda t: t.replace("num_repeats = 5", "num_repeats = 0"), "num_repeats must be a whole number >= 1"),
    (lambda t: t.replace("is_reg = true", "is_reg = true\n  color_jitter = 2"), "unsupported key(s) color_jitter"),
    (lambda t: t.replace("[[datasets]]", "[[sets]]").replace("datasets.subsets", "sets.subsets"), "no [[datasets]]"),
    (lambda t: t.replace("num_repeats = 5", "num_repeats = 5\n  is_reg = true"), "every subset is is_reg"),
    (lambda t: t + "[oops", "not a valid TOML file"),
])
def test_kohya_toml_mistakes_are_one_line(kohya_toml: Path, edit, message) -> None:
    kohya_toml.write_text(edit(TOML))
    with pytest.raises(LoratuneError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        scan_dataset(kohya_toml)


def test_a_training_image_without_caption_or_class_tokens_fails(kohya_toml: Path) -> None:
    kohya_toml.write_text(TOML.replace('class_tokens = "luca boy"\n', ""))
    with pytest.raises(LoratuneError, match=r"b\.png: no caption \(b\.caption missing or empty\) and no class_tokens"):
        scan_dataset(kohya_toml)


def test_config_takes_a_toml_as_dataset_path(kohya_toml: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text("dataset:\n  path: dataset.toml\n")
    assert load_config(config_file).dataset.path == str(kohya_toml)


PROMPTS = """# kohya --sample_prompts file
luca boy, on a beach --n lowres, blurry --s 20 --l 6.5 --d 42 --w 512 --h 768

luca boy, portrait --ss euler_a
"""


def test_kohya_sample_prompts_file(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    config_file = tmp_path / "config.yaml"
    config_file.write_text("sampling:\n  prompts_file: prompts.txt\n")
    config = load_config(config_file)
    first, second = config.sampling.prompts
    assert (first.text, first.negative_prompt, first.steps, first.cfg, first.seed, first.width, first.height) == (
        "luca boy, on a beach", "lowres, blurry", 20, 6.5, 42, 512, 768)
    assert second.text == "luca boy, portrait" and second.seed is None and second.steps is None
    # The run's stored config holds the prompts themselves and loads back unchanged.
    stored = tmp_path / "stored.yaml"
    stored.write_text(dump_config(config))
    assert load_config(stored).sampling.prompts == config.sampling.prompts


@pytest.mark.parametrize("text, message", [
    ("luca --x 3", r"prompts.txt:1: unknown option --x"),
    ("luca --s many", r"prompts.txt:1: --s needs a number \(got 'many'\)"),
    ("luca --w 500", r"multiple of 8"),
    ("# only a comment\n", r"no prompts in this file"),
])
def test_bad_sample_prompts_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "prompts.txt").write_text(text)
    with pytest.raises(LoratuneError, match=message):
        load_config(None, [f"sampling.prompts_file={tmp_path / 'prompts.txt'}"])


def test_prompts_file_replaces_listed_prompts(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("luca on a beach --d 3\n")
    config = load_config(None, ["sampling.prompts=[luca, alberto]", f"sampling.prompts_file={tmp_path / 'prompts.txt'}"])
    assert [(p.text, p.seed) for p in config.sampling.prompts] == [("luca on a beach", 3)]


def test_sshs_hashes_are_kohyas(tmp_path: Path) -> None:
    """sshs_model_hash: sha256 of the file's tensor data (what A1111 computes from the file); sshs_legacy_hash: the
    64 KiB at 1 MiB of the file written with only the ss_* metadata (sd-scripts' addnet_hash_legacy)."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"lora_unet_x.lora_down.weight": torch.randn(16, 20000, generator=generator),
               "lora_unet_x.lora_up.weight": torch.randn(20000, 16, generator=generator),
               "lora_unet_x.alpha": torch.tensor(8.0)}
    meta = {"ss_network_dim": "16", "ss_network_alpha": "8.0", "modelspec.title": "luca"}
    path = save_kohya(tmp_path / "luca.safetensors", tensors, meta)
    written = read_metadata(path)
    blob = path.read_bytes()
    assert written["sshs_model_hash"] == hashlib.sha256(blob[8 + int.from_bytes(blob[:8], "little"):]).hexdigest()
    save_file(tensors, str(tmp_path / "ss-only.safetensors"), metadata={k: v for k, v in meta.items() if k[:3] == "ss_"})
    legacy = hashlib.sha256((tmp_path / "ss-only.safetensors").read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    assert written["sshs_legacy_hash"] == legacy
    # User metadata (not ss_*) does not move either hash.
    assert safetensors_hashes(tensors, meta | {"modelspec.title": "other"}) == (written["sshs_model_hash"], legacy)


def test_dataset_and_modelspec_metadata(tmp_path: Path) -> None:
    items = [Item(tmp_path / "10_luca" / "a.png", "luca boy, Beach", 10, 64, 64),
             Item(tmp_path / "10_luca" / "b.png", "luca boy, red shirt", 10, 64, 64),
             Item(tmp_path / "reg" / "r.png", "boy", 20, 64, 64, True)]
    meta = dataset_metadata(items, "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert meta["ss_num_train_images"] == "20" and meta["ss_num_reg_images"] == "20"
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_luca": {"n_repeats": 10, "img_count": 2}}
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 20, "img_count": 1}}
    assert json.loads(meta["ss_tag_frequency"]) == {"10_luca": {"luca boy": 2, "beach": 1, "red shirt": 1}}
    assert meta["ss_sd_model_name"] == "stable-diffusion-v1-5"
    # With train.prediction_type set the family reads nothing from the model.
    spec = modelspec_metadata(get_family("sdxl").modelspec(None, TrainSection(prediction_type="epsilon")), "luca", 1024, 0)
    assert spec["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert spec["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert spec["modelspec.resolution"] == "1024x1024" and spec["modelspec.sai_model_spec"] == "1.0.0"
    assert spec["modelspec.prediction_type"] == "epsilon"
    v = get_family("sd15").modelspec(None, TrainSection(prediction_type="v_prediction"))
    assert modelspec_metadata(v, "luca", 512, 0)["modelspec.prediction_type"] == "v"


@pytest.mark.slow
def test_training_on_a_kohya_toml_with_reg_images_and_prompt_file(tiny_models, tmp_path: Path) -> None:
    """One epoch on the tiny SD1.5: reg images mixed into the batches, the kohya file's metadata filled, the base
    model's samples drawn once before training with the prompt file's own seed and size."""
    import shutil

    from loratune.manifest import read_manifest
    from loratune.train import train

    characters = sorted(Path(tiny_models.dataset).iterdir())
    luca = tmp_path / "img" / "luca"
    luca.mkdir(parents=True)
    for image in sorted(characters[0].glob("*.png"))[:2]:
        shutil.copy(image, luca / image.name)
        shutil.copy(image.with_suffix(".txt"), luca / image.with_suffix(".caption").name)
    for i, image in enumerate(sorted(characters[1].glob("*.png"))[:2]):
        _image(tmp_path / "reg" / "boy" / f"r{i}.png")  # no caption: the class token "boy"
    (tmp_path / "dataset.toml").write_text(TOML.replace("num_repeats = 5", "num_repeats = 1"))
    (tmp_path / "prompts.txt").write_text("lucaboy on a beach --d 7 --w 48 --h 32 --s 2\nlucaboy --l 1.5\n")
    config = load_config(tiny_models.config, [
        f"model.base={tiny_models.sd15}", f"dataset.path={tmp_path / 'dataset.toml'}", "dataset.resolution=64",
        "train.rank=4", "train.epochs=1", "train.batch_size=2", "train.learning_rate=1e-3",
        f"sampling.prompts_file={tmp_path / 'prompts.txt'}", "sampling.seeds=[0]", "sampling.steps=2",
        "sampling.width=32", "sampling.height=32", "sampling.cfg=1.0", "train.log_with=[]"])
    records: list[dict] = []
    result = train(config, tmp_path / "out", progress=records.append)
    assert result.steps == 2  # 2 training + 2 reg images (balanced to 2), batch 2
    meta = read_metadata(result.last.kohya_path)
    assert meta["ss_num_train_images"] == "2" and meta["ss_num_reg_images"] == "2"
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"boy": {"n_repeats": 1, "img_count": 2}}
    assert set(json.loads(meta["ss_tag_frequency"])) == {"luca"} and meta["ss_network_alpha"] == "4.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "tiny"
    assert meta["ss_sd_model_name"] == Path(tiny_models.sd15).name and meta["ss_resolution"] == "(64, 64)"
    blob = result.last.kohya_path.read_bytes()
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + int.from_bytes(blob[:8], "little"):]).hexdigest()
    assert len(meta) >= 60
    base = tmp_path / "out" / "samples" / "base"
    rows = read_manifest(base / "samples.jsonl")
    assert [(Path(f).name, r.seed) for f, r in rows.items()] == [("p00-s7.png", 7), ("p01-s0.png", 0)]
    assert Image.open(base / "p00-s7.png").size == (48, 32) and Image.open(base / "p01-s0.png").size == (32, 32)
    epoch = tmp_path / "out" / "samples" / "epoch-0001"
    assert Image.open(epoch / "p00-s7.png").size == (48, 32)
    # Drawn once: a second training into the same folder keeps the base samples as they are.
    before = (base / "p00-s7.png").stat().st_mtime_ns
    train(config, tmp_path / "out2", base_samples=base)
    assert (base / "p00-s7.png").stat().st_mtime_ns == before and not (tmp_path / "out2" / "samples" / "base").exists()
