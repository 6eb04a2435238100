"""Atomic writes: complete or absent, never half-written, with normal permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from autoseg.utils.atomic import atomic_path, atomic_write_json
from autoseg.utils.duration import parse_duration
from autoseg.errors import UsageError


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_written_files_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", [1])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_compact_json(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "c.json", {"a": [1, 2]}, indent=None)
    assert (tmp_path / "c.json").read_text() == '{"a":[1,2]}\n'


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30x", "-5", "0", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)
