"""Atomic writes: complete files or nothing, with the user's usual permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest

from loratune.atomic import atomic_dir, atomic_path, atomic_write_json


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "scores.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "trial"
    with atomic_dir(target) as d:
        (d / "params.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "partial").write_text("x")
        raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["params.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial"]
