"""The external-trainer adapter, driven against a stand-in script that writes kohya-format per-epoch files."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.train import StopTraining, train
from loratune.train.config import ExternalTrainer
from loratune.train.external import build_command

pytestmark = pytest.mark.slow
FAKE = Path(__file__).parent / "data" / "fake_kohya_trainer.py"


@pytest.fixture(scope="module")
def template(tiny_models, tmp_path_factory) -> Path:
    """A kohya file for the tiny SD1.5 UNet with non-zero up weights, made by our own exporter."""
    from diffusers import UNet2DConditionModel

    from loratune.lora.kohya import save_kohya, to_kohya
    from loratune.train.model import Models, add_lora, lora_modules, state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_models.sd15, subfolder="unet")
    add_lora(Models("sd15", unet, None, [], [], None), 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"], None)
    torch.manual_seed(0)
    for _, module in lora_modules(unet):
        torch.nn.init.normal_(module.lora_B["default"].weight, std=0.5)
    path = tmp_path_factory.mktemp("template") / "template.safetensors"
    return save_kohya(path, to_kohya("sd15", state_dict(unet), 4.0), {})


def _config(tiny_models, command: str, *overrides: str):
    config = load_config(
        tiny_models.config,
        [
            f"model.base={tiny_models.sd15}",
            "train.epochs=2",
            "train.rank=4",
            "sampling.steps=2",
            "sampling.seeds=[0]",
            "sampling.width=32",
            "sampling.height=32",
            "sampling.cfg=1.0",
            "sampling.prompts=[{text: lucaboy on a beach, character: lucaboy}]",
            *[o for o in overrides if not o.startswith("train.external.")],
        ],
    )
    timeout = [float(o.split("=")[1]) for o in overrides if o.startswith("train.external.timeout_s=")]
    config.train.external = ExternalTrainer(command=command, timeout_s=timeout[0] if timeout else None)
    return config


def _fake(template: Path, extra: str = "") -> str:
    return (
        f"{{python}} {FAKE} --template {template} --output_dir {{output_dir}} --output_name {{output_name}} "
        f"--max_train_epochs {{epochs}} --network_dim {{rank}} --learning_rate {{learning_rate}} {extra}"
    )


def test_external_checkpoints_are_found_by_metadata_or_name_and_sampled(tiny_models, template, tmp_path) -> None:
    config = _config(tiny_models, _fake(template))
    seen = []
    result = train(config, tmp_path, on_checkpoint=seen.append)
    assert [c.epoch for c in seen] == [1, 2] == [c.epoch for c in result.checkpoints]
    assert [c.kohya_path.name for c in seen] == ["tiny-000001.safetensors", "tiny-000002.safetensors"]
    assert seen[0].rank == 4 and seen[1].rank is None  # only epoch 1 carries ss_* metadata
    first, second = (np.asarray(Image.open(c.samples[0].path), dtype=np.int16) for c in seen)
    assert np.abs(first - second).max() > 0  # epoch 2's LoRA is twice as strong: different images
    assert "epoch 2 lr 0.0001" in (tmp_path / "external.log").read_text()


def test_stop_training_ends_the_external_run(tiny_models, template, tmp_path) -> None:
    def stop(info):
        raise StopTraining

    result = train(_config(tiny_models, _fake(template), "train.epochs=5"), tmp_path, on_checkpoint=stop)
    assert result.stopped_early and [c.epoch for c in result.checkpoints] == [1]


def test_timeout_stops_the_process_group_with_its_children(tiny_models, template, tmp_path) -> None:
    pid_file = tmp_path / "child.pid"
    config = _config(
        tiny_models,
        _fake(template, f"--hang --child_pid_file {pid_file}"),
        "train.external.timeout_s=3",
        "train.sample_checkpoints=false",
    )
    with pytest.raises(LoratuneError, match="still running after 3 s"):
        train(config, tmp_path / "run")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the trainer's child process survived")


def test_template_errors_are_clear(tiny_models, tmp_path) -> None:
    config = _config(tiny_models, "{python} train.py --lr {learningrate}")
    with pytest.raises(LoratuneError, match=r"unknown placeholder \{learningrate\}"):
        build_command(config, tmp_path)
    args = build_command(_config(tiny_models, "{python} t.py --dim {rank} --out '{output_dir}'"), tmp_path / "a b")
    assert args[2:] == ["--dim", "4", "--out", str(tmp_path / "a b")]
    failing = _config(tiny_models, "{python} -c 'import sys; sys.exit(3)'")
    with pytest.raises(LoratuneError, match="exited with code 3"):
        train(failing, tmp_path / "fail")


def test_an_external_checkpoint_draws_more_seeds_into_its_folder(tiny_models, template, tmp_path) -> None:
    """``CheckpointInfo.sample_more`` (a search's race, ``search.gating.race``) for a checkpoint file: seed 1 drawn
    into the epoch's folder beside seed 0, the manifest listing both, the image the file gives seed 1 on its own."""
    from loratune.manifest import SAMPLES_MANIFEST, read_manifest
    from loratune.sampling import render_samples, with_seeds
    from loratune.train.cache import BaseCache
    from loratune.train.model import training_precision

    config = _config(tiny_models, _fake(template), "train.epochs=1")
    more: list = []
    seen = []

    def on_checkpoint(info) -> None:
        more.extend(info.sample_more([1]))
        seen.append(info)

    train(config, tmp_path / "run", on_checkpoint=on_checkpoint)
    folder = tmp_path / "run" / "samples" / "epoch-0001"
    assert [s.seed for s in more] == [1] and seen[0].sample_more is None  # dropped once its callback returned
    assert sorted(p.name for p in folder.glob("*.png")) == ["p00-s0.png", "p00-s1.png"]
    assert sorted(r.seed for r in read_manifest(folder / SAMPLES_MANIFEST).values()) == [0, 1]
    precision = training_precision(config.train)
    with BaseCache().borrow(config, precision) as base:
        alone = render_samples(with_seeds(config, [1]), base.models, precision, tmp_path / "alone",
                               lora=seen[0].kohya_path)
    assert np.array_equal(np.asarray(Image.open(alone[0].path)), np.asarray(Image.open(folder / "p00-s1.png")))
