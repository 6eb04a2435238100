"""import-model of a zip whose model folder's place holds a plain file reported it as 'model folder already exists';
it is now named as a file in the way, and left as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.errors import ModelFileError
from autoseg.evaluation.model_files import import_model

from test_model_files import DATASET, MODEL, exported  # noqa: F401 - the fixture


def test_a_file_at_the_model_folders_place_is_named_as_a_file(exported: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    _, zip_path = exported
    target = tmp_path / "clean" / DATASET / MODEL
    target.parent.mkdir(parents=True)
    target.write_text("my notes")
    with pytest.raises(ModelFileError) as info:
        import_model(zip_path, tmp_path / "clean")
    assert str(info.value) == (f"{target}: is a file where the imported model folder goes; move or remove it, pass "
                               "--overwrite to replace it, or import into another results folder")
    assert target.read_text() == "my notes" and sorted(p.name for p in target.parent.iterdir()) == [MODEL]
