"""Typed config: defaults validate, overrides apply, errors name the field and the bad value."""

from __future__ import annotations

import pytest

from loratune.config import SEED_WEIGHTS, apply_override, load_config
from loratune.errors import LoratuneError


def test_defaults_have_seed_weights():
    cfg = load_config()
    assert dict(cfg.evaluation.weights) == SEED_WEIGHTS
    assert cfg.evaluation.backends["alignment"].name == "vqascore"


def test_override_parses_yaml_values():
    cfg = load_config(None, ["evaluation.batch_size=3", "sampling.seeds=[5, 6]", "evaluation.trust_remote_code=true"])
    assert cfg.evaluation.batch_size == 3 and cfg.sampling.seeds == [5, 6] and cfg.evaluation.trust_remote_code


def test_error_names_field_and_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluation:\n  batch_size: lots\n")
    with pytest.raises(LoratuneError) as err:
        load_config(path)
    msg = str(err.value)
    assert "evaluation.batch_size" in msg and "'lots'" in msg and "\n" not in msg


@pytest.mark.parametrize(
    "override, words",
    [
        ("evaluation.weights.alignment=-1", "evaluation.weights"),
        ("sampling.width=500", "multiple of 8"),
        ("evaluation.device=tpu", "evaluation.device"),
        ("nonsense.key=1", "nonsense"),
        ("evaluation.backends.alignment.norm_range=[5, 1]", "norm_range"),
    ],
)
def test_bad_values_rejected(override, words):
    with pytest.raises(LoratuneError, match=words):
        load_config(None, [override])


def test_unknown_character_in_prompt(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sampling:\n  prompts:\n    - {text: 'a boy', character: luca}\n")
    with pytest.raises(LoratuneError, match="unknown character 'luca'"):
        load_config(path)


def test_relative_paths_resolve_against_config(tmp_path):
    (tmp_path / "models" / "sd").mkdir(parents=True)
    path = tmp_path / "c.yaml"
    path.write_text("model: {base: models/sd}\ndataset: {path: data}\n")
    cfg = load_config(path)
    assert cfg.model.base == str(tmp_path / "models" / "sd")
    assert cfg.dataset.path == str(tmp_path / "data")
    assert load_config(None, ["model.base=org/model"]).model.base == "org/model"  # hub ids stay hub ids


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(LoratuneError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(LoratuneError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(LoratuneError, match="KEY=VALUE"):
        apply_override({}, "novalue")


def test_backend_options_naming_files_resolve_next_to_config(tmp_path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "faces").mkdir()
    (tmp_path / "faces" / "det.onnx").write_bytes(b"")
    path = tmp_path / "c.yaml"
    path.write_text(
        "evaluation:\n  backends:\n"
        "    aesthetics: {name: laion_aesthetic, clip_model: clip, pretrained: openai}\n"
        "    consistency: {name: insightface, detector: faces/det.onnx, fallback: {name: clip_i, model: clip}}\n"
    )
    backends = load_config(path).evaluation.backends
    assert backends["aesthetics"].options() == {"clip_model": str(tmp_path / "clip"), "pretrained": "openai"}
    options = backends["consistency"].options()
    assert options["detector"] == str(tmp_path / "faces" / "det.onnx")
    assert options["fallback"] == {"name": "clip_i", "model": str(tmp_path / "clip")}
    assert backends["consistency"].name == "insightface"


def test_unknown_backend_name_fails_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("evaluation:\n  backends:\n    quality: {name: piqee}\n")
    with pytest.raises(LoratuneError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith("config error: evaluation.backends.quality.name: unknown backend 'piqee' (known: ")
    assert "piqe, " in msg and "\n" not in msg and msg.count("piqee") == 1
    with pytest.raises(LoratuneError, match=r"evaluation\.backends: quality: backend 'clip_i' scores consistency"):
        load_config(None, ["evaluation.backends.quality=clip_i"])


def test_config_import_does_not_import_torch():
    import subprocess
    import sys

    # The backend table checks names at config load; reading it must stay cheap.
    code = "import sys, loratune.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
