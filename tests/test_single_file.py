"""A base model as one checkpoint file in the original (LDM) layout: written by tiny-models, read back by diffusers'
single-file loader with every tensor equal, trained and sampled with the same images as the folder, hashed as kohya
hashes it, and refused with one line when it cannot be used safely."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.cli import main
from loratune.config import load_config
from loratune.families import get_family
from loratune.errors import LoratuneError


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_ldm_file_loads_back_through_diffusers_with_every_tensor_of_the_folder(tiny_models, family) -> None:
    from loratune.singlefile.load import detect_family
    from loratune.train.model import load_models

    folder, file = getattr(tiny_models, family), getattr(tiny_models, f"{family}_file")
    assert detect_family(file) == family
    ours, theirs = load_models(str(file), family, config=str(folder)), load_models(str(folder), family)
    for name in ("denoiser", "vae"):
        a, b = getattr(ours, name).state_dict(), getattr(theirs, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for a_model, b_model in zip(ours.text_encoders, theirs.text_encoders):
        a, b = a_model.state_dict(), b_model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ours.noise_scheduler.config == theirs.noise_scheduler.config


@pytest.mark.slow
def test_training_from_the_file_gives_the_folders_images_and_kohyas_hashes(tiny_models, small_dataset_factory,
                                                                          tmp_path) -> None:
    from loratune.lora.kohya import read_metadata
    from loratune.train import train

    common = [f"dataset.path={small_dataset_factory(1)}", "train.epochs=1", "train.learning_rate=1e-2",
              "sampling.steps=2", "sampling.seeds=[0]", "train.sample_checkpoints=true"]
    from_file = load_config(tiny_models.config, [f"model.base={tiny_models.sd15_file}",
                                                  f"model.config={tiny_models.sd15}", *common])
    from_folder = load_config(tiny_models.config, common)
    assert load_config(None, [f"model.base={tiny_models.sdxl_file}"]).model.family == "sdxl"  # from the keys
    a = train(from_file, tmp_path / "file").last
    b = train(from_folder, tmp_path / "folder").last
    for x, y in zip(a.samples, b.samples):
        assert np.array_equal(np.asarray(Image.open(x.path)), np.asarray(Image.open(y.path)))
    meta = read_metadata(a.kohya_path)
    data = tiny_models.sd15_file.read_bytes()
    assert meta["ss_sd_model_name"] == "sd15.safetensors"
    assert meta["ss_sd_model_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert meta["ss_new_sd_model_hash"] == hashlib.sha256(data).hexdigest()
    assert "ss_new_sd_model_hash" not in read_metadata(b.kohya_path)  # a folder is not hashed (kohya hashes files)


def test_bad_single_files_are_refused_with_one_line(tiny_models, tmp_path, capsys) -> None:
    import pickle

    from safetensors.torch import load_file

    from loratune.singlefile.load import config_folder, load_pipeline

    with pytest.raises(LoratuneError, match="model.family is sdxl but sd15.safetensors is an sd15 checkpoint"):
        load_config(None, [f"model.base={tiny_models.sd15_file}", "model.family=sdxl"])
    state = load_file(tiny_models.sd15_file)
    safe = tmp_path / "weights.ckpt"
    torch.save({"state_dict": state}, safe)
    assert load_pipeline(safe, get_family("sd15"), str(tiny_models.sd15)).unet is not None  # weights only: loads

    class Payload:  # what a malicious .ckpt carries: an object whose unpickling runs code
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("unpickled!",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": state, "x": Payload()}))
    with pytest.raises(LoratuneError, match="refused: it loads only by unpickling"):
        load_pipeline(evil, "sd15", str(tiny_models.sd15))
    assert "unpickled!" not in capsys.readouterr().out

    with pytest.raises(LoratuneError, match="hf download stable-diffusion-v1-5/stable-diffusion-v1-5"):
        config_folder("sd15", None)  # nothing cached here
    config = tmp_path / "c.yaml"
    shutil.copy(tiny_models.sd15_file, tmp_path / "model.safetensors")
    config.write_text("model: {base: model.safetensors}\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.config" in err and "Hugging Face cache" in err
