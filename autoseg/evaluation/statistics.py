"""``autoseg predict --statistics``: what a radiologist reads off a segmentation, per case and structure.

For each class (or region) of the model's ``dataset.json``: voxel count, volume in mm3, the number of
connected components (full connectivity, as ``postprocessing``), and the mean and percentiles of every
input channel's intensities inside it. One ``<case>_statistics.json`` per case (TotalSegmentator writes
one statistics file per case too) and ``statistics.csv`` over all cases, one row per case and structure.
Computed from the files ``predict`` wrote and the inputs it read, so it also runs on an existing
prediction folder.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from autoseg.dataset.description import DatasetDescription
from autoseg.dataset.imageio import Geometry, geometry_differences, read_case_images, read_image
from autoseg.errors import AutosegError, InferenceError
from autoseg.evaluation.metrics import size_unit, voxel_volume_mm3
from autoseg.inference.batch import PredictReport, output_ending
from autoseg.inference.input_cases import InputCase, channel_files, discover_cases
from autoseg.utils.atomic import atomic_write_json, atomic_write_text, folder_lock
from autoseg.utils.jsonio import read_json
from autoseg.utils.output_folders import refuse_folder_among
from autoseg.utils.probability_files import SIDECAR_SUFFIX, probability_paths

PERCENTILES = (5, 25, 50, 75, 95)
CASE_SUFFIX = "_statistics.json"
SUMMARY_CSV = "statistics.csv"


def _intensities(values: np.ndarray) -> dict[str, float | None]:
    """Mean and percentiles of ``values`` (``None`` for an empty structure)."""
    if values.size == 0:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    values = values.astype(np.float64, copy=False)
    return {"mean": float(values.mean()), **{f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}}


def _components(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))[1])


def case_statistics(
    labels: np.ndarray, data: np.ndarray, geometry: Geometry, description: DatasetDescription
) -> dict[str, Any]:
    """Statistics of one case: ``labels`` (z, y, x) as ``predict`` writes them, ``data`` (C, z, y, x) the
    input channels on the same grid. A region is the union of its label values."""
    if data.shape[1:] != labels.shape:
        raise InferenceError(f"labels of shape {labels.shape} do not match the input's {data.shape[1:]}; predict again")
    voxel_mm3 = voxel_volume_mm3(labels.shape, geometry.spacing)
    channels = [description.channel_names.get(str(c), str(c)) for c in range(data.shape[0])]
    structures = {}
    for name, values in description.regions:
        mask = np.isin(labels, values)
        voxels = int(mask.sum())
        structures[name] = {
            "labels": values,
            "voxels": voxels,
            "volume_mm3": voxels * voxel_mm3,
            "components": _components(mask),
            "intensity": {f"{c}:{channel}": _intensities(data[c][mask]) for c, channel in enumerate(channels)},
        }
    # size_unit: a 2D image's volume_mm3 are areas (mm^2), which the keys' names do not say
    return {"spacing": list(geometry.spacing), "voxel_volume_mm3": voxel_mm3, "size_unit": size_unit(labels.shape),
            "percentiles": list(PERCENTILES), "structures": structures}


def _csv_rows(case_id: str, stats: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, entry in stats["structures"].items():
        # size_unit: a 2D image's volume_mm3 are areas, which the column's name does not say (statistics
        # files of earlier versions record none: left empty)
        row = {"case": case_id, "structure": name, "voxels": entry["voxels"], "volume_mm3": entry["volume_mm3"],
               "size_unit": stats.get("size_unit", ""), "components": entry["components"]}
        for channel, values in entry["intensity"].items():
            row.update({f"{channel}:{key}": "" if value is None else value for key, value in values.items()})
        rows.append(row)
    return rows


def summary_csv(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def statistics_path(output: Path, case_id: str) -> Path:
    """Where a case's statistics go: the one place their name is made."""
    return output / f"{case_id}{CASE_SUFFIX}"


def refuse_name_clashes(input_path: str | Path, output_folder: str | Path, save_probabilities: bool) -> None:
    """Refuse, before predicting, a case whose statistics would replace another case's probabilities'
    sidecar: case ``x``'s ``x_statistics.json`` is also the sidecar of a case named ``x_statistics``
    (``predict --save-probabilities --statistics``, or saved by an earlier run), which was overwritten.
    Every case of the input counts, not only this part's: ``--num-parts`` runs share the folder."""
    output = Path(output_folder)
    cases = {case.case_id for case in discover_cases(input_path, quiet=True)}  # predict_folder notes skipped files
    # A folder where a statistics file goes: every case was predicted, then writing the file failed.
    refuse_folder_among([output / SUMMARY_CSV, *(statistics_path(output, case_id) for case_id in sorted(cases))],
                        "autoseg predict --statistics", InferenceError)
    for case_id in sorted(cases):
        path = statistics_path(output, case_id)
        owner = path.name.removesuffix(SIDECAR_SUFFIX)  # the case whose sidecar has this name
        if owner in cases and (save_probabilities or probability_paths(output, owner).probabilities.exists()):
            raise InferenceError(
                f"cases {case_id} and {owner}: the statistics of {case_id} and the probabilities' sidecar of {owner} "
                f"would both be {path}; rename the input files of case {owner} (e.g. {case_id}_stats_0000...), or "
                "leave out --statistics or --save-probabilities"
            )


def _case_statistics_from_files(case: InputCase, output: Path, description: DatasetDescription) -> dict[str, Any]:
    files = channel_files(case, description.channel_names)
    data, geometry = read_case_images(files)
    label_file = output / f"{case.case_id}{output_ending(case, description.file_ending)}"
    if not label_file.is_file():
        raise InferenceError(f"{label_file}: prediction not found; predict case {case.case_id} first")
    labels, label_geometry = read_image(label_file)
    _refuse_other_grid((label_file, labels.shape, label_geometry), (files[0], data.shape[1:], geometry), case.case_id)
    return case_statistics(labels, data, geometry, description)


Grid = tuple[Path, Sequence[int], Geometry]  # a file, its (spatial) shape and geometry


def _refuse_other_grid(label_map: Grid, image: Grid, case_id: str) -> None:
    """Refuse a label map not on its image's grid: ``predict --continue --statistics`` over images whose spacing or
    origin was corrected since kept the earlier label map, and its volumes were computed with the new image's spacing
    (and its intensities read at other places) without a word; predict writes each label map on its image's grid.
    A shape differing too was refused naming neither file."""
    (label_file, label_shape, label_geometry), (image_file, image_shape, geometry) = label_map, image
    differences = geometry_differences(label_geometry, geometry)
    if tuple(label_shape) != tuple(image_shape):
        differences.insert(0, f"shape {tuple(label_shape)} vs {tuple(image_shape)}")
    if differences:
        raise InferenceError(
            f"{label_file}: the label map is not on the grid of its image {image_file} (label map vs image: "
            f"{'; '.join(differences)}); it was predicted from other images: predict case {case_id} again (without "
            "--continue)"
        )


def write_statistics(
    input_path: str | Path, output_folder: str | Path, description: DatasetDescription, case_ids: Sequence[str] | None = None
) -> Path:
    """Write ``<case>_statistics.json`` for every predicted case of ``input_path`` (or ``case_ids``) into
    ``output_folder``, then ``statistics.csv`` over every case of the input whose statistics are there;
    returns the CSV's path.

    The CSV covers the whole folder, not only ``case_ids``: ``--num-parts`` runs share it, and each wrote a
    CSV of its own part over the others'. It is written under the folder's lock, so the part that writes
    last (whichever it is) sees every other part's files."""
    output = Path(output_folder)
    cases = discover_cases(input_path, quiet=True)  # the predictions' input: predict_folder noted its skipped files
    chosen = cases if case_ids is None else [c for c in cases if c.case_id in set(case_ids)]
    # every case computed before any is written: a case refused (a label map off its image's grid) after others
    # were written left their statistics without a statistics.csv, a partial output
    computed = {case.case_id: _case_statistics_from_files(case, output, description) for case in chosen}
    for case_id, stats in computed.items():
        atomic_write_json(statistics_path(output, case_id), {"case_id": case_id, **stats})
    rows = []
    with folder_lock(output):
        for case in cases:
            path = statistics_path(output, case.case_id)
            if path.is_file():
                stats = read_json(path, InferenceError, "vanished while being read; predict with --statistics again",
                                  "delete it and predict with --statistics again")
                if not isinstance(stats, dict) or not isinstance(stats.get("structures"), dict):
                    raise InferenceError(f"{path}: not a statistics file (another case's probabilities' sidecar?); "
                                         "move it away and predict with --statistics again")
                rows += _csv_rows(case.case_id, stats)
        atomic_write_text(output / SUMMARY_CSV, summary_csv(rows))
    return output / SUMMARY_CSV


def predict_with_statistics_on_failure(
    predict: Callable[[], PredictReport], input_path: str | Path, output_folder: str | Path
) -> PredictReport:
    """``predict()`` (``predict_folder`` of ``input_path`` into ``output_folder``); where cases failed, the statistics
    of the others are written (``run_statistics``) before the run's error is raised, naming them: the error was raised
    first, and the cases predicted got none. A run that succeeds writes none here: the caller reports what was
    predicted first, then writes them, so a failure of the statistics (a full disk) does not hide that line."""
    try:
        return predict()
    except InferenceError as exc:
        failed_run = getattr(exc, "report", None)
        if not isinstance(failed_run, PredictReport) or _run_statistics_missing(failed_run):
            raise
        raise _with_statistics_note(exc, failed_run, input_path, output_folder) from None


def run_statistics(report: PredictReport, input_path: str | Path, output_folder: str | Path) -> Path | None:
    """``write_statistics`` of the cases ``report`` predicted or skipped, None where there are none."""
    if _run_statistics_missing(report):
        return None
    assert report.dataset is not None
    return write_statistics(input_path, output_folder, report.dataset, report.predicted + report.skipped)


def _run_statistics_missing(report: PredictReport) -> bool:
    """Whether ``report``'s run has no statistics to write: no case written or kept (a ``--num-parts`` part without
    cases), or no dataset description to name the structures."""
    return not (report.predicted or report.skipped) or report.dataset is None


def _with_statistics_note(
    exc: InferenceError, report: PredictReport, input_path: str | Path, output_folder: str | Path
) -> InferenceError:
    """The failed run's error ``exc`` with where the statistics of its other cases went (or why they did not)."""
    count = len(report.predicted) + len(report.skipped)
    try:
        note = f"statistics of the {count} other case(s): {run_statistics(report, input_path, output_folder)}"
    except AutosegError as problem:
        note = f"statistics not written: {problem}"
    error = InferenceError(f"{exc}; {note}")
    error.report = report  # type: ignore[attr-defined]
    return error
