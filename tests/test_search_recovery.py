"""Crashes and concurrency: two resumers racing for one waiting trial, a kill between publishing a trial folder and
telling Optuna, leftovers of RUN/best, a baseline that lost every attempt, ``--resume --set``, one line per failed
trial and Ctrl-C in the CLI. Synthetic trial backend (tests/search_helpers.py) unless said otherwise."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import sigint_default
from optuna.trial import TrialState
from test_search_runner import BACKEND, TESTS, _run_script, interrupt_trial, study, tree_digest, write_config

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.search.runner import prepare_run, run_optimize
from loratune.search.space import baseline_params

SMALL = {"n_trials": 1, "phases": {"refine_trials": 0, "ensemble_top_k": 0}}


@pytest.fixture(autouse=True)
def _backend_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def _resume_script(run: Path) -> str:
    return (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
            "from loratune.search.runner import run_optimize\n"
            f"run_optimize(None, {str(run)!r}, resume=True, backend={BACKEND!r}, say=lambda m: None)\n")


def test_two_resumers_started_together_run_the_waiting_trial_once(tmp_path, monkeypatch) -> None:
    run = interrupt_trial(tmp_path, monkeypatch, 0, **SMALL)
    assert study(run).get_trials()[0].user_attrs["fail_reason"] == "interrupted"
    procs = [subprocess.Popen([sys.executable, "-c", _resume_script(run)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    trials = study(run).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # one retry, run once, no surplus
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].user_attrs["fail_reason"] is None
    assert sorted(p.name for p in (run / "trials").iterdir()) == ["0001", "partial"]
    assert (run / "best" / "best.json").is_file()


def test_a_kill_between_publishing_and_telling_is_not_rerun(tmp_path, monkeypatch) -> None:
    run, markers = tmp_path / "run", tmp_path / "markers"
    markers.mkdir()
    config = write_config(tmp_path / "c.yaml", **SMALL)
    monkeypatch.setenv("LORATUNE_TEST_MARKERS", str(markers))
    monkeypatch.setenv("LORATUNE_FAULT", "after-publish")
    proc = subprocess.run([sys.executable, "-c", _run_script(run, config)], stderr=subprocess.DEVNULL, timeout=180,
                          check=False)
    assert proc.returncode == -signal.SIGKILL
    published = tree_digest(run / "trials" / "0000")
    trained = sorted(p.name.rsplit("-", 1)[0] for p in markers.iterdir())
    assert study(run).get_trials()[0].state == TrialState.RUNNING  # Optuna never heard the outcome
    monkeypatch.delenv("LORATUNE_FAULT")
    messages: list[str] = []
    run_optimize(None, run, resume=True, backend=BACKEND, say=messages.append)
    trials = study(run).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    scores = json.loads((run / "trials" / "0000" / "scores.json").read_text())
    assert trials[1].value == scores["composite"] and trials[1].user_attrs["adopted_from"] == 0
    assert trials[1].user_attrs["trial_dir"] == "trials/0000"
    assert sorted(p.name.rsplit("-", 1)[0] for p in markers.iterdir()) == trained  # no epoch trained again
    assert tree_digest(run / "trials" / "0000") == published and not (run / "trials" / "0001").exists()
    assert any("its files are the result" in m for m in messages)


def test_resume_removes_best_leftovers_and_reenqueues_a_lost_baseline(tmp_path) -> None:
    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=2, max_retry=0,
                                      phases={"refine_trials": 0, "ensemble_top_k": 0}))
    prepare_run(run, config, resume=False)
    s = study(run)
    lost = s.ask()  # the enqueued baseline, taken by a worker that then died with its retries used up
    s.tell(lost, state=TrialState.FAIL)
    (run / ".best.tmpabc").mkdir()  # a copy to RUN/best killed half-way
    (run / ".best.tmpabc" / "lora.safetensors").write_bytes(b"half")
    messages: list[str] = []
    run_optimize(None, run, resume=True, backend=BACKEND, say=messages.append)
    trials = study(run).get_trials()
    baselines = [t for t in trials if t.user_attrs.get("phase") == "baseline" and t.state == TrialState.COMPLETE]
    assert len(baselines) == 1 and baselines[0].params == baseline_params(config, config.search.space)
    assert not list(run.glob(".best.*")) and (run / "best" / "best.json").is_file()
    assert "phase baseline: 1 trial lost to crashes after every retry (see trials/partial)" in messages


def test_resume_set_changes_only_what_keeps_finished_trials_meaning(tmp_path) -> None:
    run = tmp_path / "run"
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=2, phases={"refine_trials": 0, "ensemble_top_k": 0}))
    run_optimize(config, run, backend=BACKEND, say=lambda m: None)
    with pytest.raises(LoratuneError, match=r"--resume --set train.learning_rate: not allowed"):
        run_optimize(None, run, resume=True, backend=BACKEND, overrides=["train.learning_rate=1e-3"])
    with pytest.raises(LoratuneError, match=r"evaluation.weights.*epochs have been scored"):
        run_optimize(None, run, resume=True, backend=BACKEND, overrides=["evaluation.weights.alignment=1"])
    run_optimize(None, run, resume=True, backend=BACKEND, overrides=["search.n_trials=3"], say=lambda m: None)
    assert load_config(run / "config.yaml").search.n_trials == 3
    assert sum(1 for t in study(run).get_trials() if t.state.is_finished()) == 3


def test_a_failed_trial_is_one_line_not_a_traceback(tmp_path, capfd) -> None:
    from test_search_runner import FailingBackend

    run = tmp_path / "run"
    sys.modules[__name__].make_failing = FailingBackend
    config = load_config(write_config(tmp_path / "c.yaml", n_trials=4, sampler="random", pruner="none",
                                      phases={"refine_trials": 0, "ensemble_top_k": 0, "baseline": False}))
    messages: list[str] = []
    run_optimize(config, run, backend=f"{__name__}:make_failing", say=messages.append)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Trial " not in err
    failed = [t for t in study(run).get_trials() if t.state == TrialState.FAIL]
    assert failed and len([m for m in messages if " failed: " in m]) == len(failed)
    assert all("\n" not in m for m in messages)


def test_unknown_backend_stops_before_the_first_trial(tmp_path) -> None:
    path = write_config(tmp_path / "c.yaml", **SMALL)
    with pytest.raises(LoratuneError, match=r"evaluation.backends.quality.*piqee"):
        load_config(path, ["evaluation.backends.quality.name=piqee"])


@pytest.mark.slow
def test_ctrl_c_in_the_cli_says_how_to_resume(tiny_models, tmp_path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "loratune.cli", "optimize", str(tiny_models.config), "--run",
                             str(run), "--set", "search.n_trials=1", "--set", "train.epochs=50"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=sigint_default)  # noqa: PLW1509  no Popen option resets SIGINT
    deadline = time.monotonic() + 180
    while not (run / "trials").is_dir() or not any((run / "trials").glob(".0000.*/checkpoints")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"loratune: interrupted — resume with: loratune optimize --run {run} --resume" in err
    assert "Traceback" not in err
    assert optuna.load_study(study_name="loratune", storage=f"sqlite:///{run / 'study.db'}").get_trials()[0] \
        .user_attrs["fail_reason"] == "interrupted"
