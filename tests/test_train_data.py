"""Training data: layouts, captions, buckets, epoch plans — no model needed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image

from loratune.errors import LoratuneError
from loratune.train.data import assign_bucket, bucket_sizes, plan_epoch, process_caption, scan_dataset


def _image(path: Path, size: tuple[int, int] = (64, 64), caption: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")
    return path


def test_kohya_layout_repeats_and_captions(tmp_path: Path) -> None:
    _image(tmp_path / "10_luca" / "a.png", caption="luca, smiling")
    _image(tmp_path / "3_alberto_boy" / "b.png", (64, 96), caption="alberto boy, running")
    items = scan_dataset(tmp_path)
    assert [(i.image.name, i.caption, i.repeats, i.width, i.height) for i in items] == [
        ("a.png", "luca, smiling", 10, 64, 64),
        ("b.png", "alberto boy, running", 3, 64, 96),
    ]


def test_plain_folder_with_metadata_jsonl_and_custom_extension(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    (tmp_path / "b.caption").write_text("from sidecar")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "from metadata"}) + "\n")
    items = scan_dataset(tmp_path, caption_extension=".caption")
    assert [(i.caption, i.repeats) for i in items] == [("from metadata", 1), ("from sidecar", 1)]


def test_missing_caption_is_an_error_or_falls_back_to_the_class_token(tmp_path: Path) -> None:
    _image(tmp_path / "5_luca_boy" / "a.png")
    with pytest.raises(LoratuneError, match=r"a\.png: no caption"):
        scan_dataset(tmp_path)
    assert scan_dataset(tmp_path, missing_caption="class_token")[0].caption == "luca boy"
    plain = tmp_path / "plain"
    _image(plain / "x.png")
    assert scan_dataset(plain, missing_caption="class_token", class_token="zed")[0].caption == "zed"
    with pytest.raises(LoratuneError, match="no class token"):
        scan_dataset(plain, missing_caption="class_token")


def test_bad_datasets_fail_before_training(tmp_path: Path) -> None:
    with pytest.raises(LoratuneError, match="dataset.path: not set"):
        scan_dataset(None)
    with pytest.raises(LoratuneError, match="folder not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty" / "10_x").mkdir(parents=True)
    with pytest.raises(LoratuneError, match="no training images"):
        scan_dataset(tmp_path / "empty")
    broken = tmp_path / "broken" / "1_x"
    broken.mkdir(parents=True)
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (broken / "a.txt").write_text("x")
    with pytest.raises(LoratuneError, match=r"a\.png"):
        scan_dataset(tmp_path / "broken")


def test_buckets_cover_aspect_ratios_within_the_area() -> None:
    sizes = bucket_sizes(512, step=64, min_side=256, max_side=1024)
    assert (512, 512) in sizes and (384, 640) in sizes and (640, 384) in sizes
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in sizes)
    assert assign_bucket(600, 1000, sizes) == (384, 640)
    assert assign_bucket(1000, 1000, sizes) == (512, 512)
    assert bucket_sizes(64, step=64, min_side=256, max_side=1024) == [(64, 64)]


def test_epoch_plan_repeats_items_and_keeps_buckets_apart() -> None:
    plan = plan_epoch([(3, (64, 64)), (2, (64, 96)), (1, (64, 64))], batch_size=2, seed=1)
    flat = sorted(i for batch in plan for i in batch)
    assert flat == [0, 0, 0, 1, 1, 2]
    for batch in plan:
        assert len({1 if i == 1 else 0 for i in batch}) == 1  # item 1 never shares a batch with the others
    assert plan == plan_epoch([(3, (64, 64)), (2, (64, 96)), (1, (64, 64))], batch_size=2, seed=1)


def test_caption_shuffle_keeps_leading_tokens() -> None:
    rng = random.Random(0)
    caption = "luca boy, curly hair, green shirt, beach, smiling"
    seen = {process_caption(caption, True, 1, ",", rng) for _ in range(30)}
    assert len(seen) > 1
    for text in seen:
        tokens = text.split(", ")
        assert tokens[0] == "luca boy" and sorted(tokens) == sorted(caption.split(", "))
    assert process_caption(caption, False, 1, ",", rng) == caption
