"""``--backend ray`` on a real two-node Ray cluster (``ray start --head`` and ``ray start --address``, each node with
its own CPUs and custom resources; tests/ray_cluster.py) and a real PostgreSQL study: one actor per node, and the
trial of a node that is killed is retried on the other. Synthetic trial backend: this tests the placement and the
recovery, not training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest
from conftest import wait_for
from optuna.trial import TrialState
from ray_cluster import RayCluster
from test_search_postgres import pg_study
from test_search_runner import BACKEND, TESTS, write_config

from loratune.search.phases import counted

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_cluster(tmp_path):
    # A Ray worker gets its environment from its node's ``ray start``, not from the driver.
    (tmp_path / "markers").mkdir()
    cluster = RayCluster(env={"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
                              "LORATUNE_TEST_EPOCH_SECONDS": "0.5", "LORATUNE_TEST_MARKERS": str(tmp_path / "markers")})
    try:
        # One CPU and one "trainer" per node: a worker asks for both, so each node runs one.
        cluster.start_node("head", "127.0.0.2", cpus=1, resources={"trainer": 1})
        cluster.start_node("b", "127.0.0.3", cpus=1, resources={"trainer": 1, "node_b": 1})
        yield cluster
    finally:
        cluster.stop()


def test_one_actor_per_node_and_a_killed_nodes_trial_is_retried(ray_cluster, postgres_url, tmp_path) -> None:
    markers = tmp_path / "markers"
    config = write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=5, pruner="none", backend="ray",
                          heartbeat_interval=1, grace_period=4, phases={"refine_trials": 1, "ensemble_top_k": 0},
                          ray={"address": ray_cluster.address, "cpus_per_trial": 1, "resources": {"trainer": 1},
                               "max_concurrent": 2})
    run = tmp_path / "run"
    script = ("from loratune.config import load_config\nfrom loratune.search.ray_backend import run_ray\n"
              f"run_ray(load_config({str(config)!r}), {str(run)!r}, backend={BACKEND!r})\n")
    driver = subprocess.Popen([sys.executable, "-c", script], env=ray_cluster.env, stderr=subprocess.PIPE, text=True)
    node_b = psutil.Process(ray_cluster.nodes["b"].pid)
    try:
        def second_epoch_on_b() -> str | None:  # a trial in its second epoch in an actor of node b
            assert driver.poll() is None, driver.stderr.read()
            on_b = {p.pid for p in node_b.children(recursive=True)}
            return next((m.name for m in markers.glob("*-epoch2-*") if int(m.name.rsplit("-", 1)[1]) in on_b), None)

        marker = wait_for(second_epoch_on_b, 300, "node b to run a trial's second epoch", poll=0.05)
        ray_cluster.kill_node("b")
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err

    trials = pg_study(postgres_url).get_trials()
    assert all(t.state.is_finished() for t in trials)
    killed = trials[int(marker[:4])]
    assert killed.state == TrialState.FAIL and killed.user_attrs.get("fail_reason") is None
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    nodes = {t.user_attrs["ray_node"] for t in trials}
    assert len(nodes) == 2 and retry.user_attrs["ray_node"] != killed.user_attrs["ray_node"]  # on the head node
    assert sum(1 for t in trials if counted(t)) == 5
    assert [p.name for p in (run / "trials" / "partial").iterdir()] == \
        [f"{killed.number:04d}-{marker.rsplit('-', 1)[1]}"]
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["trial"] in {t.number for t in trials if t.state == TrialState.COMPLETE}
