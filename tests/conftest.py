"""Shared fixtures: the tiny models are built once (cached on disk across sessions) and loaded by path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# As the Makefile does, for a plain `pytest` too: spinning OpenMP threads make torch many times slower on a shared
# CPU (test_search_e2e: 279 s without, 35 s with). Read when torch loads its OpenMP runtime, so set before any import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def sigint_default() -> None:
    """``preexec_fn`` for a child a test will Ctrl-C: a shell that starts the suite in the background ignores SIGINT,
    children inherit that, and Python then installs no KeyboardInterrupt handler. Restore the terminal's default.
    No Popen keyword does this (restore_signals resets only SIGPIPE, SIGXFZ and SIGXFSZ; start_new_session and
    process_group move the child to another process group, which leaves its signal dispositions as they are), hence
    ``preexec_fn`` and the callers' ``noqa: PLW1509``; it makes one signal.signal call between fork and exec."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    """Poll ``predicate`` until it returns something truthy (returned); fail the test naming ``what`` after
    ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
TINY_CACHE = Path(os.environ.get("LORATUNE_TINY_CACHE", REPO / ".cache" / "tiny-models"))


@pytest.fixture(scope="session")
def tiny_models():
    """Paths of the tiny, randomly initialised models and the generated dataset (see ``loratune.tiny``)."""
    from loratune.tiny import build_tiny_models

    return build_tiny_models(TINY_CACHE)


@pytest.fixture(scope="session")
def small_dataset_factory(tiny_models, tmp_path_factory):
    """``make(n)``: a kohya dataset with the first ``n`` captioned images of each tiny character, one repeat each."""
    import shutil

    made: dict[int, Path] = {}

    def make(per_character: int) -> Path:
        if per_character not in made:
            root = tmp_path_factory.mktemp(f"data-{per_character}")
            for folder in sorted(Path(tiny_models.dataset).iterdir()):
                target = root / f"1_{folder.name.split('_', 1)[1]}"
                target.mkdir()
                for image in sorted(folder.glob("*.png"))[:per_character]:
                    shutil.copy(image, target / image.name)
                    shutil.copy(image.with_suffix(".txt"), target / f"{image.stem}.txt")
            made[per_character] = root
        return made[per_character]

    return make


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL server for the session (tests/pg_cluster.py). CI must run the tests that use it: there a
    missing server is a failure, not a skip."""
    from pg_cluster import PgCluster, server_bin

    bindir = server_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's initdb/pg_ctl not found (`make test` installs Debian's postgresql)")
        pytest.skip("needs PostgreSQL's server (`make test` installs Debian's postgresql)")
    cluster = PgCluster(bindir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's server: ``postgresql://loratune@127.0.0.1:PORT/NAME``."""
    return postgres_server.create_database()
