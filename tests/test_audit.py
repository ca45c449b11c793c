"""loratune audit on a generated dataset with injected problems; the model-free checks exactly."""

from __future__ import annotations

import json
from pathlib import Path

import imagehash
import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from loratune.audit import checks
from loratune.cli import main
from loratune.tiny.dataset import make_character_dataset


def _problems(audit: dict, file: str) -> list[str]:
    return next((row["problems"] for row in audit["flagged"] if row["file"] == file), [])


def test_audit_flags_duplicate_blur_missing_and_long_caption(tiny_models, tmp_path: Path, capsys) -> None:
    ds = make_character_dataset(tmp_path / "data", n_per_character=4, size=64)
    folder = ds.images[0].parent.name  # 10_lucaboy
    original = ds.images[1]
    # A near-duplicate: the same drawing a little brighter, under another name, with its own caption.
    ImageEnhance.Brightness(Image.open(original).convert("RGB")).enhance(1.05).save(original.with_name("0100.png"))
    original.with_name("0100.txt").write_text(original.with_suffix(".txt").read_text())
    Image.open(ds.images[2]).filter(ImageFilter.GaussianBlur(2)).save(ds.images[2])
    ds.images[3].with_suffix(".txt").unlink()
    ds.images[0].with_suffix(".txt").write_text("lucaboy, " + ", ".join(["a very detailed background"] * 20))

    out = tmp_path / "out"
    code = main(["audit", str(ds.train), "--config", str(tiny_models.config), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    audit = json.loads((out / "audit.json").read_text())

    dup_a, dup_b = f"{folder}/{original.name}", f"{folder}/0100.png"
    assert any({pair["a"], pair["b"]} == {dup_a, dup_b} for pair in audit["near_duplicates"])
    assert any("near-duplicate" in p for p in _problems(audit, dup_a))
    blurred = _problems(audit, f"{folder}/{ds.images[2].name}")
    assert any(p.startswith("blurry") for p in blurred) and any(p.startswith("low technical quality") for p in blurred)
    assert _problems(audit, f"{folder}/{ds.images[3].name}") == ["caption missing (0003.txt)"]
    assert any("caption too long" in p for p in _problems(audit, f"{folder}/{ds.images[0].name}"))
    # Clean, distinct images with fitting captions are not flagged for blur, quality or duplicates.
    clean = [r for r in audit["per_image"] if r["file"].startswith("10_albertoboy/")]
    assert clean and all(not r["problems"] for r in clean)

    assert audit["layout"] == "kohya" and audit["images"] == 9
    assert audit["summary"]["caption_problems"] == 1 and audit["summary"]["near_duplicate_pairs"] == 1
    assert audit["alignment"]["backend"] == "vqascore" and len(audit["alignment"]["lowest"]) == 3
    assert set(audit["alignment"]["traits"]) == {"lucaboy", "albertoboy"}
    assert audit["stand_in"] and audit["diversity"]["embedding"]["vendi_score"] >= 1.0
    # Character presence, independently: open_clip's own model, cosine to the centroid of the character's references.
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_models.open_clip}")

    def embed(paths: list[Path]) -> torch.Tensor:
        with torch.no_grad():
            e = model.eval().encode_image(torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths]))
        return torch.nn.functional.normalize(e.float(), dim=-1)

    centre = torch.nn.functional.normalize(
        embed(sorted((tiny_models.references / "lucaboy").glob("*.png"))).mean(0), dim=0
    )
    luca = [r for r in audit["per_image"] if r["character"] == "lucaboy"]
    expected = [float(e @ centre) for e in embed([ds.train / r["file"] for r in luca])]
    assert len(luca) == 5 and [r["character_similarity"] for r in luca] == pytest.approx(expected, abs=1e-4)
    assert audit["characters"]["lucaboy"]["reference_similarity"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert audit["faces"]["face_rate"] == 0.0  # drawn stick figures: no flags for missing faces then
    assert "0003.png" in printed and "stand-in" in printed


def test_audit_missing_folder_is_a_user_error(tmp_path: Path, capsys) -> None:
    assert main(["audit", str(tmp_path / "nope"), "--no-alignment"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_model_free_checks() -> None:
    assert checks.clip_token_count("a photo of a cat") == 7  # 5 words + BOS + EOS
    assert checks.robust_outliers([10, 11, 10, 12, 11, 40], high_is_bad=True) == [5]
    assert checks.robust_outliers([10, 11, 10, 12, 11, 40], high_is_bad=False) == []
    assert checks.robust_outliers([0.50, 0.51, 0.49, 0.47], high_is_bad=False, min_gap=0.1) == []
    assert checks.low_ratio([100.0, 90.0, 5.0, 110.0], 0.15) == [2]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    hashes = [imagehash.phash(img), imagehash.phash(img.rotate(90)), imagehash.phash(img)]
    assert (0, 2, 0) in checks.hash_pairs(hashes, 6)
    emb = np.eye(3)
    assert checks.embedding_diversity(emb) == pytest.approx({"mean_cosine_distance": 1.0, "vendi_score": 3.0})


def test_audit_plain_folder_with_metadata_empty_caption_and_corrupt_image(tmp_path: Path) -> None:
    from loratune.audit import AuditOptions, run_audit
    from loratune.config import load_config

    data = tmp_path / "plain"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(data / f"{i}.png")
    (data / "metadata.jsonl").write_text(
        '{"file_name": "0.png", "text": "a cat"}\n{"file_name": "1.png", "text": "a dog"}\n'
    )
    (data / "2.txt").write_text("   \n")
    (data / "3.txt").write_text("a bird")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    options = AuditOptions(alignment=False, embeddings=False, faces=False)
    audit = run_audit(data, load_config(None), options, out_dir=tmp_path / "out").data

    assert audit["layout"] == "plain" and audit["images"] == 5
    rows = {r["file"]: r for r in audit["per_image"]}
    assert rows["0.png"]["caption"] == "a cat" and rows["3.png"]["caption"] == "a bird"
    assert rows["2.png"]["problems"] == ["caption empty (2.txt)"]
    assert any(p.startswith("unreadable image") for p in rows["broken.png"]["problems"])
    assert audit["summary"]["unreadable_images"] == 1
    assert json.loads((tmp_path / "out" / "audit.json").read_text())["images"] == 5
