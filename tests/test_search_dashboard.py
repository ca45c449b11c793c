"""``loratune dashboard RUN``: optuna-dashboard on the run's SQLite study, answering on 127.0.0.1 only, stops cleanly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import sigint_default
from test_search_runner import BACKEND, TESTS, write_config

from loratune.cli import main
from loratune.config import load_config
from loratune.search.runner import run_optimize


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_dashboard_serves_the_run_on_loopback(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=2, phases={"refine_trials": 0, "ensemble_top_k": 0}))
    run_optimize(config, run, backend=BACKEND, say=lambda m: None)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from loratune.cli import main; sys.exit(main(sys.argv[1:]))",
                             "dashboard", str(run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=sigint_default)  # noqa: PLW1509  no Popen option resets SIGINT
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as resp:
                    studies = json.loads(resp.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.3)
        assert [s["study_name"] for s in studies["study_summaries"]] == ["loratune"]
        ip = _non_loopback_ip()
        if ip is not None:
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=2).close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_dashboard_refuses_a_folder_without_a_run(tmp_path, capsys) -> None:
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "not a loratune run directory" in capsys.readouterr().err
