"""``predict --continue`` keeps only whole outputs: a label map or .npz cut short since it was written is predicted
again, with a note naming the file and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.errors import DatasetError
from autoseg.inference.batch import InputCase, _finished
from autoseg.utils.probability_files import probability_paths, write_probability_files

GEOMETRY = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
SHAPE = (20, 48, 48)


def _case(folder: Path, ending: str, save_probabilities: bool) -> tuple[InputCase, list[Path]]:
    """A case ``c`` (its image) and the outputs a finished predict run wrote for it in ``folder``."""
    folder.mkdir()
    write_image(np.random.default_rng(0).normal(size=SHAPE).astype(np.float32), GEOMETRY, folder / "c_0000.nii.gz")
    files = list(probability_paths(folder, "c")) if save_probabilities else []
    if save_probabilities:
        write_probability_files(folder, "c", np.full((3, *SHAPE), 1 / 3, np.float32), GEOMETRY,
                                {"background": 0, "a": 1, "b": 2}, None)
    label_map = folder / f"c{ending}"
    write_image(np.random.default_rng(1).integers(0, 3, SHAPE).astype(np.uint8), GEOMETRY, label_map)
    return InputCase("c", {0: folder / "c_0000.nii.gz"}), [*files, label_map]


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_continue_predicts_again_a_label_map_cut_in_half_behind_an_intact_header(tmp_path, capsys, ending):
    """A label map cut to half its bytes, its header intact, was kept as finished, though read_image refuses it."""
    case, files = _case(tmp_path / "out", ending, save_probabilities=False)
    assert _finished(case, files)
    _cut_in_half(files[-1])
    with pytest.raises(DatasetError):
        read_image(files[-1])
    capsys.readouterr()
    assert not _finished(case, files)
    assert capsys.readouterr().err == (f"note: case c: its label map {files[-1]} is cut short (its voxel data ends before "
                                       "its header says); predicting it again\n")


@pytest.mark.parametrize("damage", ["emptied", "cut"])
def test_continue_predicts_again_probabilities_emptied_or_cut_short(tmp_path, capsys, damage):
    """With --save-probabilities only the label map was checked: an emptied or cut .npz was kept, and ensemble refused
    it."""
    case, files = _case(tmp_path / "out", ".nii.gz", save_probabilities=True)
    assert _finished(case, files)
    if damage == "emptied":
        files[0].write_bytes(b"")
    else:
        _cut_in_half(files[0])
    capsys.readouterr()
    assert not _finished(case, files)
    assert capsys.readouterr().err == (f"note: case c: its probabilities {files[0]} cannot be opened as a .npz (emptied, "
                                       "damaged or cut short); predicting it again\n")


def test_continue_predicts_again_probabilities_whose_sidecar_is_damaged(tmp_path, capsys):
    case, files = _case(tmp_path / "out", ".nii.gz", save_probabilities=True)
    files[1].write_text("{\"case_id\": \"c\"")
    assert not _finished(case, files)
    err = capsys.readouterr().err
    assert err.startswith(f"note: case c: its probabilities' sidecar cannot be used ({files[1]}: ") and err.endswith(
        "); predicting it again\n"), err


def test_continue_names_a_label_map_spelling_itk_does_not_read(tmp_path, capsys):
    """A ``.Nii.gz`` label map was said to have 'a header ITK cannot read (damaged or cut short)'."""
    case, files = _case(tmp_path / "out", ".nii.gz", save_probabilities=False)
    renamed = files[-1].with_name("c.Nii.gz")
    files[-1].rename(renamed)
    capsys.readouterr()
    assert not _finished(case, [renamed])
    assert capsys.readouterr().err == (f"note: case c: its label map {renamed} ends in '.Nii.gz', a spelling of .nii.gz "
                                       "that ITK, the image reader, does not read; predicting it again\n")
