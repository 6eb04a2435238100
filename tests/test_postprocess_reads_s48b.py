"""postprocess apply reads each label map once (session 48, helper B): a PNG/TIFF label map was decoded to learn its
shape for the size-unit check, and again to postprocess it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import autoseg.postprocessing.determine as determine
from autoseg.dataset.imageio import read_image
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
