"""The README and the example configs stay true: the metrics table matches the registry, every config validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from loratune.config import load_config, validate_config
from loratune.metrics.base import Runtime
from loratune.metrics.registry import BACKENDS, create_backend
from loratune.report import readme_table

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def test_readme_metrics_table_matches_the_registry():
    block = readme_table.current_block(README.read_text(encoding="utf-8"))
    assert block is not None, "README.md lost its metrics-table markers"
    assert block == readme_table.readme_block(), (
        "README.md's metrics table is out of date: run `python -m loratune.report.readme_table --write`")
    for name in BACKENDS:
        assert f"| `{name}` |" in block


@pytest.mark.parametrize("name", ["sd15.yaml", "sdxl.yaml"])
def test_example_configs_validate_with_real_hub_ids(name):
    config = load_config(REPO / "examples" / name)
    assert config.model.base in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0")
    assert config.model.family == ("sdxl" if "xl" in name else "sd15")
    assert set(config.sampling.prompts[0].text.split()) & {"luca"}
    for axis, backend in config.evaluation.backends.items():
        axis = getattr(axis, "value", axis)
        assert backend is not None, f"{name}: no backend for {axis}"
        # Building a backend validates its options and that it scores this axis; it loads nothing.
        built = create_backend(backend, Runtime(), axis)
        assert built.model_id and not Path(built.model_id).is_absolute(), f"{axis}: expected a hub id"
    assert config.search.n_trials >= 10 and config.search.phases.ensemble_top_k >= 2


def test_readme_yaml_snippets_validate():
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        validate_config(yaml.safe_load(block), base_dir=REPO)


def test_readme_names_every_command():
    from loratune.commands import COMMANDS

    text = README.read_text(encoding="utf-8")
    for name, *_ in COMMANDS:
        assert f"`loratune {name}" in text, name
