"""utils.jsonio.read_json: what each unreadable file is called."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.errors import PlanError
from autoseg.utils.jsonio import read_json


def test_a_folder_given_for_a_json_file_is_named_as_a_folder(tmp_path: Path) -> None:
    """A folder was called 'not found' (IsADirectoryError filed with FileNotFoundError), though it is there."""
    (tmp_path / "plans.json").mkdir()
    with pytest.raises(PlanError, match=r"plans\.json: is a folder, not a JSON file; give the file itself$"):
        read_json(tmp_path / "plans.json", PlanError, "not found; run autoseg plan", "re-run autoseg plan")
    with pytest.raises(PlanError, match=r"other\.json: not found; run autoseg plan$"):
        read_json(tmp_path / "other.json", PlanError, "not found; run autoseg plan", "re-run autoseg plan")
    (tmp_path / "good.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "good.json", PlanError, "", "") == {"a": 1}
