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


def dataset_from_one_case(
    image_file: Path, label_file: Path, channel: str, dataset: Path, held_out: Path, size: Sequence[int], count: int
) -> list[str]:
    """A labelled dataset of ``count`` crops of one scan (``size`` voxels, z, y, x): ``count - 1``
    training cases in ``dataset`` and the last in ``held_out``/images and /labels.

    For the single-case examples of shared/ (a CT and an MR with many labels): the crops start at
    offsets spread over the scan, so their class sets differ, as real cases' do. The label values,
    TotalSegmentator class ids with gaps, are renumbered 0..n-1 in ascending order, as a user converting
    to nnU-Net's format must (labels named ``id_<original id>``). Returns the case ids.
    """
    image, label = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(label_file))
    values = np.unique(sitk.GetArrayViewFromImage(label))
    lookup = np.zeros(int(values.max()) + 1, np.uint8)
    lookup[values] = np.arange(len(values))
    renumbered = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(label)])
    renumbered.CopyInformation(label)
    # Crops stay inside the image's nonzero box, so cropping to nonzero (preprocessing) keeps them whole.
    nonzero = np.nonzero(sitk.GetArrayViewFromImage(image))
    start = [int(a.min()) for a in nonzero]
    spare = [int(a.max()) + 1 - b - s for a, b, s in zip(nonzero, start, size)]
    assert min(spare) >= 0, f"crop {size} larger than the scan's nonzero box"
    cases = [f"case_{i:03d}" for i in range(count)]
    for i, case in enumerate(cases):
        # Offsets walk each axis at a different pace, so no two crops start at the same place.
        z, y, x = (start[a] + spare[a] * ((i * (a + 1)) % count) // max(count - 1, 1) for a in range(3))
        box = (slice(x, x + size[2]), slice(y, y + size[1]), slice(z, z + size[0]))
        images, labels = (held_out / "images", held_out / "labels") if i == count - 1 else (
            dataset / "imagesTr", dataset / "labelsTr")
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image[box], str(images / f"{case}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(renumbered[box], str(labels / f"{case}.nii.gz"), useCompression=True)
    description = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, **{f"id_{int(v)}": i for i, v in enumerate(values) if v}},
        "numTraining": count - 1,
        "file_ending": ".nii.gz",
    }
    (dataset / "dataset.json").write_text(json.dumps(description, indent=2))
    return cases
