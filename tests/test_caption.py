"""``loratune caption``: the caption rule (exact), each captioner's pipeline against its library's reference usage, and
the command on a dataset (writes what is missing, keeps the rest, the audit's caption checks pass afterwards)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratune.caption.compose import fit, is_identity_tag, prose_caption, strip_identity, tag_caption
from loratune.cli import main
from loratune.config import load_config

TRAITS = ["curly brown hair", "a teal shirt"]


def words(text: str) -> int:
    return len(text.split())


# --- the caption rule -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("said", "caption"),
    [
        ("A boy with curly brown hair and a teal shirt, standing on a beach.", "lucaboy, a boy, standing on a beach"),
        ("The image shows a young boy wearing a teal shirt and red shorts. He has curly brown hair.",
         "lucaboy, the image shows a young boy wearing red shorts"),
        ("A close-up of a boy with Curly Brown Hair sitting in a field at night",
         "lucaboy, a close-up of a boy sitting in a field at night"),
        ("curly brown hair", "lucaboy"),
        ("a boy\x13 on a\ufffd beach", "lucaboy, a boy on a beach"),
    ],
)
def test_prose_caption_puts_the_trigger_first_and_drops_the_traits(said: str, caption: str) -> None:
    assert prose_caption("lucaboy", said, TRAITS) == caption


def test_tag_caption_drops_body_tags_and_trait_tags_keeps_clothing_and_scene() -> None:
    tags = ["1boy", "curly_hair", "brown_hair", "green_eyes", "teal_shirt", "red_shorts", "beach", "^_^", "solo",
            "beach"]
    assert tag_caption("lucaboy", tags, TRAITS) == "lucaboy, 1boy, red shorts, beach, ^_^, solo"
    assert is_identity_tag("dark-skinned_male") and is_identity_tag("freckles") and not is_identity_tag("shirt")
    assert strip_identity("Curly brown hair, standing", TRAITS) == ", standing"


def test_fit_keeps_the_longest_prefix_within_the_budget_and_always_the_trigger() -> None:
    assert fit(["t", "a b", "c d e", "f"], 4, words) == "t, a b"
    assert fit(["t", "a b c d e"], 2, words) == "t"
    assert fit(["t", "", "a"], 9, words) == "t, a"
    long = tag_caption("lucaboy", [f"tag{i}" for i in range(200)], [])
    from loratune.audit.checks import clip_token_count

    assert 70 <= clip_token_count(long) <= 77 and long.startswith("lucaboy, tag0, tag1")


# --- each backend's pipeline ----------------------------------------------------------------------------------------
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 255, (40, 90, 3), dtype=np.uint8))
    transparent = Image.fromarray(rng.integers(0, 255, (70, 50, 4), dtype=np.uint8), "RGBA")
    return [wide, transparent.convert("RGB"), transparent]


def captioner(tiny_models, backend: str, model: str):
    from loratune.caption.registry import create_captioner

    cfg = load_config(tiny_models.config, [f"caption.backend={backend}", f"caption.model={model}"])
    made = create_captioner(cfg)
    made.load()
    return made


def test_wd14_tagger_reads_the_onnx_model_as_the_reference_app_does(tiny_models) -> None:
    """Upstream's wd-tagger app: alpha on white, white square padding, bicubic resize, BGR float 0-255; thresholds
    on the general tags only."""
    import csv

    import onnxruntime as ort

    tagger = captioner(tiny_models, "wd14", str(tiny_models.tagger))
    session = ort.InferenceSession(str(tiny_models.tagger / "model.onnx"), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    batch = []
    for image in images():
        canvas = Image.new("RGBA", image.size, (255, 255, 255))
        canvas.alpha_composite(image.convert("RGBA"))
        rgb = canvas.convert("RGB")
        side = max(rgb.size)
        padded = Image.new("RGB", (side, side), (255, 255, 255))
        padded.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
        batch.append(np.asarray(padded.resize((size, size), Image.BICUBIC), dtype=np.float32)[:, :, ::-1])
    expected = session.run(None, {session.get_inputs()[0].name: np.stack(batch)})[0]
    np.testing.assert_allclose(tagger.probabilities(images()), expected, rtol=0, atol=1e-6)
    with (tiny_models.tagger / "selected_tags.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for probs, tags in zip(expected, tagger.describe(images())):
        general = [(p, r["name"]) for r, p in zip(rows, probs) if r["category"] == "0" and p > 0.35]
        assert tags == [name for _, name in sorted(general, key=lambda pair: -pair[0])]
        assert tags and not {"general", "sensitive", "luca_paguro"} & set(tags)


def test_florence2_captions_like_the_model_cards_usage(tiny_models) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    florence = captioner(tiny_models, "florence2", str(tiny_models.florence2))
    processor = AutoProcessor.from_pretrained(tiny_models.florence2)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models.florence2).eval()
    expected = []
    for image in images():  # one image at a time, as the model card does
        inputs = processor(text="<DETAILED_CAPTION>", images=image, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=96, num_beams=3, do_sample=False)
        expected.append(processor.batch_decode(out, skip_special_tokens=True)[0].strip())
    assert florence.describe(images()) == expected and all(expected)


def test_vlm_captioner_is_the_vqascore_model_generating(tiny_models) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from loratune.caption.vlm import QUESTION

    cfg = load_config(tiny_models.config, ["caption.backend=vlm"])
    cfg.caption.model = None
    from loratune.caption.registry import create_captioner

    vlm = create_captioner(cfg)
    assert vlm.model_id == cfg.evaluation.backends["alignment"].model  # the configured VQAScore model
    vlm.load()
    processor = AutoProcessor.from_pretrained(tiny_models.vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models.vlm).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    expected = []
    for image in images()[:2]:
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=60, do_sample=False)
        expected.append(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0])
    assert vlm.describe(images()[:2]) == [e.strip() for e in expected]


# --- the command ----------------------------------------------------------------------------------------------------
@pytest.fixture
def uncaptioned(small_dataset_factory, tmp_path: Path) -> Path:
    """Two images per character: one caption missing, one empty, per folder."""
    root = tmp_path / "train"
    shutil.copytree(small_dataset_factory(2), root)
    for folder in root.iterdir():
        first, second = sorted(folder.glob("*.txt"))
        first.unlink()
        second.write_text("  \n")
    return root


def captions(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*.txt"))}


def test_caption_command_writes_missing_captions_that_pass_the_audit(tiny_models, uncaptioned, capsys) -> None:
    from loratune.audit import AuditOptions, run_audit

    config = str(tiny_models.config)
    assert main(["caption", str(uncaptioned), "-c", config, "--dry-run"]) == 0
    assert "would write 4 captions" in capsys.readouterr().out and len(captions(uncaptioned)) == 2  # empty ones only
    assert main(["caption", str(uncaptioned), "-c", config]) == 0
    out = capsys.readouterr().out
    written = captions(uncaptioned)
    assert len(written) == 4 and "stand-in" in out and "wrote 4 captions, kept 0" in out
    for name, text in written.items():
        token = name.split("/")[0].split("_", 1)[1]
        assert text.startswith(f"{token}, ") and text.endswith("\n") and text.count("\n") == 1
        assert "hair" not in text  # the tiny tagger's hair tags are identity
    cfg = load_config(config)
    audit = run_audit(uncaptioned, cfg, AuditOptions(alignment=False, embeddings=False, faces=False))
    assert audit.data["summary"]["caption_problems"] == 0
    assert not [p for f in audit.flagged for p in f["problems"] if "caption" in p]

    # A second run keeps every caption; --overwrite writes them again (same model, same captions).
    hand = uncaptioned / "1_lucaboy" / "0000.txt"
    hand.write_text("lucaboy, by hand\n")
    assert main(["caption", str(uncaptioned), "-c", config]) == 0
    assert "wrote 0 captions, kept 4" in capsys.readouterr().out and hand.read_text() == "lucaboy, by hand\n"
    assert main(["caption", str(uncaptioned), "-c", config, "--overwrite"]) == 0
    assert "overwritten" in capsys.readouterr().out and captions(uncaptioned) == written


def test_caption_stops_on_bad_input_with_one_line_and_writes_nothing(tiny_models, uncaptioned, tmp_path, capsys):
    config = str(tiny_models.config)
    broken = uncaptioned / "1_lucaboy" / "0005.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = captions(uncaptioned)
    assert main(["caption", str(uncaptioned), "-c", config]) == 2
    err = capsys.readouterr().err
    assert "0005.png" in err and err.count("\n") == 1 and captions(uncaptioned) == before

    plain = tmp_path / "plain"  # two characters in the config, no kohya folders: whose trigger is it?
    plain.mkdir()
    shutil.copy(next((uncaptioned / "1_lucaboy").glob("0000.png")), plain / "a.png")
    assert main(["caption", str(plain), "-c", config]) == 2
    assert "--trigger" in capsys.readouterr().err and not list(plain.glob("*.txt"))
    assert main(["caption", str(plain), "-c", config, "--trigger", "lucaboy"]) == 0
    assert (plain / "a.txt").read_text().startswith("lucaboy, ")
    assert main(["caption", str(plain), "-c", config, "--set", "caption.general_threshold=2"]) == 2
    assert "caption.general_threshold" in capsys.readouterr().err
