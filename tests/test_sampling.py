"""Sampling LoRA files of either format on the base model, as ``loratune evaluate`` does for outside LoRAs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.sampling import find_lora_files, sample_loras

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory):
    """(config, folder of LoRA files): two epochs' kohya files plus a diffusers copy of the second."""
    from loratune.train import train

    tmp_path = tmp_path_factory.mktemp("sampling")
    data = tmp_path / "data" / "1_lucaboy"
    data.mkdir(parents=True)
    for image in sorted(Path(tiny_models.dataset).glob("*/*.png"))[:2]:
        shutil.copy(image, data / image.name)
        shutil.copy(image.with_suffix(".txt"), data / f"{image.stem}.txt")
    config = load_config(
        tiny_models.config,
        [
            f"dataset.path={data.parent}",
            "train.epochs=2",
            "train.batch_size=2",
            "train.learning_rate=1e-2",
            "train.sample_checkpoints=false",
            "sampling.steps=2",
            "sampling.seeds=[0, 1]",
            "sampling.width=32",
            "sampling.height=32",
            "sampling.cfg=1.0",
            "sampling.prompts=[{text: lucaboy on a beach, character: lucaboy}]",
        ],
    )
    train(config, tmp_path / "run")
    loras = tmp_path / "loras"  # what a kohya user has: per-epoch files in one folder, plus a diffusers copy
    loras.mkdir()
    for epoch in (2, 1):
        folder = tmp_path / "run" / "checkpoints" / f"epoch-{epoch:04d}"
        shutil.copy(folder / f"tiny-{epoch:06d}.safetensors", loras)
    shutil.copy(
        tmp_path / "run" / "checkpoints" / "epoch-0002" / "pytorch_lora_weights.safetensors",
        loras / "zz-diffusers.safetensors",
    )
    return config, loras


def test_sample_loras_renders_a_folder_of_per_epoch_files(trained, tmp_path) -> None:
    config, loras = trained
    assert [p.name for p in find_lora_files([loras])] == [
        "tiny-000001.safetensors",
        "tiny-000002.safetensors",
        "zz-diffusers.safetensors",
    ]

    results = sample_loras(config, [loras], tmp_path / "samples")
    assert list(results) == [str(p) for p in find_lora_files([loras])]
    for samples in results.values():
        assert [(s.prompt, s.seed, s.character) for s in samples] == [
            ("lucaboy on a beach", 0, "lucaboy"),
            ("lucaboy on a beach", 1, "lucaboy"),
        ]
    rows = [
        json.loads(line) for line in (tmp_path / "samples" / "tiny-000001" / "samples.jsonl").read_text().splitlines()
    ]
    assert rows[0]["file"] == "p00-s0.png" and rows[0]["note"] == "stand-in weights"
    pixels = {Path(k).stem: [np.asarray(Image.open(s.path), dtype=np.int16) for s in v] for k, v in results.items()}
    assert np.abs(pixels["tiny-000001"][0] - pixels["tiny-000002"][0]).max() > 0
    assert all(np.array_equal(a, b) for a, b in zip(pixels["tiny-000002"], pixels["zz-diffusers"]))


def test_missing_or_empty_lora_inputs_are_user_errors(tmp_path) -> None:
    with pytest.raises(LoratuneError, match="not found"):
        find_lora_files([tmp_path / "nope.safetensors"])
    with pytest.raises(LoratuneError, match="no .safetensors"):
        find_lora_files([tmp_path])


def test_rank_loras_samples_scores_and_ranks_by_composite(trained, tmp_path) -> None:
    from loratune.sampling import rank_loras

    config, loras = trained
    config = config.model_copy(deep=True)
    backends = {getattr(axis, "value", axis): backend for axis, backend in config.evaluation.backends.items()}
    config.evaluation.backends = backends | {"alignment": None, "aesthetics": None, "quality": None}  # the quick two
    ranked = rank_loras(config, [loras], tmp_path, show_progress=False)
    assert sorted(r.path.name for r in ranked) == [
        "tiny-000001.safetensors",
        "tiny-000002.safetensors",
        "zz-diffusers.safetensors",
    ]
    composites = [r.result.composite for r in ranked]
    assert composites == sorted(composites, reverse=True)
    same = {r.path.name: r.result.composite for r in ranked}
    assert same["tiny-000002.safetensors"] == pytest.approx(same["zz-diffusers.safetensors"])  # same LoRA, same images
    table = json.loads((tmp_path / "ranking.json").read_text())
    assert [row["rank"] for row in table] == [1, 2, 3] and table[0]["lora"] == str(ranked[0].path)
    assert all((r.samples_dir / "scores.json").is_file() for r in ranked)


def test_evaluate_command_ranks_a_folder_of_lora_files(trained, tmp_path, capsys) -> None:
    from loratune.cli import main
    from loratune.config import dump_config

    config, loras = trained
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(dump_config(config))
    quick = ["--set", "evaluation.backends.alignment=null", "--set", "evaluation.backends.aesthetics=null",
             "--set", "evaluation.backends.quality=null"]
    code = main(["evaluate", str(loras), "--config", str(cfg_path), "--out", str(tmp_path / "ev"), "--json", *quick])
    out = capsys.readouterr()
    assert code == 0, out.err
    table = json.loads(out.out)
    assert sorted(Path(row["lora"]).name for row in table) == [p.name for p in find_lora_files([loras])]
    assert [row["composite"] for row in table] == sorted((row["composite"] for row in table), reverse=True)
    assert all((Path(row["samples"]) / "scores.json").is_file() for row in table)
    code = main(["evaluate", str(loras), "--config", str(cfg_path), "--out", str(tmp_path / "ev2"), *quick])
    assert code == 0 and "ranked by composite" in capsys.readouterr().out


def test_evaluate_ranks_the_readable_loras_and_lists_the_skipped_ones(trained, tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    from loratune.cli import main
    from loratune.config import dump_config

    config, loras = trained
    folder = tmp_path / "loras"
    shutil.copytree(loras, folder)
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    tensors = load_file(folder / "tiny-000001.safetensors")
    down = next(k for k in tensors if k.endswith("lora_down.weight"))
    tensors[down] = torch.zeros(tensors[down].shape[0], tensors[down].shape[1] + 3)  # made for another base model
    save_file(tensors, folder / "other-base.safetensors")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(dump_config(config))
    quick = ["--config", str(cfg_path), "--set", "evaluation.backends.alignment=null", "--set",
             "evaluation.backends.aesthetics=null", "--set", "evaluation.backends.quality=null"]
    code = main(["evaluate", str(folder), "--out", str(tmp_path / "ev"), *quick])
    out = capsys.readouterr().out
    assert code == 0
    assert "skipped 2 files" in out and "broken.safetensors: not a readable safetensors file" in out
    assert "other-base.safetensors: not a LoRA for this base model" in out
    table = json.loads((tmp_path / "ev" / "ranking.json").read_text())
    assert [row["rank"] for row in table] == [1, 2, 3, None, None]
    assert {Path(row["lora"]).name for row in table if row["rank"] is None} == {"broken.safetensors",
                                                                               "other-base.safetensors"}
    assert not (tmp_path / "ev" / "other-base" / "scores.json").exists()

    assert main(["evaluate", str(folder), "--out", str(tmp_path / "strict"), "--strict", *quick]) == 2
    err = capsys.readouterr().err
    assert "broken.safetensors: not a readable safetensors file" in err and err.count("\n") == 1
    (folder / "broken.safetensors").unlink()
    for name in list(folder.iterdir()):
        if name.name != "other-base.safetensors":
            name.unlink()
    assert main(["evaluate", str(folder), "--out", str(tmp_path / "none"), *quick]) == 2
    assert "other-base.safetensors: not a LoRA for this base model" in capsys.readouterr().err
