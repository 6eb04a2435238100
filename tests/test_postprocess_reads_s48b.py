"""postprocess apply reads each label map once (session 48, helper B): a PNG/TIFF label map was decoded to learn its
shape for the size-unit check, and again to postprocess it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import autoseg.postprocessing.determine as determine
from autoseg.dataset.imageio import label_map_shape, read_image
from autoseg.postprocessing.determine import apply_postprocessing, apply_to_folder, determine_postprocessing
from test_postprocessing import LABELS, PNG, _make_2d_cv_folders


def test_apply_decodes_each_png_label_map_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preds, refs = _make_2d_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".png")
    assert decision["size_unit"] == "mm^2" and any(step["operation"] == "remove_small" for step in decision["steps"])
    reads: Counter[str] = Counter()
    real_read = determine.read_image

    def counting_read(path):  # type: ignore[no-untyped-def]
        reads[Path(path).name] += 1
        return real_read(path)

    monkeypatch.setattr(determine, "read_image", counting_read)
    written = apply_to_folder(preds, tmp_path / "out", decision, num_workers=1)
    assert reads == {"case0.png": 1, "case1.png": 1, "case2.png": 1}
    for path in written:  # the same result as reading each file for the postprocessing
        expected = apply_postprocessing(decision, read_image(preds / path.name)[0], PNG.spacing)
        assert np.array_equal(read_image(path)[0], expected)
    assert int((read_image(tmp_path / "out" / "case0.png")[0] == 2).sum()) == 13  # the spurious nodule removed


def test_the_size_unit_check_decodes_no_label_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check learns each shape from the file's header: it kept every PNG/TIFF it decoded for the postprocessing
    until all cases were done, so apply's memory grew with the folder (24 PNGs of 9 MB: 318 MiB, not 121)."""
    preds, refs = _make_2d_cv_folders(tmp_path)
    decision = determine_postprocessing(preds, refs, LABELS, num_workers=1, file_ending=".png")

    def no_read(path):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{path} decoded")

    monkeypatch.setattr(determine, "read_image", no_read)
    assert determine.size_unit_problem(preds, sorted(preds.glob("*.png")), {**decision, "size_unit": "mm^3"}) == (
        f"{preds}: its label maps are 2D (e.g. case0.png), whose component sizes are in mm^2, but the decision was "
        "determined on 3D label maps and removes components by their size in mm^3; apply a decision determined on 2D "
        "predictions like these (autoseg postprocess determine), or give the 3D label maps this decision is for")


def _grey_volume(path: Path, slices: int) -> None:
    """A TIFF volume of ``slices`` pages, written as autoseg writes one (its spacing in the description)."""
    from autoseg.dataset.imageio import Geometry, write_image

    geometry = Geometry(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=tuple(np.eye(3).ravel()))
    write_image(np.ones((slices, 6, 7), np.uint8), geometry, path)


@pytest.mark.parametrize("name", ["grey.png", "grey16.png", "grey.bmp", "grey.tif", "volume.tif", "slice.tif",
                                  "colour.png", "palette.png", "stack.tif", "colour.tif", "broken.png", "label.nii.gz"])
def test_the_header_shape_is_read_images(tmp_path: Path, name: str) -> None:
    """The shape from the header is the one ``read_image`` gives, or None where it refuses the file as a label map."""
    import tifffile
    from PIL import Image

    from autoseg.dataset.imageio import write_image

    path = tmp_path / name
    pixels = np.zeros((6, 7), np.uint8)
    makers = {
        "grey.png": lambda: Image.fromarray(pixels).save(path),
        "grey16.png": lambda: Image.fromarray(pixels.astype(np.uint16) + 300).save(path),
        "grey.bmp": lambda: write_image(pixels[None], PNG, path),
        "grey.tif": lambda: write_image(pixels[None], PNG, path),
        "volume.tif": lambda: _grey_volume(path, 3),
        "slice.tif": lambda: _grey_volume(path, 1),
        "colour.png": lambda: Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(path),
        "palette.png": lambda: Image.fromarray(pixels).convert("P").save(path),
        "stack.tif": lambda: tifffile.imwrite(path, np.zeros((3, 6, 7), np.uint8), photometric="minisblack"),
        "colour.tif": lambda: tifffile.imwrite(path, np.zeros((6, 7, 3), np.uint8), photometric="rgb"),
        "broken.png": lambda: path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20),
        "label.nii.gz": lambda: _grey_volume(path, 4),
    }
    makers[name]()
    try:
        expected = read_image(path)[0].shape
    except Exception:  # noqa: BLE001 - refused as read: the check leaves it to its case
        expected = None
    assert label_map_shape(path) == expected
    assert expected is not None or name in ("colour.png", "palette.png", "stack.tif", "colour.tif", "broken.png")
