"""Prompt manifests: JSONL, CSV, sidecar .txt and samples.jsonl beside the images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from loratune.errors import LoratuneError
from loratune.manifest import match_prompts, read_manifest


def _images(folder, names):
    folder.mkdir(exist_ok=True)
    for n in names:
        Image.new("RGB", (4, 4)).save(folder / n)
    return [folder / n for n in names]


def test_jsonl_csv_and_sidecars(tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    (tmp_path / "p.jsonl").write_text(json.dumps({"file": "imgs/a.png", "prompt": "a boy", "seed": 3, "character": "luca"}) + "\n")
    (tmp_path / "imgs" / "b.txt").write_text("sidecar prompt\n")
    found = match_prompts(imgs, tmp_path / "p.jsonl")
    assert found[imgs[0]].prompt == "a boy" and found[imgs[0]].seed == 3 and found[imgs[0]].character == "luca"
    assert found[imgs[1]].prompt == "sidecar prompt"
    assert found[imgs[2]].prompt is None
    (tmp_path / "p.csv").write_text("file,prompt,seed\nc.png,third,7\n")
    assert match_prompts(imgs, tmp_path / "p.csv")[imgs[2]].seed == 7


def test_samples_jsonl_beside_images_is_used(tmp_path):
    imgs = _images(tmp_path, ["s0.png"])
    (tmp_path / "samples.jsonl").write_text(json.dumps({"file": "s0.png", "prompt": "p", "seed": 1}) + "\n")
    assert match_prompts(imgs, None)[imgs[0]].prompt == "p"


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("bad.jsonl", '{"file": "a.png", "prompt": "x"}\n{oops\n', "bad.jsonl:2: invalid JSON"),
        ("noseed.jsonl", '{"file": "a.png", "prompt": "x", "seed": "two"}\n', "'seed' must be an integer"),
        ("nofile.csv", "prompt\nx\n", "'file' and 'prompt'"),
        ("p.yaml", "a: b", "must be .jsonl or .csv"),
        ("empty.jsonl", "\n", "no rows"),
    ],
)
def test_bad_manifests(tmp_path, name, text, words):
    (tmp_path / name).write_text(text)
    with pytest.raises(LoratuneError, match=words):
        read_manifest(tmp_path / name)
