"""A study in a real PostgreSQL server (tests/pg_cluster.py): the driver, one line for what is wrong, a study created
once by workers started at the same instant, waiting trials claimed through the database, not the run folder, and
three ``loratune optimize`` commands on the tiny models sharing one study while one of them is killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import wait_for
from optuna.trial import TrialState
from test_search_runner import BACKEND, TESTS, write_config

from loratune.config import load_config
from loratune.errors import LoratuneError
from loratune.runfolder import RunFolder
from loratune.search.claims import DatabaseLock, FileLock
from loratune.search.config import SearchSection
from loratune.search.phases import counted
from loratune.search.recovery import lost_trials
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
            # The server would notice a vanished holder in seconds, not the system's two hours.
            assert lock._conn.execute(sqlalchemy.text("SHOW tcp_keepalives_idle")).scalar() in ("10", "10s")
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
    with sqlalchemy.create_engine(lock.url).connect() as conn:
        return bool(conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON l.database = d.oid "
            "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()")).scalar())



@pytest.mark.slow
def test_three_workers_one_study_one_killed(tiny_models, small_dataset_factory, tmp_path, postgres_url) -> None:
    """Three ``loratune optimize`` commands started together on a fresh database (one with ``--workers 2``), real
    training on the tiny models. One is SIGKILLed in the middle of a trial: after the heartbeat's grace period another
    worker fails that trial and runs it again. No trial runs twice, no folder is replaced, none is lost; the two
    finalists (the best published folders) are sampled again once, not once per machine, and RUN/best is the better."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "loratune.cli", "optimize", str(tiny_models.config), "--run", str(run),
            "--storage", postgres_url,
            "--set", f"dataset.path={small_dataset_factory(2)}", "--set", "train.batch_size=2",
            "--set", "sampling.steps=2", "--set", "train.epochs=2", "--set", "search.n_trials=4",
            "--set", "search.heartbeat_interval=2", "--set", "search.grace_period=10",
            "--set", "search.finalists=2", "--set", "search.finalist_samples=1",
            "--set", ("search.space={learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}, "
                      "rank: {type: categorical, choices: [2, 4]}}"),
            "--set", "search.phases={refine_trials: 1, ensemble_top_k: 2, ensemble_method: svd, ensemble_rank: 4}"]
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    procs = [subprocess.Popen(args + extra, stdout=subprocess.PIPE, stderr=log.open("w"), text=True)
             for extra, log in zip([[], [], ["--workers", "2"]], logs)]
    try:
        plain = {p.pid: p for p in procs[:2]}

        def mid_trial() -> Path | None:  # a plain worker's trial with its first epoch scored
            assert all(p.poll() is None for p in procs), [log.read_text()[-2000:] for log in logs]
            return next((f for f in (run / "trials").glob(".*.*") if int(f.name.rsplit(".", 1)[1]) in plain
                         and (f / "scores.json").is_file()), None) if (run / "trials").is_dir() else None

        building = wait_for(mid_trial, 600, "a plain worker to score its trial's first epoch", poll=0.05)
        victim = plain[int(building.name.rsplit(".", 1)[1])]
        victim.kill()
        outputs = {p.pid: p.communicate(timeout=600)[0] for p in procs}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    survivors = [p for p in procs if p is not victim]
    assert victim.returncode == -9 and [p.returncode for p in survivors] == [0, 0], \
        [log.read_text()[-2000:] for log in logs]
    for p in survivors:  # each joined the one study and saw it through
        assert outputs[p.pid].startswith("best: trial "), outputs[p.pid]

    trials = pg_study(postgres_url).get_trials()
    assert all(t.state.is_finished() for t in trials)
    (killed,) = [t for t in trials if t.user_attrs.get("worker_pid") == victim.pid and t.state == TrialState.FAIL]
    assert killed.user_attrs.get("fail_reason") is None  # a crash: its slot reopened, not a failure of the params
    retried = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED) and retried[0].user_attrs["worker_pid"] != victim.pid
    assert [p.name for p in (run / "trials" / "partial").iterdir()] == [f"{killed.number:04d}-{victim.pid}"]

    # Nothing ran twice and no folder was replaced: one published folder per finished trial, holding that trial,
    # trained once; the budget's trials all differ.
    finished = [t for t in trials if t is not killed]
    folders = sorted(p.name for p in (run / "trials").iterdir() if p.name.isdigit())
    assert sorted(t.user_attrs["trial_dir"] for t in finished) == [f"trials/{name}" for name in folders]
    duplicated = 0
    for t in finished:
        folder = run / t.user_attrs["trial_dir"]
        recorded = json.loads((folder / "params.json").read_text())
        header = "ensemble of" if t.user_attrs["phase"] == "ensemble" else f"trial {recorded['number']} ("
        duplicated += recorded.get("number", t.number) != t.number or (folder / "log.txt").read_text().count(header) != 1
    budget = [tuple(sorted(t.params.items())) for t in finished if counted(t) and t.user_attrs["phase"] != "ensemble"]
    duplicated += len(budget) - len(set(budget))
    lost = sum(lost_trials(trials).values())
    assert duplicated == 0 and lost == 0 and len(budget) == 4
    assert [t.state for t in finished if t.user_attrs["phase"] == "ensemble"] == [TrialState.COMPLETE]

    # The finalists: the two best published folders by their search-time scores, each sampled again by one machine
    # only (the first to finish; the others found them scored); RUN/best is the better of the two.
    search_time = sorted((-json.loads((run / "trials" / name / "scores.json").read_text())["composite"], int(name))
                         for name in folders)
    finalists = json.loads((run / "finalists.json").read_text())["finalists"]
    assert sorted(f["trial"] for f in finalists) == sorted(number for _, number in search_time[:2])
    assert sum(log.read_text().count("finalist trial ") for log in logs) == 2
    best = json.loads((run / "best" / "best.json").read_text())
    top = max(finalists, key=lambda f: (f["composite"], -f["trial"]))
    assert (best["trial"], best["composite"]) == (top["trial"], top["composite"])
    workers = {t.user_attrs["worker_pid"] for t in trials}
    print(f"\nthree workers, one killed: {len(finished)} trials finished, {len(retried)} retried, "
          f"{duplicated} duplicated, {lost} lost; {len(workers)} worker processes ran trials")
