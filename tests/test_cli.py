"""The command line: fast help without torch, one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loratune.cli import main
from loratune.commands import COMMANDS

HEAVY = ("torch", "diffusers", "transformers", "numpy", "PIL", "optuna", "rich")


@pytest.mark.parametrize("argv", [["--help"], *([name, "-h"] for name, _, _ in COMMANDS)], ids=" ".join)
def test_help_imports_nothing_heavy_and_shows_flags_plainly(argv):
    code = (f"import sys; from loratune.cli import main; main({argv!r}); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "COLUMNS": "80"})
    assert out.returncode == 0, out.stderr
    *help_lines, imported = out.stdout.strip().splitlines()
    assert imported == "[]"
    assert "<bool>" not in out.stdout and "<list[str]>" not in out.stdout  # flags take no value
    assert not any(line.rstrip().endswith("...") for line in help_lines if not line.startswith("Usage:"))  # no summary cut mid-sentence
    assert max(len(line) for line in help_lines) <= 80


@pytest.mark.parametrize(("outside", "inside"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_sets_the_runtime_environment_unless_the_user_did(outside, inside):
    code = ("import os, sys; from loratune.cli import main; main(['--version']); "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ['TOKENIZERS_PARALLELISM'], "
            "os.environ['RAY_USAGE_STATS_ENABLED'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM", "RAY_USAGE_STATS_ENABLED")}
    if outside is not None:
        env["OMP_WAIT_POLICY"] = outside
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-4:] == [inside, "false", "0", "False"]  # set before torch could read it


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    code = main(["evaluate", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "not found" in err and "Traceback" not in err


def test_bad_config_value_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("evaluation:\n  weights: {alignment: -2}\n")
    (tmp_path / "imgs").mkdir()
    code = main(["evaluate", str(tmp_path / "imgs"), "--config", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "evaluation.weights" in err and "\n" not in err


def test_usage_error_exit_2(capsys):
    assert main(["evaluate"]) == 2


@pytest.mark.parametrize(("flags", "library_speaks"), [([], False), (["-v"], True)])
def test_any_librarys_warning_is_quiet_unless_verbose_and_ours_always_shows(flags, library_speaks):
    # A library nobody named, logging at WARNING when it is imported (kernels did, with transformers 5.25).
    code = ("import logging, sys; from loratune.cli import main; main([*sys.argv[1:], '--version']); "
            "logging.getLogger('some_new_library.hub').warning('library notice'); "
            "logging.getLogger('loratune.train.data').warning('our warning')")
    env = {k: v for k, v in os.environ.items() if k != "LORATUNE_VERBOSE"}
    out = subprocess.run([sys.executable, "-c", code, *flags], check=False, capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert ("library notice" in out.stderr) is library_speaks
    assert "our warning" in out.stderr
