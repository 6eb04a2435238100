"""Small crops of the shared real datasets, written into temporary folders (never into shared/).

A crop keeps each file's format, channels, spacing and direction; SimpleITK's slicing moves the origin
so that every kept voxel stays where it was in physical space. The crop box is centred on the case's
labelled foreground, so a crop holds some of each structure its case has near that centre.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def foreground_box(label: np.ndarray, size: Sequence[int]) -> tuple[slice, ...]:
    """A box of ``size`` (z, y, x; clipped to the array) centred on the label's foreground."""
    nonzero = np.nonzero(label)
    centre = [(int(a.min()) + int(a.max())) // 2 if a.size else n // 2 for a, n in zip(nonzero, label.shape)]
    box = []
    for c, s, n in zip(centre, size, label.shape):
        s = min(s, n)
        start = min(max(c - s // 2, 0), n - s)
        box.append(slice(start, start + s))
    return tuple(box)


def _crop_file(source: Path, target: Path, box: tuple[slice, ...]) -> None:
    """Crop one image file; PNGs through scikit-image so colour files stay one RGB(A) file."""
    if source.suffix == ".png":
        from skimage import io as skio

        skio.imsave(str(target), skio.imread(str(source))[box[1], box[2]], check_contrast=False)
        return
    z, y, x = box
    sitk.WriteImage(sitk.ReadImage(str(source))[x, y, z], str(target), useCompression=True)


def crop_cases(
    source: Path, cases: Sequence[str], size: Sequence[int], images: Path, labels: Path
) -> None:
    """Crop the image files (every channel) and the label of each case of the raw dataset ``source``
    into the folders ``images`` and ``labels``; ``size`` is (z, y, x), z ignored for 2D files."""
    ending = json.loads((source / "dataset.json").read_text())["file_ending"]
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for case in cases:
        label_file = source / "labelsTr" / f"{case}{ending}"
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        box = foreground_box(label if label.ndim == 3 else label[None], size)
        _crop_file(label_file, labels / label_file.name, box)
        channel_files = sorted((source / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
        assert channel_files, f"no image of case {case} in {source}"
        for image in channel_files:
            _crop_file(image, images / image.name, box)


def crop_dataset(source: Path, raw_root: Path, cases: Sequence[str], size: Sequence[int]) -> Path:
    """``raw_root/<source's name>`` holding the crops of ``cases`` and source's dataset.json with
    ``numTraining`` set to their count."""
    dataset = raw_root / source.name
    crop_cases(source, cases, size, dataset / "imagesTr", dataset / "labelsTr")
    description = json.loads((source / "dataset.json").read_text())
    description["numTraining"] = len(cases)
    (dataset / "dataset.json").write_text(json.dumps(description, indent=2))
    return dataset
