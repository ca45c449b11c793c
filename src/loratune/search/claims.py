"""The study lock: how one process has the study to itself for a moment, on one machine or many.

A worker holds it from before ``study.ask()`` until its trial is RUNNING in the study, so two processes never take
the same waiting trial, never both enqueue a lost baseline and agree on which slot each new trial fills. Creating the
study, a resume's repairs and filling RUN/best hold it too.

Where the study lives decides where the lock lives:

- SQLite in the run folder (one machine): an exclusive ``flock`` on ``RUN/.ask.lock``. SQLite ignores
  ``SELECT … FOR UPDATE``, so without it two resumers could both take the same waiting retry.
- PostgreSQL (many machines): a session-level advisory lock in the study's database. Network filesystems do not
  honour ``flock`` reliably, so a lock on the shared run folder would not keep two machines apart; the database does,
  and drops the lock when the holder's connection closes (its process died) or stops answering (its machine went
  away: ``KEEPALIVES``), as the kernel drops a dead process's ``flock``.
- MySQL: the run folder's ``flock`` still, and Optuna's own ``SELECT … FOR UPDATE`` when a waiting trial is taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from loratune.runfolder import STUDY_NAME, RunFolder


class StudyLock(Protocol):
    def acquire(self) -> None: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class _Held:
    """``with lock:`` holds it for the block."""

    def __enter__(self) -> Any:
        self.acquire()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()  # type: ignore[attr-defined]


class FileLock(_Held):
    """An exclusive ``flock`` on a file in the run: released by the kernel when its process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        if self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    close = release


KEEPALIVES = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 4}


def advisory_key(study_name: str = STUDY_NAME) -> int:
    """The advisory lock's number: a signed 64-bit hash of the study's name (advisory locks are per database)."""
    return int.from_bytes(hashlib.sha256(f"loratune/{study_name}".encode()).digest()[:8], "big", signed=True)


class DatabaseLock(_Held):
    """``pg_advisory_lock`` held on a connection of its own, kept open between claims (one per worker process).

    The connection is in autocommit, so holding the lock holds no transaction open while a trial trains.
    """

    def __init__(self, url: str, key: int | None = None) -> None:
        self.url = url
        self.key = advisory_key() if key is None else key
        self._engine: Any = None
        self._conn: Any = None
        self._held = False

    def _connection(self) -> Any:
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        if self._conn is None:
            if self._engine is None:
                self._engine = sqlalchemy.create_engine(self.url, poolclass=NullPool)
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            # A machine that vanishes closes no connection: the server's TCP keepalives find it gone within ~30 s
            # (the system's default waits two hours) and end its session, which drops the lock it held.
            for name, value in KEEPALIVES.items():
                self._conn.execute(sqlalchemy.text(f"SET {name} = {int(value)}"))
        return self._conn

    def acquire(self) -> None:
        import sqlalchemy

        from loratune.search.storage import database_error

        if self._held:
            return
        query = sqlalchemy.text("SELECT pg_advisory_lock(:key)")
        try:
            try:
                self._connection().execute(query, {"key": self.key})
            except sqlalchemy.exc.OperationalError:
                if self._conn is None:
                    raise  # the first connection failed: the server is unreachable or the URL wrong
                # The server dropped this idle connection (a restart, a proxy's timeout): one fresh try.
                self._close()
                self._connection().execute(query, {"key": self.key})
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as err:
            raise database_error(self.url, err) from None
        self._held = True

    def release(self) -> None:
        import sqlalchemy

        if not self._held:
            return
        self._held = False
        try:
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
        except sqlalchemy.exc.OperationalError:
            self._close()  # the connection is gone, and the lock with it

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close; it is dropped either way
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.release()
        self._close()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def is_postgres(url: str) -> bool:
    return url.startswith("postgresql")


def study_lock(run: RunFolder, storage: str | None) -> StudyLock:
    """The lock for the run's study (``search.storage``; see the module's docstring)."""
    url = run.storage_url(storage)
    return DatabaseLock(url) if is_postgres(url) else FileLock(run.ask_lock)


@contextlib.contextmanager
def held(run: RunFolder, storage: str | None) -> Iterator[None]:
    """Hold the run's study lock for a block (creating the study, a resume's repairs, filling RUN/best)."""
    lock = study_lock(run, storage)
    lock.acquire()
    try:
        yield
    finally:
        lock.close()
