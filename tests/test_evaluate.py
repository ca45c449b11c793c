"""``loratune evaluate`` end to end on the tiny models: all axes, the composite, stand-in labels, and bad input."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from loratune.cli import main


@pytest.fixture()
def generated(tmp_path, tiny_models) -> Path:
    """A folder of 'generated' images with a manifest: two prompts × two seeds per character."""
    folder = tmp_path / "gen"
    folder.mkdir()
    rows = []
    sources = sorted(Path(tiny_models.dataset).rglob("*.png"))
    for i, src in enumerate(sources[:8]):
        character = "lucaboy" if "lucaboy" in src.parent.name else "albertoboy"
        prompt = f"{character}, a boy on a beach" if i % 2 else f"{character}, a boy in a town"
        dst = folder / f"img{i:02d}.png"
        shutil.copy(src, dst)
        rows.append({"file": dst.name, "prompt": prompt, "seed": i, "character": character})
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_writes_all_axes_and_composite(generated, tiny_models, tmp_path, capsys):
    out_dir = tmp_path / "scores"
    code, out, err = _run(["evaluate", generated, "--prompts", generated / "samples.jsonl", "--config",
                           tiny_models.config, "--out", out_dir], capsys)
    assert code == 0, err
    scores = json.loads((out_dir / "scores.json").read_text())
    computed = [a for a, v in scores["axes"].items() if v["normalised"] is not None]
    assert {"alignment", "consistency", "aesthetics", "diversity"} <= set(computed)
    for axis in computed:
        assert 0.0 <= scores["axes"][axis]["normalised"] <= 1.0
    # The composite is exactly the weighted mean of the normalised axes with the reported (renormalised) weights.
    used = scores["composite_weights_used"]
    assert sum(used.values()) == pytest.approx(1.0)
    expected = sum(w * scores["axes"][a]["normalised"] for a, w in used.items())
    assert scores["composite"] == pytest.approx(expected, abs=1e-9)
    assert set(scores["missing_axes"]) == {a for a, v in scores["axes"].items() if v["normalised"] is None}
    # Model backends ran on the factory's random weights and say so; PIQE is weight-free, hence real.
    assert scores["stand_in_weights"] is True
    stand_in = {b["name"]: b["stand_in_weights"] for b in scores["backends"]}
    assert stand_in == {"vqascore": True, "clip_i": True, "laion_aesthetic": True, "piqe": False, "lpips": True}
    assert all(scores["axes"][a]["stand_in_weights"] == (a != "quality") for a in scores["axes"])
    assert any("stand-in" in w for w in scores["warnings"])
    assert "stand-in" in out
    assert scores["versions"]["torch"] and scores["n_images"] == 8
    rows = list(csv.DictReader(io.StringIO((out_dir / "per_image.csv").read_text())))
    assert len(rows) == 8 and rows[0]["prompt"].endswith("in a town")


def test_evaluate_json_flag(generated, tiny_models, tmp_path, capsys):
    code, out, err = _run(["evaluate", generated, "--config", tiny_models.config, "--out", tmp_path / "o", "--json",
                           "--set", "evaluation.backends.quality=null"], capsys)
    assert code == 0, err
    assert json.loads(out)["axes"]["quality"]["missing_reason"] == "not configured"


def _add_to_manifest(folder: Path, name: str) -> None:
    with open(folder / "samples.jsonl", "a") as fh:
        fh.write(json.dumps({"file": name, "prompt": "lucaboy, a boy", "character": "lucaboy"}) + "\n")


def _assert_clean_failure(code, err, out_dir, *words):
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line, err
    for w in words:
        assert w in line, line
    assert not (out_dir / "scores.json").exists() and not (out_dir / "per_image.csv").exists()


@pytest.mark.parametrize(
    "name, payload, words",
    [("zero.png", b"", "0 bytes"), ("junk.jpg", b"GIF89a-not-really", "not an image"), ("fake.webp", b"RIFF", "not an image")],
)
def test_broken_image_fails_cleanly(generated, tiny_models, tmp_path, capsys, name, payload, words):
    (generated / name).write_bytes(payload)
    _add_to_manifest(generated, name)
    out_dir = tmp_path / "o"
    code, _, err = _run(["evaluate", generated, "--config", tiny_models.config, "--out", out_dir], capsys)
    _assert_clean_failure(code, err, out_dir, name, words)


def test_truncated_image_fails_cleanly(generated, tiny_models, tmp_path, capsys):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "PNG")
    (generated / "cut.png").write_bytes(buf.getvalue()[:60])
    _add_to_manifest(generated, "cut.png")
    out_dir = tmp_path / "o"
    code, _, err = _run(["evaluate", generated, "--config", tiny_models.config, "--out", out_dir], capsys)
    _assert_clean_failure(code, err, out_dir, "cut.png")


def test_empty_folder_fails_cleanly(tiny_models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(["evaluate", tmp_path / "empty", "--config", tiny_models.config], capsys)
    _assert_clean_failure(code, err, tmp_path / "empty", "has no images")


def test_images_without_prompts_fail_cleanly(generated, tiny_models, tmp_path, capsys):
    (generated / "samples.jsonl").unlink()
    out_dir = tmp_path / "o"
    code, _, err = _run(["evaluate", generated, "--config", tiny_models.config, "--out", out_dir], capsys)
    _assert_clean_failure(code, err, out_dir, "no prompt", "needs one")


def test_unknown_backend_fails_cleanly(generated, tiny_models, tmp_path, capsys):
    out_dir = tmp_path / "o"
    code, _, err = _run(["evaluate", generated, "--config", tiny_models.config, "--out", out_dir,
                         "--set", "evaluation.backends.aesthetics.name=beauty9000"], capsys)
    _assert_clean_failure(code, err, out_dir, "evaluation.backends.aesthetics", "unknown backend 'beauty9000'")


def test_missing_model_path_fails_cleanly(generated, tiny_models, tmp_path, capsys):
    out_dir = tmp_path / "o"
    code, _, err = _run(["evaluate", generated, "--config", tiny_models.config, "--out", out_dir,
                         "--set", f"evaluation.backends.consistency.model={tmp_path / 'no-such-model'}"], capsys)
    _assert_clean_failure(code, err, out_dir, "evaluation.backends.consistency", "no-such-model")
