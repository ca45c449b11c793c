"""``--backend ray`` on local Ray with 2 CPUs (synthetic trial backend: this tests the Ray plumbing — ASHA, the
searcher fix, folders, phases — not training): ASHA-stopped trials reach Optuna as PRUNED, never as COMPLETE."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from loratune.config import load_config
from loratune.search.ray_backend import run_ray
from test_search_runner import BACKEND, TESTS, study, write_config

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
