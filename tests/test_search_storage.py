"""Study storage: SQLite in the run directory by default; server URLs are taken as given; bad URLs are user errors."""

from __future__ import annotations

import pytest

from loratune.errors import LoratuneError
from loratune.search.config import SearchSection
from loratune.search.storage import open_storage, storage_url, study_exists


def test_default_is_sqlite_in_the_run_dir(tmp_path) -> None:
    search = SearchSection(heartbeat_interval=5)
    assert storage_url(tmp_path, search) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    storage = open_storage(tmp_path, search)
    assert (tmp_path / "study.db").is_file() and not study_exists(storage)
    assert storage.heartbeat_interval == 5 and storage.grace_period == 10
    assert storage.failed_trial_callback is not None
    assert open_storage(tmp_path, search, heartbeat=False).heartbeat_interval is None


def test_server_urls_and_errors(tmp_path) -> None:
    url = "postgresql://user:pw@127.0.0.1:1/db"
    assert storage_url(tmp_path, SearchSection(storage=url)) == url
    with pytest.raises(LoratuneError, match="search.storage"):
        open_storage(tmp_path, SearchSection(storage=url))  # no driver installed, or nothing listening on port 1
    with pytest.raises(LoratuneError, match="search.storage"):
        storage_url(tmp_path, SearchSection(storage="redis://localhost"))
