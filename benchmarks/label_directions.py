"""How far off an image axis the direction between two classes' centroids lies, per case.

docs/planning.md ("Mirroring only where the labels allow it") narrows the in-plane rotation to 30 deg
where the plan keeps an in-plane order: a turn of at most 30 deg never reverses the order of two
classes whose direction (in mm, within the plane of the last two axes) lies within 60 deg of that
axis. This reads a raw dataset's label maps and prints, for every pair of foreground classes, the
median and largest angle off the chosen axis and the share of cases within 60 and 45 deg.

Run: ``python benchmarks/label_directions.py ../shared/data/Dataset027_ACDC --axis 2``
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.fingerprint.label_layout import class_centroids


def in_plane_angles(folder: Path, axis: int) -> dict[tuple[str, str], list[float]]:
    """Per pair of foreground classes, each case's angle (deg) between the in-plane direction from the
    first class's centroid to the second's and array axis ``axis`` (1 or 2 of z, y, x)."""
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    names = {int(value): name for name, value in labels.items() if isinstance(value, int) and value}
    pairs = itertools.combinations(sorted(names), 2)
    angles: dict[tuple[str, str], list[float]] = {(names[p], names[q]): [] for p, q in pairs}
    other = 3 - axis
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        array, spacing = sitk.GetArrayFromImage(image), np.array(image.GetSpacing()[::-1])
        found = {int(v): c for v, c in class_centroids(array, sorted(names)).items() if c is not None}
        for p, q in itertools.combinations(sorted(found), 2):
            step = (np.array(found[q]) - np.array(found[p])) * spacing
            angles[(names[p], names[q])].append(float(np.degrees(np.arctan2(abs(step[other]), abs(step[axis])))))
    return angles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="a raw 3D dataset folder (dataset.json, labelsTr/*.nii.gz)")
    parser.add_argument("--axis", type=int, choices=(1, 2), default=2, help="array axis (z, y, x order); 2 = x")
    args = parser.parse_args()
    for (first, second), values in in_plane_angles(args.dataset, args.axis).items():
        if not values:
            continue
        a = np.array(values)
        print(f"{first} -> {second}: {len(a)} cases, median {np.median(a):.1f} deg off axis {args.axis}, "
              f"largest {a.max():.1f}, within 60 deg {int((a < 60).sum())}, within 45 deg {int((a < 45).sum())}")


if __name__ == "__main__":
    main()
