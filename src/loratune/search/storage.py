"""The study's storage: SQLite in the run directory by default, or a PostgreSQL/MySQL URL for many machines.

Both are Optuna ``RDBStorage``s with heartbeats: a trial whose process died stops beating, is marked FAIL after
``grace_period`` and Optuna's retry callback (``retry_callback``) enqueues a copy with the same params (crash detection works
with RDB storages only, not the journal file). A fresh database gets its tables from the first ``RDBStorage``; two
made at once collide (``table studies already exists``, or PostgreSQL's duplicate ``pg_type`` key), so the study's
creator opens it under the study lock (``loratune.search.study``).

SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3 (``pip install 'loratune[postgres]'``) and ``mysql://`` to
mysqlclient; ``postgresql+psycopg2://`` and ``mysql+pymysql://`` name other drivers.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage

from loratune.errors import LoratuneError, first_line
from loratune.runfolder import STUDY_NAME, RunFolder
from loratune.search.config import SearchSection

try:  # optuna >= 4.9 renamed the crash-retry callback and RDBStorage's argument; the old names warn (FutureWarning)
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _RetryCallback

    _CALLBACK_ARG = "heartbeat_stale_trial_callback"
except ImportError:  # pragma: no cover - optuna < 4.9
    from optuna.storages import RetryFailedTrialCallback as _RetryCallback

    _CALLBACK_ARG = "failed_trial_callback"


_log = logging.getLogger(__name__)
HEARTBEAT_RETRIES = (0.1, 0.2, 0.4, 0.8)  # seconds between a failed heartbeat write and the next try


class BeatingStorage(RDBStorage):
    """``RDBStorage`` whose heartbeat writes survive a failure. Optuna's heartbeat thread writes in a bare loop, so
    one exception ends it: SQLite answers a write that would have to wait on another connection's lock upgrade with
    "database is locked" at once, whatever its timeout. A trial whose first beat failed then has no heartbeat at all,
    and Optuna's stale check, which only looks at trials that have one, never fails it: a resume waits for it forever.
    Here a failed write is tried again a few times and then left to the next beat; the thread keeps beating."""

    def record_heartbeat(self, trial_id: int) -> None:
        for pause in (*HEARTBEAT_RETRIES, None):
            try:
                super().record_heartbeat(trial_id)
                return
            except Exception as err:  # noqa: BLE001 - any failure: the thread must not end (see the class)
                if pause is None:
                    _log.warning("trial %d: heartbeat not recorded (%s); the next beat tries again", trial_id,
                                 first_line(err))
                    return
                time.sleep(pause)


def storage_url(run_dir: str | Path, search: SearchSection) -> str:
    return RunFolder(Path(run_dir)).storage_url(search.storage)


def open_storage(run_dir: str | Path, search: SearchSection, heartbeat: bool = True) -> RDBStorage:
    """``heartbeat=False`` for callers that run no trial (the dashboard): heartbeats need optimize()."""
    url = storage_url(run_dir, search)
    # SQLite serialises writers; workers wait for the lock instead of failing after sqlite's 5 s default.
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in name only; they are the crash detector
            warnings.simplefilter("ignore", ExperimentalWarning)
            return BeatingStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=search.heartbeat_interval if heartbeat else None,
                grace_period=(search.grace_period or 2 * search.heartbeat_interval) if heartbeat else None,
                **{_CALLBACK_ARG: retry_callback(search) if heartbeat else None},
            )
    except ImportError as err:  # the database's driver is missing
        raise database_error(url, err) from None
    except Exception as err:  # sqlalchemy's OperationalError etc.: the server is unreachable or the URL wrong
        if type(err).__module__.startswith("sqlalchemy"):
            raise database_error(url, err) from None
        raise


def database_error(url: str, err: BaseException) -> LoratuneError:
    """One line for a study database that cannot be opened: which driver to install, or what the server said."""
    if isinstance(err, ImportError):
        if url.split("://", 1)[0] in ("postgresql", "postgresql+psycopg"):
            return LoratuneError("search.storage: postgresql:// needs the PostgreSQL driver psycopg 3: "
                                 "pip install 'loratune[postgres]'")
        return LoratuneError(f"search.storage: {redact(url)} needs a database driver that is not installed ({err})")
    return LoratuneError(f"search.storage: cannot open {redact(url)}: {first_line(err)}")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL shows as given: there is no password to find in it
        return url


def retry_callback(search: SearchSection) -> Any:
    """Optuna's retry of a dead trial: a WAITING copy with the same params, ``system_attrs`` ``failed_trial`` set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _RetryCallback(max_retry=search.max_retry)


def directions(search: SearchSection) -> list[str]:
    return list(search.directions.values()) if search.directions else ["maximize"]


def study_exists(storage: RDBStorage) -> bool:
    try:
        storage.get_study_id_from_name(STUDY_NAME)
    except KeyError:
        return False
    return True
