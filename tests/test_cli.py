"""The command line: fast help without torch, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

from loratune.cli import main


def test_help_does_not_import_torch():
    code = "import sys; from loratune.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "evaluate" in out.stdout


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
