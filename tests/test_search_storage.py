"""Study storage: SQLite in the run directory by default; server URLs are taken as given; bad URLs are user errors."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import TrialState

from loratune.errors import LoratuneError
from loratune.search.config import SearchSection
from loratune.search.storage import open_storage, storage_url, study_exists


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_default_is_sqlite_in_the_run_dir(tmp_path) -> None:
    search = SearchSection(heartbeat_interval=5)
    assert storage_url(tmp_path, search) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # optuna's deprecated retry-callback names are not used
        storage = open_storage(tmp_path, search)
    assert (tmp_path / "study.db").is_file() and not study_exists(storage)
    assert storage.heartbeat_interval == 5 and storage.grace_period == 10
    # The crash detector's retry: a dead trial comes back once per allowed retry (search.max_retry, default 2).
    study = optuna.create_study(storage=storage, study_name="loratune")
    study.enqueue_trial({"x": 0.5})
    dead = study.ask()
    study.tell(dead, state=TrialState.FAIL)
    storage.failed_trial_callback(study, study.trials[dead.number])
    retry = study.get_trials(states=(TrialState.WAITING,))
    assert len(retry) == 1 and retry[0].system_attrs["failed_trial"] == dead.number
    assert open_storage(tmp_path, search, heartbeat=False).heartbeat_interval is None


def test_server_urls_and_errors(tmp_path) -> None:
    url = "postgresql://user:pw@127.0.0.1:1/db"
    assert storage_url(tmp_path, SearchSection(storage=url)) == url
    # Nothing listens on port 1 (or no driver is installed): one line, the URL without its password.
    with pytest.raises(LoratuneError, match=r"search.storage: .*postgresql://user:\*\*\*@127.0.0.1:1/db") as err:
        open_storage(tmp_path, SearchSection(storage=url))
    assert "pw" not in str(err.value)
    with pytest.raises(LoratuneError, match="search.storage"):
        storage_url(tmp_path, SearchSection(storage="redis://localhost"))


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_heartbeat_outlasts_a_locked_database(tmp_path) -> None:
    """SQLite refuses a write while another connection holds the database ("database is locked"); Optuna's heartbeat
    thread then dies on its first beat, the trial never gets a heartbeat, and the stale check, which only sees trials
    that have one, never fails it: a resume after the worker's death waited forever. BeatingStorage tries again."""
    import sqlite3
    import threading
    import time

    from optuna.storages import RDBStorage

    from loratune.search.storage import BeatingStorage

    def locked_beat(kind: type, name: str) -> tuple[optuna.Study, int, BaseException | None]:
        db = tmp_path / f"{name}.db"
        # a short busy timeout, so the lock fails the write at once, as SQLite does on a lock upgrade
        storage = kind(f"sqlite:///{db}", engine_kwargs={"connect_args": {"timeout": 0.05}}, heartbeat_interval=1,
                       grace_period=1)
        study = optuna.create_study(storage=storage, study_name=name)
        trial = study.ask()
        other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        release = threading.Timer(0.25, lambda: other.execute("COMMIT"))
        release.start()
        error = None
        try:
            storage.record_heartbeat(trial._trial_id)
        except Exception as err:  # noqa: BLE001 - the reference storage's failure is what the test shows
            error = err
        release.join()
        other.close()
        return study, trial.number, error

    plain, plain_number, plain_error = locked_beat(RDBStorage, "plain")
    beating, beating_number, beating_error = locked_beat(BeatingStorage, "beating")
    assert isinstance(plain_error, optuna.exceptions.StorageInternalError) and beating_error is None
    # past the grace period (1 s) on SQLite's CURRENT_TIMESTAMP, which counts whole seconds: the dead worker's trial
    # should be failed now
    time.sleep(3.0)
    optuna.storages.fail_stale_trials(plain)
    optuna.storages.fail_stale_trials(beating)
    assert plain.trials[plain_number].state == TrialState.RUNNING  # without a heartbeat it is never found stale
    assert beating.trials[beating_number].state == TrialState.FAIL
