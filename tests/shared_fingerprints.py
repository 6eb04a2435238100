"""Planning fingerprints of the shared real datasets, computed from their images in the test session.

Only what planning reads is computed, the way ``autoseg fingerprint`` computes it: per case the
spacing, the shape after cropping to the nonzero region of all channels, the relative size after
cropping and the label centroids (the mirroring rule). Intensity statistics are left out (no shared
dataset has a CT channel, the only channel kind whose normalization reads them; planning copies them
into the plan and nothing else), which saves the verification and sampling passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoseg.dataset.cases import training_cases
from autoseg.dataset.description import load_description
from autoseg.dataset.imageio import read_case_images, read_image
from autoseg.fingerprint.cropping import bounding_box, nonzero_mask
from autoseg.fingerprint.file import FINGERPRINT_VERSION
from autoseg.fingerprint.label_layout import class_centroids

# Placeholder statistics: read by planning only for CT channels (see the module docstring).
_UNUSED_STATISTICS = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": 0.0, "max": 1.0,
                      "percentile_00_5": 0.0, "percentile_99_5": 1.0, "num_samples": 0}


def planning_fingerprint(dataset_dir: Path) -> dict[str, Any]:
    """The fingerprint fields planning reads, computed from every training case's images."""
    desc = load_description(dataset_dir)
    spacings, shapes, relative, centroids = [], [], [], []
    for case in training_cases(dataset_dir, desc):
        data, geometry = read_case_images(case.images)
        after = [stop - start for start, stop in bounding_box(nonzero_mask(data))]
        spacings.append([float(s) for s in geometry.spacing])
        shapes.append(after)
        relative.append(float(np.prod(after) / np.prod(data.shape[1:])))
        label = read_image(case.label)[0]
        centroids.append(class_centroids(label.reshape(data.shape[1:]), desc.foreground_labels))
    return {
        "version": FINGERPRINT_VERSION, "dataset_name": dataset_dir.name,
        "channel_names": desc.channel_names, "labels": desc.labels, "file_ending": desc.file_ending,
        "spacings": spacings, "shapes_after_crop": shapes,
        "median_relative_size_after_crop": float(np.median(relative)),
        "foreground_intensity_properties_per_channel": {c: dict(_UNUSED_STATISTICS) for c in desc.channel_names},
        "is_2d": all(s[0] == 1 for s in shapes),
        "class_centroids": {str(v): [c[str(v)] for c in centroids] for v in desc.foreground_labels},
    }
