"""``loratune train`` on the command line: a real tiny run, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loratune.cli import main

pytestmark = pytest.mark.slow


def test_train_command_runs_and_reports_json(tiny_models, tmp_path, capsys) -> None:
    data = tmp_path / "data" / "1_lucaboy"
    data.mkdir(parents=True)
    image = min(Path(tiny_models.dataset).glob("*/*.png"))
    shutil.copy(image, data / image.name)
    shutil.copy(image.with_suffix(".txt"), data / f"{image.stem}.txt")
    code = main(
        [
            "train",
            str(tiny_models.config),
            "--set",
            f"dataset.path={data.parent}",
            "--set",
            "train.epochs=1",
            "--set",
            "train.sample_checkpoints=false",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 1 and report["checkpoints"][0]["kohya"].endswith("tiny-000001.safetensors")
    assert (tmp_path / "run" / "config.yaml").is_file()

    again = [
        "train",
        str(tiny_models.config),
        "--set",
        f"dataset.path={data.parent}",
        "--set",
        "train.epochs=2",
        "--set",
        "train.sample_checkpoints=false",
        "--out",
        str(tmp_path / "run"),
        "--json",
    ]
    assert main(again) == 2 and "--resume" in capsys.readouterr().err  # never overwrites a run silently
    assert main([*again, "--resume"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 2 and [c["epoch"] for c in report["checkpoints"]] == [2]


@pytest.mark.parametrize(
    ("override", "message"), [("train.rank=0", "train.rank"), ("train.optimizer=sgd", "train.optimizer")]
)
def test_bad_values_exit_2_with_one_line(tiny_models, tmp_path, capsys, override, message) -> None:
    assert main(["train", str(tiny_models.config), "--set", override, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
