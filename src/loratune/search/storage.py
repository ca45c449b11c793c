"""The study's storage: SQLite in the run directory by default, or a PostgreSQL/MySQL URL for many machines.

Both are Optuna ``RDBStorage``s with heartbeats: a trial whose process died stops beating, is marked FAIL after
``grace_period`` and Optuna's retry callback (``retry_callback``) enqueues a copy with the same params (crash detection works
with RDB storages only, not the journal file). Create the study once, then start workers: two processes creating one
fresh SQLite study at once collide (``table studies already exists``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
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
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=search.heartbeat_interval if heartbeat else None,
                grace_period=(search.grace_period or 2 * search.heartbeat_interval) if heartbeat else None,
                **{_CALLBACK_ARG: retry_callback(search) if heartbeat else None},
            )
    except ImportError as err:  # a database driver (psycopg2, PyMySQL) is missing
        raise LoratuneError(f"search.storage: {err}") from None
    except Exception as err:  # sqlalchemy's OperationalError etc.: the server is unreachable or the URL wrong
        if type(err).__module__.startswith("sqlalchemy"):
            raise LoratuneError(f"search.storage: cannot open {url}: {first_line(err)}") from None
        raise


def retry_callback(search: SearchSection) -> Any:
    """Optuna's retry of a dead trial: a WAITING copy with the same params, ``system_attrs`` ``failed_trial`` set."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _RetryCallback(max_retry=search.max_retry)


def directions(search: SearchSection) -> list[str]:
    return list(search.directions.values()) if search.directions else ["maximize"]


def study_exists(storage: RDBStorage) -> bool:
    return any(s.study_name == STUDY_NAME for s in optuna.get_all_study_summaries(storage))
