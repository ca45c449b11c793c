"""``--backend ray`` on local Ray with 2 CPUs (synthetic trial backend: this tests the Ray plumbing — actors running
the local worker loop, placement, restore — not training)."""

from __future__ import annotations

import os

import pytest
from optuna.trial import TrialState
from test_search_runner import BACKEND, TESTS, study, write_config

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.search.ray_backend import run_ray


@pytest.mark.slow
def test_ray_workers_run_the_phases_with_one_backend_each(tmp_path, monkeypatch) -> None:
    """Three Ray workers on 2 CPUs: at most two trials run at once, each worker loads its backend once (the driver
    once more, for the pre-flight check), the phases and pruning are the local runner's, the ensemble runs in an
    actor, and the third worker, waiting for a slot, is never started: the first slot frees when the study is done."""
    loads = tmp_path / "loads"
    loads.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("LORATUNE_TEST_EPOCH_SECONDS", "0.3")
    monkeypatch.setenv("LORATUNE_TEST_LOADS", str(loads))
    monkeypatch.syspath_prepend(str(TESTS))
    config_file = write_config(tmp_path / "c.yaml", n_trials=7,
                               space={"learning_rate": {"type": "float", "low": 5e-5, "high": 5e-4, "log": True},
                                      "rank": {"type": "categorical", "choices": [4, 8, 16]},
                                      "epochs": {"type": "int", "low": 3, "high": 4}},
                               phases={"refine_trials": 2, "ensemble_top_k": 2},
                               ray={"num_cpus": 2, "cpus_per_trial": 1})
    run = tmp_path / "run"
    best = run_ray(load_config(config_file), run, backend=BACKEND, workers=3)
    trials = study(run).get_trials()
    phases = [t.user_attrs.get("phase") for t in trials]
    assert phases.count("baseline") == 1 and phases.count("search") == 4 and phases.count("refine") == 2
    assert phases[-1] == "ensemble" and len(trials) == 8
    assert any(t.state == TrialState.PRUNED for t in trials), [t.state for t in trials]
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), t.user_attrs.get("fail_reason")
        assert (run / t.user_attrs["trial_dir"] / "scores.json").is_file()
        if t.state == TrialState.COMPLETE and t.user_attrs["phase"] != "ensemble":
            assert len(t.intermediate_values) == t.params["epochs"]
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
    pids = sorted(int(p.name.split("-")[0]) for p in loads.iterdir())
    assert len(pids) == len(set(pids)) == 3 and os.getpid() in pids  # one backend per process, never reloaded
    workers = {t.user_attrs["worker_pid"] for t in trials}
    assert len(workers) == 2 and workers <= set(pids) - {os.getpid()}
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most == 2  # two workers ran trials side by side, never a third: the cluster holds two CPUs
    assert not list((run / "trials").glob(".*"))
    assert best is not None and (run / "best" / "best.json").is_file()


def test_an_actor_takes_its_share_of_the_cores() -> None:
    """An environment's OMP_NUM_THREADS (meant for one process on the whole machine) does not reach an actor's torch:
    it gets the threads it asked CPUs for, and OpenMP waits passively; a torch already loaded is told too."""
    import subprocess
    import sys

    script = ("import os, sys\nfrom loratune.search.ray_backend import cpu_share\nassert 'torch' not in sys.modules\n"
              "cpu_share(1)\nimport torch\nprint(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])\n"
              "cpu_share(2)\nprint(torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"OMP_NUM_THREADS": "8"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "PASSIVE", "2"]


def test_ray_section_refuses_the_old_asha_settings(tmp_path) -> None:
    with pytest.raises(LoratuneError, match="search.ray.grace_period is no longer read"):
        load_config(write_config(tmp_path / "c.yaml", ray={"grace_period": 2}))
    # A run folder written with the Tune backend holds its defaults in config.yaml: it still resumes.
    config = load_config(write_config(tmp_path / "old.yaml", ray={"grace_period": 1, "reduction_factor": 3}))
    assert "grace_period" not in config.search.ray.model_dump()


@pytest.mark.slow
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
        # The driver, the local Ray it started and the Ray worker running trial 2 (its own process group): all at once,
        # as a crash of the machine would.
        os.kill(int(next(markers.glob("0002-epoch2-*")).name.rsplit("-", 1)[1]), signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
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


@pytest.mark.slow
def test_a_dead_ray_worker_is_restarted_then_reported(tmp_path, monkeypatch) -> None:
    """A Ray worker killed right after publishing a trial, before Optuna heard of it, is restarted and goes on, up to
    ``search.max_retry`` times; then ``run_ray`` says so, and a resume adopts the published folders (no retraining)."""
    from test_search_runner import tree_digest

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("LORATUNE_TEST_MARKERS", str(markers))
    monkeypatch.setenv("LORATUNE_FAULT", "after-publish")
    monkeypatch.syspath_prepend(str(TESTS))
    config_file = write_config(tmp_path / "c.yaml", n_trials=4, max_retry=1, pruner="none",
                               phases={"refine_trials": 0, "ensemble_top_k": 0}, ray={"num_cpus": 2, "max_concurrent": 1})
    run = tmp_path / "run"
    with pytest.raises(LoratuneError, match=r"1 Ray worker\(s\) stopped .*resume with --resume"):
        run_ray(load_config(config_file), run, backend=BACKEND)
    published = {p.name: tree_digest(p) for p in (run / "trials").iterdir() if p.name.isdigit()}
    trained = sorted(p.name for p in markers.iterdir())
    assert len(published) == 2  # the first life and the restarted one each published a trial, then died
    monkeypatch.delenv("LORATUNE_FAULT")
    run_ray(None, run, resume=True, backend=BACKEND)
    trials = study(run).get_trials()
    assert all(t.state.is_finished() for t in trials)
    assert sum(1 for t in trials if t.state == TrialState.COMPLETE) == 4
    for name, digest in published.items():
        owners = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs["trial_dir"] == f"trials/{name}"]
        assert len(owners) == 1 and owners[0].user_attrs["adopted_from"] == int(name)
        assert tree_digest(run / "trials" / name) == digest
    assert sorted(p.name for p in markers.iterdir() if p.name[:4] in published) == \
        [m for m in trained if m[:4] in published]  # no epoch of a published trial trained again
