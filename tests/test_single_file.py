"""A base model as one checkpoint file in its family's original layout (LDM / SGM; Flux: BFL's transformer): written by
tiny-models, read back with every tensor equal (SD through diffusers' single-file loader; Flux through ours, which
agrees with diffusers' converter at FLUX.1's width), trained and sampled with the same images as the folder, hashed as
kohya hashes it, and refused with one line when it cannot be used safely."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.cli import main
from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.families import get_family


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_the_one_file_loads_back_with_every_tensor_of_the_folder(tiny_models, family) -> None:
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
@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_training_from_the_file_gives_the_folders_images_and_kohyas_hashes(tiny_models, small_dataset_factory,
                                                                          tmp_path, family) -> None:
    from loratune.lora.kohya import read_metadata
    from loratune.train import train

    common = [f"dataset.path={small_dataset_factory(1)}", "train.epochs=1", "train.learning_rate=1e-2",
              "sampling.steps=2", "sampling.seeds=[0]", "train.sample_checkpoints=true"]
    file = tiny_models.files[family]
    from_file = load_config(tiny_models.configs[family], [f"model.base={file}",
                                                           f"model.config={tiny_models.bases[family]}", *common])
    from_folder = load_config(tiny_models.configs[family], common)
    for one in tiny_models.files.values():  # the family from the keys
        assert load_config(None, [f"model.base={one}"]).model.family == one.stem
    a = train(from_file, tmp_path / "file").last
    b = train(from_folder, tmp_path / "folder").last
    assert a.samples
    for x, y in zip(a.samples, b.samples):
        assert np.array_equal(np.asarray(Image.open(x.path)), np.asarray(Image.open(y.path)))
    meta = read_metadata(a.kohya_path)
    data = file.read_bytes()
    assert meta["ss_sd_model_name"] == f"{family}.safetensors"
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


def test_our_flux_layout_is_the_inverse_of_diffusers_converter_at_flux1_width() -> None:
    """diffusers' converter splits linear1 at FLUX.1's width only: at that width (one block of each kind, every
    weight one column wide, so the split is what is compared), its reading of our file is the state dict we wrote."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    from loratune.families.flux_original import to_original
    from loratune.families.published import FLUX1_DEV

    config = {**FLUX1_DEV["transformer"], "num_layers": 1, "num_single_layers": 1}
    with torch.device("meta"):
        keys = FluxTransformer2DModel.from_config(config).state_dict()
    g = torch.Generator().manual_seed(0)
    ours = {k: torch.randn(v.shape[0], *([1] if v.ndim > 1 else []), generator=g) for k, v in keys.items()}
    original = to_original(ours, config)
    assert any(k.startswith("single_blocks.0.linear1.") for k in original)
    back = convert_flux_transformer_checkpoint_to_diffusers(dict(original))
    assert back.keys() == ours.keys() and all(torch.equal(back[k], ours[k]) for k in ours)


def test_a_comfyui_all_in_one_flux_file_gives_its_transformer(tiny_models, tmp_path) -> None:
    """ComfyUI's all-in-one files hold the transformer under model.diffusion_model. beside the VAE and encoders."""
    from safetensors.torch import load_file, save_file

    from loratune.singlefile.load import detect_family
    from loratune.train.model import load_models

    state = {f"model.diffusion_model.{k}": v for k, v in load_file(tiny_models.flux_file).items()}
    save_file({**state, "vae.decoder.conv_in.weight": torch.zeros(1)}, tmp_path / "aio.safetensors")
    assert detect_family(tmp_path / "aio.safetensors") == "flux"
    ours = load_models(str(tmp_path / "aio.safetensors"), "flux", config=str(tiny_models.flux)).denoiser.state_dict()
    theirs = load_models(str(tiny_models.flux), "flux").denoiser.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_bad_flux_files_are_refused_with_one_line(tiny_models, tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    from loratune.singlefile.load import config_folder, detect_family
    from loratune.train.model import load_models

    state = load_file(tiny_models.flux_file)
    save_file({**state, "single_stream_modulation.lin.weight": torch.zeros(1)}, tmp_path / "flux2.safetensors")
    with pytest.raises(LoratuneError, match="is a FLUX.2 checkpoint; loratune trains"):
        detect_family(tmp_path / "flux2.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("final_layer.")}, tmp_path / "cut.safetensors")
    with pytest.raises(LoratuneError, match="no final_layer.adaLN_modulation.1.weight in the file"):
        load_models(str(tmp_path / "cut.safetensors"), "flux", config=str(tiny_models.flux))
    save_file({k: v for k, v in state.items() if not k.startswith("guidance_in.")}, tmp_path / "schnell.safetensors")
    with pytest.raises(LoratuneError, match="is a FLUX.1-schnell transformer .* set model.config to a FLUX.1-schnell"):
        load_models(str(tmp_path / "schnell.safetensors"), "flux", config=str(tiny_models.flux))
    wide = {**state, "img_in.weight": torch.zeros(64, 128)}
    save_file(wide, tmp_path / "wide.safetensors")
    with pytest.raises(LoratuneError, match=r"img_in.weight is \(64, 128\) in the file"):
        load_models(str(tmp_path / "wide.safetensors"), "flux", config=str(tiny_models.flux))
    with pytest.raises(LoratuneError, match="hf download black-forest-labs/FLUX.1-dev --include .*'text_encoder_2/\\*'"):
        config_folder("flux", None)  # nothing cached here: the transformer's file needs the other parts' weights
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{base: {tiny_models.flux_file}}}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "flux component configs" in err and not (tmp_path / "run").exists()
