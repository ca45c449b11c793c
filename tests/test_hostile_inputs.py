"""Hostile and unlucky inputs on the command line: one line, exit 2 (130 for Ctrl-C), nothing left behind.

Also what a first real run meets: a model that is not on the machine, a second ranking of the same folder, and the
libraries' own chatter (quiet unless -v).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sigint_default

from loratune.cli import main
from loratune.config import dump_config, load_config

pytestmark = pytest.mark.slow

QUICK_EVAL = ["sampling.steps=1", "sampling.seeds=[0]", "sampling.width=32", "sampling.height=32",
              "sampling.prompts=[{text: lucaboy on a beach, character: lucaboy}]",
              "evaluation.backends.alignment=null", "evaluation.backends.aesthetics=null",
              "evaluation.backends.quality=null"]
CHATTER = ("Loading weights", "Loading pipeline components", "No LoRA keys", "FutureWarning", "kernels", "it/s]")


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    return err


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@pytest.fixture(scope="module")
def data(tiny_models, tmp_path_factory) -> Path:
    """A one-image kohya dataset."""
    root = tmp_path_factory.mktemp("hostile-data")
    folder = root / "1_lucaboy"
    folder.mkdir()
    image = min(Path(tiny_models.dataset).glob("*/*.png"))
    shutil.copy(image, folder / image.name)
    shutil.copy(image.with_suffix(".txt"), folder / f"{image.stem}.txt")
    return root


@pytest.fixture(scope="module")
def loras(tiny_models, data, tmp_path_factory) -> tuple[Path, Path]:
    """(config file for quick ranking, folder with two epochs' kohya LoRA files)."""
    from loratune.train import train

    root = tmp_path_factory.mktemp("hostile-loras")
    config = load_config(tiny_models.config, [f"dataset.path={data}", "train.epochs=2",
                                              "train.sample_checkpoints=false", *QUICK_EVAL])
    train(config, root / "run")
    folder = root / "loras"
    folder.mkdir()
    for file in (root / "run" / "checkpoints").glob("epoch-*/tiny-*.safetensors"):
        shutil.copy(file, folder)
    config_file = root / "quick.yaml"
    config_file.write_text(dump_config(config))
    return config_file, folder


def cli(*argv: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from loratune.cli import main; sys.exit(main())", *argv],
                          check=False, capture_output=True, text=True, timeout=300, cwd=cwd, env={**os.environ, **env})


def test_metadata_jsonl_not_utf8_is_one_line_in_train_and_audit(tiny_models, tmp_path, capsys) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    shutil.copy(min(Path(tiny_models.dataset).glob("*/*.png")), folder / "a.png")
    (folder / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "caf\xe9 \xff"}\n')
    out = tmp_path / "run"
    assert main(["train", str(tiny_models.config), *sets(f"dataset.path={folder}"), "--out", str(out)]) == 2
    one_line_error(capsys, "metadata.jsonl", "UTF-8")
    assert not out.exists()
    assert main(["audit", str(folder), "--no-alignment", "--no-embeddings", "--no-faces"]) == 2
    one_line_error(capsys, "metadata.jsonl", "UTF-8")
    assert not (folder / "audit.json").exists()


def test_rejected_train_leaves_no_folder(tiny_models, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(tiny_models.config), *sets(f"dataset.path={tmp_path / 'nowhere'}"), "--out", str(out)]) == 2
    one_line_error(capsys, "nowhere")
    assert not out.exists()


def test_missing_hub_model_offline_is_one_line_at_once(tiny_models, data, loras, tmp_path, capsys) -> None:
    missing = "someone/not-downloaded-model"
    out = tmp_path / "run"
    started = time.perf_counter()
    assert main(["train", str(tiny_models.config), *sets(f"dataset.path={data}", f"model.base={missing}"),
                 "--out", str(out)]) == 2
    one_line_error(capsys, "model.base", missing, f"hf download {missing}", "local folder")
    assert not out.exists()
    config, folder = loras
    assert main(["evaluate", str(folder), "-c", str(config), *sets(f"model.base={missing}")]) == 2
    one_line_error(capsys, "model.base", f"hf download {missing}")
    assert main(["optimize", str(config), "--run", str(tmp_path / "opt"), *sets(f"model.base={missing}", "train.sample_checkpoints=true")]) == 2
    one_line_error(capsys, "model.base", f"hf download {missing}")
    assert not (tmp_path / "opt").exists()
    assert time.perf_counter() - started < 30  # no hub retries


def test_audit_never_passes_with_a_key_check_skipped(tiny_models, data, capsys) -> None:
    config = ["-c", str(tiny_models.config)]
    assert main(["audit", str(data), *config, *sets("evaluation.backends.alignment.model=someone/missing-vlm")]) == 2
    one_line_error(capsys, "evaluation.backends.alignment.model", "hf download someone/missing-vlm", "--no-alignment")
    assert not (data / "audit.json").exists()
    assert main(["audit", str(data), *config, "--no-alignment", "--no-faces", "--json",
                 *sets("evaluation.backends.alignment.model=someone/missing-vlm")]) == 0
    assert json.loads(capsys.readouterr().out)["images"]


def test_audit_of_a_file_and_of_undecodable_images(tmp_path, capsys) -> None:
    file = tmp_path / "a.png"
    file.write_bytes(b"not a png")
    assert main(["audit", str(file)]) == 2
    one_line_error(capsys, "is a file", "dataset folder")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["audit", str(tmp_path), "--no-alignment", "--no-embeddings", "--no-faces"]) == 2
    one_line_error(capsys, "none of its 2 images can be decoded")
    assert not (tmp_path / "audit.json").exists()


def test_huge_ss_epoch_is_refused_before_sampling(loras, tmp_path, capsys) -> None:
    from safetensors.torch import load_file, save_file

    config, folder = loras
    source = min(folder.glob("*.safetensors"))
    save_file(load_file(source), tmp_path / "odd.safetensors", metadata={"ss_epoch": "9" * 5000})
    started = time.perf_counter()
    assert main(["evaluate", str(tmp_path / "odd.safetensors"), "-c", str(config)]) == 2
    one_line_error(capsys, "odd.safetensors", "ss_epoch", "5000 digits")
    assert time.perf_counter() - started < 20
    assert not list(tmp_path.glob("*eval*"))


def test_resume_after_a_torn_last_log_line(tiny_models, data, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    base = ["train", str(tiny_models.config), *sets(f"dataset.path={data}", "train.sample_checkpoints=false"),
            "--out", str(out), "--json"]
    assert main([*base, *sets("train.epochs=1")]) == 0
    log = out / "train_log.jsonl"
    log.write_text(log.read_text() + '{"step": 2, "lo')  # killed mid-write
    capsys.readouterr()
    assert main([*base, *sets("train.epochs=2"), "--resume"]) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_ctrl_c_during_train_says_where_and_how_to_resume(tiny_models, data, tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from loratune.cli import main; sys.exit(main())", "train",
         str(tiny_models.config), *sets(f"dataset.path={data}", "train.epochs=500", "train.sample_checkpoints=false"),
         "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=sigint_default)  # noqa: PLW1509  no Popen option resets SIGINT
    assert proc.stderr is not None
    for line in proc.stderr:  # the first checkpoint: training is under way
        if line.startswith("epoch 1:"):
            break
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130
    assert "loratune: interrupted" in err and f"--out {out} --resume" in err and "Traceback" not in err


def test_ranking_a_folder_twice_quietly_and_verbosely(loras) -> None:
    config, folder = loras
    for _ in range(2):  # the second run meets the first one's outputs
        done = cli("evaluate", str(folder), "-c", str(config))
        assert done.returncode == 0, done.stderr
        assert not [word for word in CHATTER if word in done.stderr], done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-000001.safetensors", "tiny-000002.safetensors"]
    ranking = json.loads((folder.parent / "loras-loratune-eval" / "ranking.json").read_text())
    assert sorted(Path(row["lora"]).name for row in ranking) == ["tiny-000001.safetensors", "tiny-000002.safetensors"]
    loud = cli("-v", "evaluate", str(folder), "-c", str(config), "--out", str(folder.parent / "loud"))
    assert loud.returncode == 0, loud.stderr
    assert [word for word in CHATTER if word in loud.stderr]  # -v shows the libraries' own lines
