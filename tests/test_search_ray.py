"""``--backend ray`` on local Ray with 2 CPUs (synthetic trial backend: this tests the Ray plumbing — ASHA, the
searcher fix, folders, phases — not training): ASHA-stopped trials reach Optuna as PRUNED, never as COMPLETE."""

from __future__ import annotations

import os

import pytest
from optuna.trial import TrialState
from test_search_runner import BACKEND, TESTS, study, write_config

from loratune.config import load_config
from loratune.search.ray_backend import run_ray

pytestmark = pytest.mark.slow


def test_ray_backend_asha_prunes_and_phases(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.syspath_prepend(str(TESTS))
    config_file = write_config(tmp_path / "c.yaml", n_trials=7,
                               space={"learning_rate": {"type": "float", "low": 5e-5, "high": 5e-4, "log": True},
                                      "rank": {"type": "categorical", "choices": [4, 8, 16]},
                                      "epochs": {"type": "int", "low": 3, "high": 4}},
                               phases={"refine_trials": 2, "ensemble_top_k": 2},
                               ray={"num_cpus": 2, "cpus_per_trial": 1, "max_concurrent": 2, "reduction_factor": 2})
    run = tmp_path / "run"
    best = run_ray(load_config(config_file), run, backend=BACKEND)
    trials = study(run).get_trials()
    phases = [t.user_attrs.get("phase") for t in trials]
    assert phases.count("baseline") == 1 and phases.count("refine") == 2 and phases[-1] == "ensemble"
    assert phases.count("search") == 4
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    assert stopped, [t.state for t in trials]
    for t in trials:
        if t.user_attrs["phase"] == "ensemble":
            continue
        epochs_run = len(t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            # Only trials that ran every epoch are COMPLETE, valued at their best epoch.
            assert epochs_run == t.params["epochs"]
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
        else:
            assert t.state == TrialState.PRUNED and epochs_run < t.params["epochs"]
        assert (run / t.user_attrs["trial_dir"] / "scores.json").is_file()
    assert not list((run / "trials").glob(".*"))
    assert best is not None and (run / "best" / "best.json").is_file()


def test_ray_restore_after_the_driver_is_killed(tmp_path, monkeypatch) -> None:
    import signal
    import subprocess
    import sys
    import time

    from test_search_runner import tree_digest

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0.5")
    monkeypatch.setenv("LORATUNE_TEST_MARKERS", str(markers))
    monkeypatch.syspath_prepend(str(TESTS))
    config_file = write_config(tmp_path / "c.yaml", n_trials=5, pruner="none",
                               phases={"refine_trials": 1, "ensemble_top_k": 0},
                               ray={"num_cpus": 2, "cpus_per_trial": 1, "max_concurrent": 1})
    run = tmp_path / "run"
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "from loratune.config import load_config\nfrom loratune.search.ray_backend import run_ray\n"
              f"run_ray(load_config({str(config_file)!r}), {str(run)!r}, backend={BACKEND!r})\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(markers.glob("0002-epoch2-*")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(2)
    killed = study(run).get_trials()
    before = {t.number: (t.values, tree_digest(run / t.user_attrs["trial_dir"])) for t in killed if t.state.is_finished()}
    assert before and killed[2].state == TrialState.RUNNING
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0")
    run_ray(None, run, resume=True, backend=BACKEND)
    after = study(run).get_trials()
    assert all(t.state.is_finished() for t in after)
    for number, (values, digest) in before.items():
        assert after[number].values == values and tree_digest(run / after[number].user_attrs["trial_dir"]) == digest
    assert after[2].state == TrialState.FAIL and not (run / "trials" / "0002").exists()
    retry = [t for t in after if t.number > 2 and t.params == killed[2].params]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert (run / retry[0].user_attrs["trial_dir"] / "scores.json").is_file()
    phases = [t.user_attrs.get("phase") for t in after if t.state != TrialState.FAIL]
    assert phases.count("baseline") + phases.count("search") == 4 and phases.count("refine") == 1
    assert not list((run / "trials").glob(".*"))


def test_searcher_tells_optuna_only_real_outcomes(tmp_path) -> None:
    """The searcher alone (no Tune run): an all-missing trial fails and reports nothing, never 0; a trial ASHA stopped
    is PRUNED; only a trial that ran to its last epoch is COMPLETE, valued at its best epoch."""
    import functools

    import optuna

    from loratune.search.config import ParamSpec, SearchSection
    from loratune.search.ray_backend import _define_by_run, _searcher_class
    from loratune.search.trial import NO_COMPOSITE
    from loratune.search.storage import open_storage

    storage = open_storage(tmp_path, SearchSection(), heartbeat=False)
    optuna.create_study(storage=storage, study_name="loratune")
    space = {"x": ParamSpec(type="float", low=0, high=1)}
    searcher = _searcher_class()(space=functools.partial(_define_by_run, space=space), metric="composite", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0), study_name="loratune",
                                 storage=storage, run_dir=str(tmp_path), phase="search")
    for trial_id in ("unscored", "finished", "stopped"):
        assert searcher.suggest(trial_id) is not None
    curve = {1: 0.5, 2: 0.75}
    for epoch in (1, 2):
        done = epoch == 2
        searcher.on_trial_result("unscored", {"composite": 0.0, "scored": False, "epoch": epoch, "complete": done})
        searcher.on_trial_result("finished", {"composite": curve[epoch], "scored": True, "epoch": epoch,
                                              "best_composite": curve[epoch], "complete": done})
    searcher.on_trial_complete("unscored", {"composite": 0.0, "scored": False, "epoch": 2, "complete": True})
    searcher.on_trial_complete("finished", {"composite": 0.75, "scored": True, "epoch": 2, "best_composite": 0.75,
                                            "complete": True})
    # ASHA stops "stopped" on its first result: that result reaches only on_trial_complete.
    searcher.on_trial_complete("stopped", {"composite": 0.25, "scored": True, "epoch": 1, "best_composite": 0.25,
                                           "complete": False})
    unscored, finished, stopped = optuna.load_study(study_name="loratune", storage=storage).get_trials()
    assert unscored.state == TrialState.FAIL and unscored.intermediate_values == {}
    assert unscored.user_attrs["fail_reason"] == NO_COMPOSITE
    assert finished.state == TrialState.COMPLETE and finished.value == 0.75 and finished.intermediate_values == curve
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.25}
