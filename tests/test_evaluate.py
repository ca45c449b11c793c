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
    # The standard error is the bootstrap over exactly these per-image values, normalised as the axes are.
    from loratune.metrics.composite import composite_se, normalise

    def norm(axis):
        n = scores["axes"][axis]["normalisation"]
        return lambda v: normalise(v, n["range"][0], n["range"][1], n["higher_is_better"])

    per_image = {a: [float(r[f"{a}_raw"]) if r[f"{a}_raw"] else None for r in rows] for a in used}
    assert scores["composite_se"] > 0 and f"± {scores['composite_se']:.3f}" in out
    assert scores["composite_se"] == pytest.approx(composite_se(per_image, {a: norm(a) for a in used}, used))


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


def _noise_image(seed: int) -> Image.Image:
    import numpy as np

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (96, 96, 3), dtype=np.uint8))


def _identity_evaluator(tiny_models, face_refs: bool, face: dict | None = None, fallback: dict | None = None):
    """An evaluator scoring only consistency with the tiny insightface (+ CLIP-I fallback); references with faces
    (the tiny references) or without (noise)."""
    from loratune.config import BackendConfig, load_config
    from loratune.evaluation import Evaluator
    from loratune.metrics.base import References

    consistency = BackendConfig(name="insightface", model=str(tiny_models.arcface),
                                detector=str(tiny_models.face_detector),
                                fallback={"name": "clip_i", "model": str(tiny_models.open_clip), **(fallback or {})},
                                **(face or {}))
    config = load_config(tiny_models.config, [f"evaluation.backends.{a}=null"
                                              for a in ("alignment", "aesthetics", "quality", "diversity")])
    config.evaluation.backends["consistency"] = consistency
    refs_dir = tiny_models.references / "lucaboy"
    refs = ([Image.open(p).convert("RGB") for p in sorted(refs_dir.glob("*.png"))] if face_refs
            else [_noise_image(20), _noise_image(21)])
    return Evaluator(config, references=References(images={"lucaboy": refs}), show_progress=False)


def _face_samples(tiny_models):
    from loratune.records import Sample

    # The tiny references: the tiny face detector finds a face in each of them.
    return [Sample(p, character="lucaboy") for p in sorted((tiny_models.references / "lucaboy").glob("*.png"))]


def test_fallback_identity_is_normalised_with_the_fallbacks_range(tiny_models, tmp_path):
    from loratune.metrics.registry import BACKENDS

    evaluator = _identity_evaluator(tiny_models, face_refs=False)
    result = evaluator.score(_face_samples(tiny_models))
    axis = result.axes["consistency"]
    raw = axis.value
    lo, hi = BACKENDS["clip_i"].norm_range
    assert axis.backend == "clip_i" and result.backends_used == {"consistency": "clip_i"}
    assert lo < raw < hi  # inside the range: the formula below is not hidden by clipping
    assert result.normalised["consistency"] == pytest.approx((raw - lo) / (hi - lo))
    assert result.normalised["consistency"] != pytest.approx(min(1.0, raw / BACKENDS["insightface"].norm_range[1]))
    assert result.composite == pytest.approx(result.normalised["consistency"])

    result.write(tmp_path)
    scores = json.loads((tmp_path / "scores.json").read_text())["axes"]["consistency"]
    assert scores["backend"] == "clip_i" and scores["details"]["fallback_from"] == "insightface"
    assert scores["normalisation"] == {"backend": "clip_i", "kind": "linear", "range": [lo, hi],
                                       "higher_is_better": True, "range_from": "registry"}
    rows = list(csv.DictReader(io.StringIO((tmp_path / "per_image.csv").read_text())))
    assert [float(r["consistency"]) for r in rows] == pytest.approx(
        [min(1.0, max(0.0, (float(r["consistency_raw"]) - lo) / (hi - lo))) for r in rows])


def test_norm_range_overrides_show_in_scores_json(tiny_models, tmp_path):
    # References without faces: the fallback's own norm_range override applies, the face backend's does not.
    evaluator = _identity_evaluator(tiny_models, face_refs=False, face={"norm_range": [0.2, 0.3]},
                                    fallback={"norm_range": [-1.0, 1.0]})
    result = evaluator.score(_face_samples(tiny_models))
    assert result.normalised["consistency"] == pytest.approx((result.axes["consistency"].value + 1.0) / 2.0)
    result.write(tmp_path / "fallback")
    scores = json.loads((tmp_path / "fallback" / "scores.json").read_text())
    assert scores["axes"]["consistency"]["normalisation"]["range"] == [-1.0, 1.0]
    assert scores["axes"]["consistency"]["normalisation"]["range_from"] == "config norm_range"
    face = next(b for b in scores["backends"] if b["axis"] == "consistency")
    assert face["identity_backend"]["backend"] == "clip_i" and face["normalisation"]["range"] == [0.2, 0.3]

    # References with faces: the face backend produces the number, under its override.
    evaluator = _identity_evaluator(tiny_models, face_refs=True, face={"norm_range": [-1.0, 1.0]})
    result = evaluator.score(_face_samples(tiny_models))
    assert result.backends_used == {"consistency": "insightface"}
    assert result.normalised["consistency"] == pytest.approx((result.axes["consistency"].value + 1.0) / 2.0)
    result.write(tmp_path / "face")
    norm = json.loads((tmp_path / "face" / "scores.json").read_text())["axes"]["consistency"]["normalisation"]
    assert norm["backend"] == "insightface" and norm["range_from"] == "config norm_range"


def test_check_evaluation_passes_the_tiny_config_without_loading_a_model(tiny_models):
    from loratune.config import load_config
    from loratune.evaluation import check_evaluation
    from loratune.metrics.cache import cached_keys

    config = load_config(tiny_models.config)
    before = set(cached_keys())
    check_evaluation(config)
    assert set(cached_keys()) == before


@pytest.mark.parametrize(
    "consistency, field, words",
    [
        ("{name: clip_i, model: open_clip, colour: red}", "consistency.colour", "Extra inputs are not permitted"),
        ("{name: clip_i, model: MISSING}", "consistency.model", "model path not found"),
        ("{name: dlib_face, min_detection_rate: 2}", "consistency.min_detection_rate", "less than or equal to 1"),
        ("{name: dlib_face, fallback: {name: clip_i, model: MISSING}}", "consistency.fallback.model", "not found"),
        ("{name: dlib_face, fallback: {name: clip_i, colour: red}}", "consistency.fallback.colour", "Extra inputs"),
        ("{name: dlib_face, fallback: {name: clipp}}", "consistency.fallback.name", "unknown backend 'clipp'"),
        ("{name: insightface, model: MISSING}", "consistency.model", "model path not found"),
    ],
)
def test_check_evaluation_names_the_bad_field(tiny_models, tmp_path, consistency, field, words):
    from loratune.config import load_config
    from loratune.errors import LoratuneError
    from loratune.evaluation import check_evaluation

    override = "evaluation.backends.consistency=" + consistency.replace("MISSING", str(tmp_path / "no-such-model"))
    config = load_config(tiny_models.config, [override])
    with pytest.raises(LoratuneError) as err:
        check_evaluation(config)
    msg = str(err.value)
    assert msg.startswith(f"evaluation.backends.{field}: ") and words in msg and "\n" not in msg, msg


def test_evaluation_dtype_auto_is_float32_on_cpu_and_bfloat16_on_a_bf16_gpu(tiny_models):
    import torch

    from loratune.config import Config, load_config
    from loratune.device import torch_dtype
    from loratune.evaluation import Evaluator

    assert Config().evaluation.dtype == "auto"
    assert torch_dtype("auto", torch.device("cpu")) is torch.float32
    assert torch_dtype("auto", torch.device("mps")) is torch.float32
    assert torch_dtype("float16", torch.device("cpu")) is torch.float32  # CPU kernels are float32
    config = load_config(tiny_models.config, ["evaluation.dtype=auto", "evaluation.device=cpu"])
    assert Evaluator(config, show_progress=False).runtime.dtype is torch.float32
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        assert torch_dtype("auto", torch.device("cuda")) is (torch.bfloat16 if bf16 else torch.float32)
