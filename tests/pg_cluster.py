"""A throw-away PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temporary folder, TCP on a free port of
127.0.0.1 only, trust authentication, no fsync; stopped and deleted at the end of the session.

Debian keeps the server's programs out of PATH (``/usr/lib/postgresql/<version>/bin``); ``make test`` installs the
``postgresql`` package. PostgreSQL refuses to run as root, and CI runs as root: there the server runs as the
``postgres`` user that package creates (``nobody`` without it), its folder handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "loratune"


def server_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest Debian version, else PATH's), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="loratune-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            os.chown(self.root, pwd.getpwnam(self.user).pw_uid, -1)
        self._databases = 0

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # ``user=`` switches the child to the server's user (root only); no runuser/su needed.
        account = {} if self.user is None else {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid,
                                                 "extra_groups": []}
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.root, timeout=timeout,
                              capture_output=True, text=True, check=True, **account)

    def start(self) -> PgCluster:
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")
        for attempt in range(3):  # the free port may be taken between finding it and the server binding it
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                          "-o", options, "start")
                return self
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise RuntimeError("PostgreSQL did not start:\n" + self.log()) from None
        return self

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"study_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True

