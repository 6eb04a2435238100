"""``autoseg fingerprint``: per-case statistics pooled into ``fingerprint.json``.

Each case is read once: the same read verifies it (``autoseg.dataset.verify.check_case``) and feeds the
statistics, so fingerprinting never runs on a broken dataset and never writes a partial file.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autoseg import __version__
from autoseg.dataset.cases import Case
from autoseg.dataset.description import DatasetDescription, load_description
from autoseg.dataset.imageio import physical_volume_mm3
from autoseg.dataset.verify import cases_header_warnings, check_case, dataset_level_problems, mixed_2d_problem
from autoseg.errors import DatasetError
from autoseg.fingerprint.axis_order import axis_order_warning
from autoseg.fingerprint.cropping import crop_to_nonzero
from autoseg.fingerprint.file import FINGERPRINT_VERSION, dataset_json_digest, fingerprint_path
from autoseg.fingerprint.label_layout import class_centroids
from autoseg.fingerprint.spacing_outliers import spacing_outlier_warnings
from autoseg.fingerprint.thickness import case_thickness, median_thickness
from autoseg.paths import DatasetLocation, DatasetSpec, resolve_dataset
from autoseg.utils.atomic import atomic_write_json
from autoseg.utils.progress import parallel_map, stage_workers
from autoseg.utils.shapes import single_slice_axis

# nnU-Net pools 1e8 foreground samples (reference §1.2); 1e7 gives the same percentiles to well below
# the precision normalization needs, at a tenth of the memory.
FOREGROUND_SAMPLES_TOTAL = 10_000_000
SAMPLING_SEED = 1234


def case_seed(case_id: str, seed: int = SAMPLING_SEED) -> int:
    """A per-case seed that does not depend on worker scheduling or case order."""
    return (zlib.crc32(case_id.encode()) + seed) % 2**32


def case_statistics(case: Case, desc: DatasetDescription, samples_per_case: int, seed: int) -> dict[str, Any]:
    """Verify one case and compute its statistics; raise ``DatasetError`` with all its problems."""
    checked = check_case(case, desc, keep_arrays=True)
    if checked.problems:
        raise DatasetError(" | ".join(checked.problems))
    data, label, spacing = checked.data, checked.label, checked.spacing
    assert data is not None and label is not None and spacing is not None
    shape_before = list(data.shape[1:])
    cropped, seg, _, _ = crop_to_nonzero(data, label[None])
    shape_after = list(cropped.shape[1:])
    foreground = annotated_foreground(seg[0], desc.ignore_label)
    rng = np.random.default_rng(case_seed(case.case_id, seed))
    samples = []
    for channel in cropped:
        values = channel[foreground]
        if values.size:
            samples.append(values[rng.integers(0, values.size, samples_per_case)].astype(np.float32))
        else:
            samples.append(np.empty(0, np.float32))
    voxel_mm3 = physical_volume_mm3(spacing)
    counts = np.bincount(label.ravel().clip(min=0).astype(np.int64), minlength=max(desc.label_values) + 1)
    class_counts = {str(v): int(counts[v]) for v in desc.foreground_labels}
    return {
        "spacing": [float(s) for s in spacing],
        "shape_before_crop": shape_before,
        "shape_after_crop": shape_after,
        "relative_size_after_crop": float(np.prod(shape_after) / np.prod(shape_before)),
        "samples": samples,
        "class_voxel_counts": class_counts,
        "class_volumes_mm3": {k: v * voxel_mm3 for k, v in class_counts.items()},
        "structure_thickness_mm": case_thickness(label, spacing, dict(desc.regions), desc.ignore_label),
        "class_centroids": class_centroids(label, desc.foreground_labels),
    }


def annotated_foreground(seg: np.ndarray, ignore_label: int | None) -> np.ndarray:
    """The voxels of a class: nnU-Net v2 samples ``seg > 0``, the ignore label included, and with sparse
    annotations (scribbles in a sea of ignore) that made a CT channel's clipping percentiles and z-score
    statistics of the whole image instead of the annotated structures."""
    foreground = seg > 0
    return foreground if ignore_label is None else foreground & (seg != ignore_label)


def intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    """Pooled foreground statistics of one channel (reference §1.2)."""
    if samples.size == 0:
        nan = float("nan")
        return {k: nan for k in ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")} | {"num_samples": 0}
    samples = samples.astype(np.float64)
    p005, p50, p995 = np.percentile(samples, [0.5, 50.0, 99.5])
    return {
        "mean": float(samples.mean()),
        "median": float(p50),
        "std": float(samples.std()),
        "min": float(samples.min()),
        "max": float(samples.max()),
        "percentile_00_5": float(p005),
        "percentile_99_5": float(p995),
        "num_samples": int(samples.size),
    }


def extract_fingerprint(
    location: DatasetSpec,
    num_workers: int | None = None,
    seed: int = SAMPLING_SEED,
    output: Path | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Verify and fingerprint every training case; write ``fingerprint.json`` atomically.

    Raises ``DatasetError`` listing every problem (nothing is written then). ``warn``, when given, gets the
    header warnings of the cases listed here (``verify.cases_header_warnings``: space units, an ignored sform; so
    a command need not list them again), the warning naming cases stored in another axis order (``axis_order``)
    and one per case of a spacing far off the median (``spacing_outliers``).
    """
    location = resolve_dataset(location)
    desc = load_description(location.raw_dir)
    cases, problems = dataset_level_problems(location, desc)
    if problems:
        raise DatasetError(_problem_listing(location, problems))
    if not cases:
        raise DatasetError(f"{location.raw_dir}: no training cases found; put images in imagesTr and labels in labelsTr")
    samples_per_case = max(1, FOREGROUND_SAMPLES_TOTAL // len(cases))
    jobs = [(c.case_id, (c, desc, samples_per_case, seed)) for c in cases]
    workers = stage_workers(num_workers, DatasetError)
    results, failures = parallel_map(case_statistics, jobs, workers, "fingerprint")
    if failures:
        lines = [_naming_the_case(f.key, line) for f in failures for line in f.message.split(" | ")]
        raise DatasetError(_problem_listing(location, lines))
    if mixed := mixed_2d_problem(cases, [(results[c.case_id]["spacing"], results[c.case_id]["shape_before_crop"]) for c in cases]):
        raise DatasetError(_problem_listing(location, [mixed]))
    if not any(sum(r["class_voxel_counts"].values()) for r in results.values()):
        raise DatasetError(_problem_listing(location, [_no_foreground_problem(location, desc)]))
    fingerprint = _pool(location, desc, cases, results, seed)
    atomic_write_json(output or fingerprint_path(location), fingerprint)
    for line in cases_header_warnings(cases) if warn is not None else []:
        warn(line)
    grid = (fingerprint["case_ids"], fingerprint["spacings"], fingerprint["median_spacing"])
    order = axis_order_warning(*grid)
    for line in ([order] if order else []) + spacing_outlier_warnings(*grid):
        if warn is not None:
            warn(line)
    return fingerprint


def _naming_the_case(case_id: str, problem: str) -> str:
    """A case's problem line naming the case: verification's lines name its files, but a worker killed for
    memory or a MemoryError said only "out of memory; retry with fewer workers", not which case was too big."""
    return problem if case_id in problem else f"case {case_id}: {problem}"


def _no_foreground_problem(location: DatasetLocation, desc: DatasetDescription) -> str:
    """Labels that are background everywhere leave nothing to learn and no foreground intensities: a CT
    channel's normalization (clip, mean, std of them) would be NaN and turn every preprocessed voxel into NaN."""
    classes = ", ".join(map(str, desc.foreground_labels))
    return (
        f"{location.raw_dir / 'labelsTr'}: no label map holds any of the classes ({classes}), only background (or "
        "ignore): there is nothing to learn and no foreground intensity to normalize with; put the annotated label maps there"
    )


def _problem_listing(location: DatasetLocation, problems: list[str]) -> str:
    listing = "\n".join(f"  {p}" for p in problems)
    return f"dataset {location.name} has {len(problems)} problem(s); nothing was written:\n{listing}"


def _pool(
    location: DatasetLocation,
    desc: DatasetDescription,
    cases: list[Case],
    results: dict[str, dict[str, Any]],
    seed: int,
) -> dict[str, Any]:
    ids = [c.case_id for c in cases]  # sorted by discovery, deterministic
    per_case = [results[i] for i in ids]
    spacings = np.array([r["spacing"] for r in per_case])
    shapes_after = np.array([r["shape_after_crop"] for r in per_case])
    median_spacing = np.median(spacings, axis=0)
    intensity = {
        str(c): intensity_statistics(np.concatenate([r["samples"][c] for r in per_case]))
        for c in range(desc.num_channels)
    }
    finite = median_spacing[median_spacing < 999]
    thickness = {t: [r["structure_thickness_mm"][t] for r in per_case] for t, _ in desc.regions}
    return {
        "version": FINGERPRINT_VERSION,
        "created_by": f"autoseg {__version__}",
        "dataset_name": location.name,
        "dataset_json_sha256": dataset_json_digest(location),
        "num_cases": len(ids),
        "case_ids": ids,
        "channel_names": desc.channel_names,
        "labels": desc.labels,
        "file_ending": desc.file_ending,
        "spacings": spacings.tolist(),
        "shapes_before_crop": [r["shape_before_crop"] for r in per_case],
        "shapes_after_crop": shapes_after.tolist(),
        "relative_size_after_crop": [r["relative_size_after_crop"] for r in per_case],
        "median_relative_size_after_crop": float(np.median([r["relative_size_after_crop"] for r in per_case])),
        "foreground_intensity_properties_per_channel": intensity,
        "class_voxel_counts": {str(v): [r["class_voxel_counts"][str(v)] for r in per_case] for v in desc.foreground_labels},
        "class_volumes_mm3": {str(v): [r["class_volumes_mm3"][str(v)] for r in per_case] for v in desc.foreground_labels},
        "structure_thickness_mm": thickness,
        # voxel indices per array axis (as read, before transposing); null where a case lacks the label
        "class_centroids": {str(v): [r["class_centroids"][str(v)] for r in per_case] for v in desc.foreground_labels},
        "median_structure_thickness_mm": median_thickness(thickness),
        "median_spacing": median_spacing.tolist(),
        "median_shape_after_crop": np.median(shapes_after, axis=0).tolist(),
        "anisotropy_ratio": float(finite.max() / finite.min()) if finite.size else 1.0,
        "is_2d": single_slice_axis(shapes_after) is not None,  # whichever axis holds the single slice
        "sampling_seed": seed,
    }
