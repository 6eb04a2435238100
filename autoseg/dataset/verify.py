"""``autoseg verify``: find every problem in a raw dataset before any training, one line each.

The per-case checks (``check_case``) are shared with the fingerprint, which verifies each case on the
same read it takes its statistics from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from autoseg.dataset.cases import Case, file_ending_problem, scan_images, scan_training_cases
from autoseg.dataset.description import DatasetDescription, load_description
from autoseg.dataset.imageio import (
    SLICE_SPACING_2D,
    Geometry,
    float32_overflow_problem,
    geometry_differences,
    ignored_sform_warning,
    is_integer_valued,
    missing_spacing_file_problem,
    nifti_nonfinite_counts,
    nifti_value_scaling,
    read_image,
    read_image_channels,
    select_channels,
    space_units_warning,
)
from autoseg.errors import DatasetError
from autoseg.fingerprint.axis_order import axis_order_warning
from autoseg.fingerprint.spacing_outliers import spacing_outlier_warnings
from autoseg.paths import DatasetLocation, DatasetSpec, resolve_dataset
from autoseg.utils.progress import parallel_map, stage_workers

MAX_LISTED_VALUES = 8
# A voxel side no image has (100 m): 1e200 mm made voxel and class volumes, and structure thickness, overflow to
# Infinity in fingerprint.json, and plan stop with an internal OverflowError. Far above a header in microns among
# millimetres (1000x: 5000 for a 5 mm slice), which plan names with its own fix.
MAX_SPACING_MM = 1e5


@dataclass
class CaseCheck:
    """What reading and checking one case found; arrays are kept for the fingerprint when asked."""

    case_id: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # accepted, as nnU-Net accepts them, but suspect
    data: np.ndarray | None = None  # (C, z, y, x) float32
    label: np.ndarray | None = None  # (z, y, x) int16/int32
    spacing: tuple[float, ...] | None = None
    shape: tuple[int, ...] | None = None  # (z, y, x) of the first image, with its spacing


def _listing(values: list[int] | np.ndarray) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(str(v) for v in values[:MAX_LISTED_VALUES])
    return shown + (f", ... ({len(values)} in all)" if len(values) > MAX_LISTED_VALUES else "")


def check_case(case: Case, desc: DatasetDescription, keep_arrays: bool = False) -> CaseCheck:
    """Read one case and report every problem (unreadable files, channel count, geometry, NaN, labels)."""
    result = CaseCheck(case.case_id)
    arrays: list[tuple[Path, np.ndarray]] = []  # (file, its channels (C, z, y, x))
    geometries: list[Geometry] = []
    alphas: list[bool] = []
    for path in case.images:
        try:
            array, geometry, alpha = read_image_channels(path)
        except DatasetError as exc:
            result.problems.append(str(exc))
            continue
        _check_channel_file(result, path, array, geometry, alpha, arrays, geometries)
        arrays.append((path, array))
        geometries.append(geometry)
        alphas.append(alpha)
    channels = None
    if arrays and len(arrays) == len(case.images):
        channels = _selected_channels(result, arrays, alphas, desc)
    label = None if case.label is None else _checked_label(result, case.label, arrays, geometries, desc)
    if geometries:
        result.spacing, result.shape = geometries[0].spacing, arrays[0][1].shape[1:]
    if keep_arrays and not result.problems and channels is not None:
        result.data = np.concatenate([a.astype(np.float32, copy=False) for a in channels])
        result.label = label
    return result


def _check_channel_file(result: CaseCheck, path: Path, array: np.ndarray, geometry: Geometry, alpha: bool,
                        arrays: list[tuple[Path, np.ndarray]], geometries: list[Geometry]) -> None:
    """Add to ``result`` the problems and warnings of one read image file of the case: non-finite or overflowing
    values, an impossible spacing, a blank channel, a grid other than the case's files read before (``arrays``)."""
    if array.dtype.kind == "f":
        # ITK's NIfTI reader turns NaN into a number: the file's bytes are read when the array holds it.
        counts = nifti_nonfinite_counts(path, array)
        if counts is None:
            counts = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if problem := nonfinite_problem(path, *counts):
            result.problems.append(problem)
        overflow = float32_overflow_problem(path, array)
        if overflow:
            result.problems.append(overflow)
    if max(geometry.spacing) > MAX_SPACING_MM:
        result.problems.append(f"{path}: voxel spacing {tuple(geometry.spacing)} mm is beyond "
                               f"{MAX_SPACING_MM:g} mm, no real voxel size (a header in other units?); fix the "
                               "header's voxel size")
    result.warnings.extend(_blank_channel_warnings(result.case_id, path, array, alpha,
                                                   sum(a.shape[0] for _, a in arrays)))
    if arrays and array.shape[1:] != arrays[0][1].shape[1:]:
        result.problems.append(
            f"{path}: size {array.shape[:0:-1]} differs from {arrays[0][0].name} {arrays[0][1].shape[:0:-1]}; "
            "all channels of a case must be on the same grid (resample them onto one grid)"
        )
    elif arrays:
        diff = geometry_differences(geometry, geometries[0])
        if diff:
            result.problems.append(
                f"{path}: geometry differs from {arrays[0][0].name}: {'; '.join(diff)}; resample the "
                "channels onto one grid or fix the header"
            )


def _selected_channels(result: CaseCheck, arrays: list[tuple[Path, np.ndarray]], alphas: list[bool],
                       desc: DatasetDescription) -> list[np.ndarray] | None:
    """The case's declared channels from its read files (None where they do not give them, told in ``result``)."""
    try:
        channels = select_channels([p for p, _ in arrays], [a for _, a in arrays], alphas, desc.num_channels)
    except DatasetError as exc:
        result.problems.append(str(exc))
        return None
    result.problems.extend(_rgb_range_problems([p for p, _ in arrays], channels, desc))
    return channels


def _checked_label(result: CaseCheck, label_path: Path, arrays: list[tuple[Path, np.ndarray]],
                   geometries: list[Geometry], desc: DatasetDescription) -> np.ndarray | None:
    """The case's label map, read and checked against its first image's grid and the declared labels (problems
    told in ``result``); None where it cannot be read."""
    try:
        label, label_geometry = read_image(label_path)
    except DatasetError as exc:
        result.problems.append(str(exc))
        return None
    if arrays:
        ref_path, ref = arrays[0]
        if label.shape != ref.shape[1:]:
            result.problems.append(
                f"{label_path}: size {label.shape[::-1]} differs from image {ref_path.name} "
                f"{ref.shape[:0:-1]}; the label must be on the image's grid"
            )
        elif problem := label_geometry_problem(label_path, label_geometry, ref_path, geometries[0]):
            result.problems.append(problem)
    return _check_label_values(label_path, label, desc, result.problems)


def mixed_2d_problem(cases: Sequence[Case], grids: Sequence[tuple[Sequence[float], Sequence[int]] | None]) -> str | None:
    """The problem of 2D training cases (one slice, read with nnU-Net's slice spacing of 999 mm) among 3D ones
    of several slices, each case with its (spacing, shape) (None: unread). nnU-Net accepts them silently, and
    preprocessing stretched such a slice over hundreds of slices of the 3D target spacing: training data that no
    scan looks like. One-slice 3D files beside 2D ones are a 2D dataset, as before. A volume of several slices
    with a huge spacing (a header in microns) is no 2D image: it was called one, where plan names its header."""
    flat = [c for c, g in zip(cases, grids) if g is not None and g[0][0] >= SLICE_SPACING_2D and g[1][0] == 1]
    volumes = sum(1 for g in grids if g is not None and g[0][0] < SLICE_SPACING_2D and g[1][0] > 1)
    if not flat or not volumes:
        return None
    named = ", ".join(str(c.images[0]) for c in flat[:MAX_LISTED_VALUES])
    more = f" ({len(flat)} in all)" if len(flat) > MAX_LISTED_VALUES else ""
    return (f"{named}{more}: 2D image(s) (one slice, no slice thickness) among {volumes} 3D case(s); save each as a 3D "
            "volume of one slice with its slice thickness (as the other cases' files are), or remove it")


SHOWN_SLICE_CASES = 5  # single-slice cases named in their warning's one line; the rest are counted


def single_slice_warning(cases: Sequence[Case], grids: Sequence[tuple[Sequence[float], Sequence[int]] | None]
                         ) -> str | None:
    """The one warning naming the cases of one voxel along an axis (but not along all: ``_blank_channel_warnings``
    names a single voxel) in a 3D dataset (some case has several voxels along every axis), each case with its
    (spacing, shape) (None: unread); 2D images (slice spacing 999 mm) are ``mixed_2d_problem``'s. nnU-Net accepts such
    a case, so verify passed it without a word, though a 3D model sees nothing around it along that axis."""
    read = [(c, g[1]) for c, g in zip(cases, grids) if g is not None and g[0][0] < SLICE_SPACING_2D]
    if not any(min(shape) > 1 for _, shape in read):
        return None
    thin = [(case, shape) for case, shape in read if min(shape) == 1 < max(shape)]
    if not thin:
        return None
    named = ", ".join(f"{case.case_id} (size {tuple(shape[::-1])})" for case, shape in thin[:SHOWN_SLICE_CASES])
    more = f" and {len(thin) - SHOWN_SLICE_CASES} more" if len(thin) > SHOWN_SLICE_CASES else ""
    return (f"{len(thin)} case(s) are one voxel thick along an axis in a 3D dataset: {named}{more}; a 3D model sees "
            "no context along that axis in them (nnU-Net accepts them): if the dataset is of such slices, the 2d "
            "configuration may suit it, else check those files' export or crop")


def label_geometry_problem(label: Path, label_geometry: Geometry, image: Path, image_geometry: Geometry) -> str | None:
    """The problem of a label not in its image's geometry (a missing 3D TIFF spacing file named as such), None
    when they agree. Shared with preprocessing, which also reads labels saved off their image after verify."""
    if missing := missing_spacing_file_problem(label, label_geometry, image, image_geometry):
        return missing
    if diff := geometry_differences(label_geometry, image_geometry):
        return (f"{label}: geometry differs from image {image.name}: {'; '.join(diff)}; save the label with the "
                "image's header (spacing, origin, direction)")
    return None


def _blank_channel_warnings(case_id: str, path: Path, channels: np.ndarray, alpha: bool, first: int) -> list[str]:
    """A warning for each channel of file ``path`` (the case's channels ``first``, ``first + 1``, ...) that holds
    one value in every voxel: an all-zero image (a failed export or conversion) passed verify without a word,
    as it does in nnU-Net, and the case trained on an input with nothing in it. Not refused, since nnU-Net
    accepts it; an alpha channel (fully opaque) is left out. A file of a single voxel is named as such: it was
    called 'a blank image' holding its one value."""
    if math.prod(channels.shape[1:]) == 1:
        return [f"{path}: case {case_id}: the image is a single voxel, too small to hold a scan (a failed export or "
                "crop?); check the file, or remove the case"]
    warnings = []
    for index, channel in enumerate(channels[:-1] if alpha else channels):
        if channel.size and channel.min() == channel.max():
            warnings.append(f"{path}: case {case_id}, channel {first + index}: every voxel holds "
                            f"{np.format_float_positional(float(channel.flat[0]), trim='-')} (a blank image: failed "
                            "export or conversion?); check the file, or remove the case if it has no image")
    return warnings


def _rgb_range_problems(paths: list[Path], channels: list[np.ndarray], desc: DatasetDescription) -> list[str]:
    """Channels named ``rgb_to_0_1`` must hold 0..255 (preprocessing divides them by 255): found here, each
    names its file before planning, where preprocessing refused the case only after plan."""
    from autoseg.preprocessing.normalization import rgb_range_problem

    problems, index = [], 0
    for path, array in zip(paths, channels):
        for channel in array:
            if desc.channel_names[str(index)].strip().lower() == "rgb_to_0_1" and (problem := rgb_range_problem(channel)):
                problems.append(f"{path}: channel {index}: {problem}")
            index += 1
    return problems


def nonfinite_problem(path: Path, nan: int, inf: int) -> str | None:
    """The problem line of an image with ``nan`` NaN and ``inf`` Inf voxels (None without); shared with
    preprocessing, which also reads images added or edited after verify."""
    if not nan and not inf:
        return None
    return f"{path}: {nan} NaN and {inf} Inf voxel(s); replace them (e.g. with the image minimum) before training"


def mask_255_hint(present: Iterable[Any], declared: Iterable[int]) -> str:
    """The fix for the commonest undeclared value: a binary mask saved as 0/255 for a dataset declaring
    1 as its object (shared by verify and evaluate, so both say it alike)."""
    present_values, declared_values = {int(v) for v in present}, set(declared)
    if present_values <= {0, 255} and 255 in present_values and 255 not in declared_values and 1 in declared_values:
        return " (a 0/255 mask: divide the label by 255 so the object is 1)"
    return ""

def label_value_problem(path: Path, label: np.ndarray, declared: Iterable[int], fix: str | None = None) -> str | None:
    """The problem of a label map holding non-integer values or values not ``declared``, None when clean.
    Shared with preprocessing, which also reads labels added or edited after verify and plan, and with the
    cascade, whose previous-stage predictions take their own ``fix`` (no one edits them or declares classes)."""
    if problem := _nifti_nonfinite_label_problem(path, label, fix):
        return problem
    if not is_integer_valued(label):
        fix = fix or _header_scaling_fix(path)  # the header is read only for a label refused
        finite = label[np.isfinite(label)] if label.dtype.kind == "f" else label
        fractional = np.unique(finite[finite != np.round(finite)])[:3] if finite.size else []
        return (
            f"{path}: label values must be integers; found non-integer values such as "
            f"{', '.join(np.format_float_positional(v, trim='-') for v in fractional) or 'NaN/Inf'}; "
            f"{fix or 'resample labels with nearest neighbour and save them as integers'}"
        )
    values = np.unique(label)
    allowed = set(declared)
    unknown = [int(v) for v in values if int(v) not in allowed]
    if unknown:
        hint = mask_255_hint(values, allowed)
        fix = fix or _header_scaling_fix(path)
        return (
            f"{path}: label values {_listing(unknown)} are not declared in dataset.json labels "
            f"(declared: {_listing(sorted(allowed))}){hint}; {fix or 'fix the label file or declare the classes'}"
        )
    return None


def _nifti_nonfinite_label_problem(path: Path, label: np.ndarray, fix: str | None) -> str | None:
    """The problem of a float NIfTI label holding NaN or Inf: ITK reads NaN as 0, so such voxels passed as
    background (a NaN in an NRRD label was refused as a non-integer value); the file's own bytes tell."""
    counts = nifti_nonfinite_counts(path, label) if label.dtype.kind == "f" else None
    if counts is None or not any(counts):
        return None
    return (f"{path}: label holds {counts[0]} NaN and {counts[1]} Inf voxel(s) (NIfTI readers turn NaN into 0, "
            f"background); {fix or 'set them to a declared class and save the label as integers'}")


def _header_scaling_fix(path: Path) -> str | None:
    """The fix for a NIfTI label whose header scales its stored values (0, 1, 2 stored, 0, 1.5, 3 read): verify
    said to resample it with nearest neighbour, or to declare classes it does not hold."""
    scaling = nifti_value_scaling(path)
    if scaling is None:
        return None
    return (f"its header scales the stored values (scl_slope {scaling[0]:g}, scl_inter {scaling[1]:g}), as every "
            "NIfTI reader applies them; save the label with scl_slope 1 and scl_inter 0")


def only_ignore_problem(path: Path, label: np.ndarray, ignore_label: int | None) -> str | None:
    """The problem of a label map that is the ignore label everywhere: it verified and fingerprinted, and
    preprocessing then refused it after storing every other case."""
    if ignore_label is None or label.size == 0 or np.any(label != ignore_label):
        return None
    return f"{path}: holds only the ignore label {ignore_label}: nothing to learn; annotate it or leave it out"


def _check_label_values(
    path: Path, label: np.ndarray, desc: DatasetDescription, problems: list[str]
) -> np.ndarray | None:
    problem = label_value_problem(path, label, desc.label_values) or only_ignore_problem(path, label, desc.ignore_label)
    if problem:
        problems.append(problem)
        return None
    return label.astype(np.int16 if label.max(initial=0) < 2**15 else np.int32, copy=False)


@dataclass
class VerifyReport:
    dataset: str
    num_cases: int
    problems: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_case_problems(
    case: Case, desc: DatasetDescription
) -> tuple[list[str], list[str], tuple[tuple[float, ...], tuple[int, ...]] | None]:
    """(problems, warnings, (spacing, shape) or None when unread) of one case."""
    checked = check_case(case, desc)
    grid = None if checked.spacing is None or checked.shape is None else (checked.spacing, checked.shape)
    return checked.problems, checked.warnings, grid


def dataset_level_problems(location: DatasetLocation, desc: DatasetDescription) -> tuple[list[Case], list[str]]:
    """Naming and bookkeeping problems (no image is read)."""
    scan = scan_training_cases(location.raw_dir, desc)
    if file_ending_problem(location.raw_dir, desc) is not None:
        return [], list(scan.problems)  # no file can be read: counting or naming them says nothing more
    problems = list(scan.problems)
    n_found = scan.num_declared_cases
    if n_found == 0:
        if not problems:  # verify said 'no problems found' and exited 0; fingerprint then refused the dataset
            problems.append(f"{location.raw_dir}: no training cases found; put images in imagesTr/<case>_0000"
                            f"{desc.file_ending} and labels in labelsTr/<case>{desc.file_ending}")
    elif desc.num_training != n_found:
        problems.append(
            f"{location.raw_dir / 'dataset.json'}: numTraining is {desc.num_training} but {n_found} training "
            f"case(s) {_where_cases_are(desc)}; set numTraining to {n_found}"
        )
    seen: dict[str, str] = {}
    for case in scan.cases:
        key = case.case_id.lower()
        if key in seen:
            problems.append(
                f"{case.images[0]}: case id {case.case_id!r} clashes with {seen[key]!r} (same name up to "
                "upper/lower case; they collide on case-insensitive file systems); rename one"
            )
        seen[key] = case.case_id
    files: dict[Path, str] = {}
    for case in scan.cases:
        for path in [*case.images, case.label]:
            if path is None:
                continue
            resolved = path.resolve()
            if resolved in files and files[resolved] != case.case_id:
                problems.append(f"{path}: used by cases {files[resolved]!r} and {case.case_id!r}; each case needs its own files")
            files[resolved] = case.case_id
    return scan.cases, problems


def _where_cases_are(desc: DatasetDescription) -> str:
    """Where a dataset's cases come from, for messages: the explicit ``dataset`` list, when dataset.json has one,
    is the only place looked at (its count was said to be 'found in imagesTr/labelsTr', which were not read)."""
    return "are listed in dataset.json's \"dataset\"" if desc.cases is not None else "were found in imagesTr/labelsTr"


def verify_dataset(location: DatasetSpec, num_workers: int | None = None) -> VerifyReport:
    """Check the whole dataset; every problem is one line naming the file, the problem and the fix."""
    location = resolve_dataset(location)
    desc = load_description(location.raw_dir)
    cases, problems = dataset_level_problems(location, desc)
    tests_dir = location.raw_dir / "imagesTs"
    test_cases: list[Case] = []
    if tests_dir.is_dir() and file_ending_problem(location.raw_dir, desc) is None:
        scan = scan_images(tests_dir, desc)
        problems.extend(scan.problems)
        test_cases = scan.cases
    jobs = [(c.case_id, (c, desc)) for c in [*cases, *test_cases]]
    workers = stage_workers(num_workers, DatasetError)
    results, failures = parallel_map(_check_case_problems, jobs, workers, "verify")
    warnings: list[str] = []
    for case_id, _ in jobs:
        case_problems, case_warnings, _ = results.get(case_id, ([], [], None))
        problems.extend(case_problems)
        warnings.extend(case_warnings)
    if mixed := mixed_2d_problem(cases, [results.get(c.case_id, ([], [], None))[2] for c in cases]):
        problems.append(mixed)
    problems.extend(f"case {f.key}: {f.message}" for f in failures)
    warnings.extend(cases_header_warnings([*cases, *test_cases]))
    warnings.extend(_spacing_warnings(cases, results))
    checked = [*cases, *test_cases]
    if thin := single_slice_warning(checked, [results.get(c.case_id, ([], [], None))[2] for c in checked]):
        warnings.append(thin)
    return VerifyReport(location.name, len(cases) + len(test_cases), problems, warnings)


def _spacing_warnings(cases: Sequence[Case], results: dict[str, Any]) -> list[str]:
    """The fingerprint's warnings naming training cases stored in another axis order (``fingerprint.axis_order``)
    and cases whose spacing is far off the median (``fingerprint.spacing_outliers``), from the spacings verify read:
    ``verify`` passed such datasets without a word. A case refused already (a spacing beyond 100000 mm) is left out."""
    read = [(c.case_id, result[2][0]) for c in cases
            if (result := results.get(c.case_id, ([], [], None)))[2] is not None and not result[0]]
    if not read:
        return []
    case_ids = [case_id for case_id, _ in read]
    spacings = [list(spacing) for _, spacing in read]
    median = np.median(spacings, axis=0).tolist()
    order = axis_order_warning(case_ids, spacings, median)
    return ([order] if order else []) + spacing_outlier_warnings(case_ids, spacings, median)


def cases_header_warnings(cases: Sequence[Case]) -> list[str]:
    """The warnings about the headers of the files of ``cases`` (images and labels), one line each: NRRD files that
    give their spacing in another unit than mm (``imageio.space_units_warning``), NIfTI files read by their qform
    while their sform places them elsewhere (``imageio.ignored_sform_warning``)."""
    paths = [path for case in cases for path in [*case.images, case.label] if path is not None]
    return [line for line in (space_units_warning(paths), ignored_sform_warning(paths)) if line is not None]


def require_valid(location: DatasetSpec, num_workers: int | None = None) -> None:
    """Raise ``DatasetError`` listing all problems when the dataset does not verify."""
    location = resolve_dataset(location)
    report = verify_dataset(location, num_workers)
    if not report.ok:
        listing = "\n".join(f"  {p}" for p in report.problems)
        raise DatasetError(
            f"dataset {location.name} has {len(report.problems)} problem(s):\n{listing}\nfix them and re-run"
        )
