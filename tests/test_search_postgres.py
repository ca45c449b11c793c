"""A study in a real PostgreSQL server (tests/pg_cluster.py): the driver, one line for what is wrong, a study created
once by workers started at the same instant, and waiting trials claimed through the database, not the run folder.
Many workers on the tiny models, one of them killed: tests/test_search_scaleout.py."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from pg_cluster import wait_for
from test_search_runner import BACKEND, TESTS, write_config

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.runfolder import RunFolder
from loratune.search.claims import DatabaseLock, FileLock
from loratune.search.config import SearchSection
from loratune.search.runner import run_optimize
from loratune.search.storage import open_storage
from loratune.search.study import create_or_join


def pg_study(url: str) -> optuna.Study:
    return optuna.load_study(study_name="loratune", storage=url)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_postgresql_urls_open_with_psycopg_3(tmp_path, postgres_url) -> None:
    storage = open_storage(tmp_path, SearchSection(storage=postgres_url, heartbeat_interval=5))
    assert storage.engine.dialect.driver == "psycopg" and storage.heartbeat_interval == 5


def test_a_missing_driver_is_one_line(tmp_path, postgres_url, monkeypatch) -> None:
    config = load_config(write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=1))
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if loratune[postgres] were not installed
    with pytest.raises(LoratuneError) as err:
        run_optimize(config, tmp_path / "run", backend=BACKEND)
    assert str(err.value) == ("search.storage: postgresql:// needs the PostgreSQL driver psycopg 3: "
                              "pip install 'loratune[postgres]'")


def test_workers_started_together_create_one_study_and_join_it(tmp_path, postgres_url) -> None:
    """Four processes, released at the same instant on a fresh database: one creates the tables, the study and the
    baseline, the other three join it. Without the study lock they collide (duplicate tables, a second study)."""
    config = write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=3)
    run, go = tmp_path / "run", tmp_path / "go"
    script = ("import sys, time\nfrom pathlib import Path\nfrom loratune.config import load_config\n"
              "from loratune.runfolder import RunFolder\nfrom loratune.search.study import create_or_join\n"
              "import sqlalchemy.dialects.postgresql.psycopg, psycopg  # connect at once when released\n"
              f"config = load_config({str(config)!r})\nPath({str(tmp_path)!r}, f'ready-{{sys.argv[1]}}').touch()\n"
              f"while not Path({str(go)!r}).exists():\n    time.sleep(0.002)\n"
              f"Path({str(run)!r}).mkdir(exist_ok=True)\n"
              f"print('joined' if create_or_join(RunFolder(Path({str(run)!r})), config) else 'created')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 4 or any(p.poll() is not None for p in procs),
                 120, "four processes ready")
        go.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in results]
    assert sorted(out.strip() for out, _ in results) == ["created", "joined", "joined", "joined"]
    trials = pg_study(postgres_url).get_trials()
    assert [(t.state, t.user_attrs["phase"]) for t in trials] == [(TrialState.WAITING, "baseline")]
    assert len(optuna.get_all_study_names(postgres_url)) == 1 and (run / "config.yaml").is_file()


def test_a_worker_with_another_config_is_refused(tmp_path, postgres_url) -> None:
    run = RunFolder(tmp_path / "run")
    create_or_join(run, load_config(write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=3)))
    assert create_or_join(run, load_config(write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=3)))
    with pytest.raises(LoratuneError, match=r"another config \(search.n_trials differs\)"):
        create_or_join(run, load_config(write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=4)))


def test_a_waiting_trial_is_claimed_through_the_database_not_the_run_folder(tmp_path, postgres_url) -> None:
    """While this test holds the study's advisory lock, a worker cannot take the waiting baseline; the run folder's
    ``flock``, held here all along, does not stop it (network filesystems do not honour ``flock`` reliably)."""
    config = load_config(write_config(tmp_path / "c.yaml", storage=postgres_url, n_trials=1, pruner="none",
                                      phases={"refine_trials": 0, "ensemble_top_k": 0}))
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    create_or_join(run, config)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    with FileLock(run.ask_lock), DatabaseLock(postgres_url) as lock:
        worker = subprocess.Popen([sys.executable, "-m", "loratune.search.worker", str(run.root), "--backend", BACKEND],
                                  env=env, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: _waiting_for_lock(lock) or worker.poll() is not None, 120, "the worker to ask for the lock")
            assert worker.poll() is None
            assert [t.state for t in pg_study(postgres_url).get_trials()] == [TrialState.WAITING]
            lock.release()
            assert worker.wait(timeout=120) == 0, worker.stderr.read()
        finally:
            if worker.poll() is None:
                worker.kill()
        lock.close()
    (trial,) = pg_study(postgres_url).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.user_attrs["worker_pid"] == worker.pid
    assert (run.root / trial.user_attrs["trial_dir"] / "scores.json").is_file()


def _waiting_for_lock(lock: DatabaseLock) -> bool:
    """Whether another session waits for an advisory lock in this database (PostgreSQL's own lock table)."""
    import sqlalchemy

    with sqlalchemy.create_engine(lock.url).connect() as conn:
        return bool(conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON l.database = d.oid "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()")).scalar())

