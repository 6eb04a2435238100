"""``autoseg report``: one self-contained HTML file summarising a dataset's cross-validation.

Contents: the cross-validation table of every candidate ``find-best`` ranked (class Dice as mean +- SD
over cases, foreground means of Dice, IoU, HD95, ASSD, NSD), per-class Dice box plots, the training
curves of every configuration (whatever numeric keys ``metrics.jsonl`` holds, one line per fold), and
overlays of the best and worst case of the chosen candidate (image slice with reference and
prediction contours). Figures are PNGs embedded as base64 and also saved beside the HTML, the CSS is
inline, and nothing refers to the network, so the file opens offline and pastes into a supplement.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from autoseg import __version__
from autoseg.dataset.description import DatasetDescription, load_description
from autoseg.dataset.imageio import read_image, read_image_channels
from autoseg.errors import DatasetError, EvaluationError
from autoseg.evaluation.metrics import evaluation_classes
from autoseg.evaluation.selection import (
    INSTRUCTIONS_JSON, MissingFoldsError, find_best, inference_commands, resolve_instructions,
)
from autoseg.paths import DatasetLocation, dataset_folders, preprocessed_root, raw_root, resolve_dataset, results_root
from autoseg.utils.atomic import atomic_write_bytes, atomic_write_text
from autoseg.utils.finite import is_finite_number
from autoseg.utils.jsonio import read_json
from autoseg.utils.output_folders import check_output_file, output_file, refuse_image_name

FIGURE_DPI = 110
# Names of the figures saved beside the HTML (after ``<stem>_``): the box plot, a model folder's curves
# (``<network>__<plans>__<configuration>``) and the best/worst (or only) case. Only files of these exact forms
# are removed as an earlier report's: ``report_case_notes.png`` beside ``report.html`` is the user's.
FIGURE_NAME = re.compile(r"(dice_boxplot|training_[^_]\S*__\S+__\S+|case_(best|worst|only)_\S+)\.png")
CLASS_COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
FOLD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
NOT_PLOTTED = ("epoch", "timestamp")  # the x axis, and wall-clock time (not a training curve)
IMAGE_WINDOW_PERCENTILES = (0.5, 99.5)  # display window of overlay images
TABLE_METRICS = (("dice", "Dice", 4), ("iou", "IoU", 4), ("hd95", "HD95 mm", 2), ("assd", "ASSD mm", 2), ("nsd", "NSD", 4))
# What the report reads of inference_instructions.json and of each candidate's summary.json.
INSTRUCTIONS_KEYS = ("candidates", "best", "folds", "num_cases", "rank_metric", "commands")
SUMMARY_KEYS = ("mean", "foreground_mean", "metric_per_case", "num_cases")
# The fields of each candidate record (and of the best's) the report reads, with their JSON types.
CANDIDATE_FIELDS = {"name": str, "summary_file": str, "model_folders": list}
BEST_FIELDS = {**CANDIDATE_FIELDS, "postprocessing_file": str, "postprocessing_steps": list}
CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #bbb;padding:.3em .55em;text-align:right}th{background:#f0f0f0}
td.name,th.name{text-align:left;font-family:monospace}tr.best{background:#fff6cc;font-weight:600}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
code{background:#f4f4f4;padding:.1em .3em}pre{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-all}
.note{color:#666;font-size:.9em}
"""


def short_name(candidate_name: str) -> str:
    """``network/config`` for a model folder, ``A + B`` for an ensemble (plans names are the same)."""
    members = candidate_name.removeprefix("ensemble___").split("___")
    parts = [m.split("__") for m in members]
    return " + ".join(f"{p[0]}/{p[2]}" if len(p) == 3 else "__".join(p) for p in parts)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _fmt(value: Any, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


# ----------------------------------------------------------------------------------------------- figures


def case_dice(summary: dict[str, Any], class_name: str) -> list[float]:
    """Per-case Dice of one class, cases empty in both left out (reference §1.7)."""
    values = [row["metrics"][class_name]["dice"] for row in summary["metric_per_case"]]
    return [v for v in values if v is not None and math.isfinite(v)]


def dice_boxplot(summaries: dict[str, dict[str, Any]], class_names: Sequence[str]) -> Figure:
    """One panel per class, one box per candidate (best first)."""
    labels = [short_name(name) for name in summaries]
    figure = Figure(figsize=(max(4.0, 0.9 * len(labels) + 2) * len(class_names), 4.2))
    axes = figure.subplots(1, len(class_names), squeeze=False)[0]
    for ax, class_name in zip(axes, class_names):
        data = [case_dice(s, class_name) for s in summaries.values()]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"Dice: {class_name}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    return figure


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """Epoch records of ``metrics.jsonl``; a line cut by a crash mid-write is skipped, as is an edited line Python's
    JSON reader refuses otherwise (bytes that are not UTF-8, an integer of over 4300 digits, deep nesting), which
    stopped the report with an internal error (the first even for every line of the file)."""
    records = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


# The largest magnitude a training run logs (its losses and metrics are float32): an edited line's -1e308 beside 1e308
# overflowed the curve's axis span and stopped the report (matplotlib: "arange: cannot compute length").
LARGEST_LOGGED_VALUE = float(np.finfo(np.float32).max)


def numeric_series(records: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Key -> (epochs, values) for every numeric key; lists (per-class pseudo-Dice) of finite numbers give their
    mean. A record whose epoch is no number (an edited line: ``"epoch": "a"`` or ``null`` stopped the report with
    an internal error) is skipped, as a line cut by a crash is, and so is a list holding a value no float holds
    (an edited ``[1e400-as-an-integer, 0.5]`` stopped it with an internal OverflowError in the mean), or a value
    beyond :data:`LARGEST_LOGGED_VALUE`."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, record in enumerate(records):
        epoch = record.get("epoch", index)
        if not is_finite_number(epoch):
            continue
        for key, value in record.items():
            if key in NOT_PLOTTED:
                continue
            if isinstance(value, list) and value and all(is_finite_number(v) for v in value):
                key, value = f"{key} (mean of {len(value)})", float(np.mean(value))
            if is_finite_number(value) and abs(value) <= LARGEST_LOGGED_VALUE:
                xs, ys = series.setdefault(key, ([], []))
                xs.append(float(epoch))
                ys.append(float(value))
    return series


def training_curves(model_folder: Path) -> Figure | None:
    """Panels: all losses together, then one per other numeric key; one line per fold."""
    logs = {p.parent.name: read_metrics_log(p) for p in sorted(model_folder.glob("fold_*/metrics.jsonl"))}
    per_fold = {fold: numeric_series(records) for fold, records in logs.items() if records}
    keys = sorted({k for series in per_fold.values() for k in series})
    if not keys:
        return None
    panels = [[k for k in keys if "loss" in k]] + [[k] for k in keys if "loss" not in k]
    panels = [p for p in panels if p]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(4.6 * columns, 3.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    styles = ("-", "--", ":", "-.")
    for ax, panel in zip(axes, panels):
        for f, (fold, series) in enumerate(per_fold.items()):
            for s, key in enumerate(panel):
                if key in series:
                    label = f"{fold} {key}" if len(panel) > 1 else fold
                    ax.plot(*series[key], styles[s % len(styles)], color=FOLD_COLORS[f % len(FOLD_COLORS)], label=label, lw=1.2)
        ax.set_title(" / ".join(panel), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(model_folder.name, fontsize=10)
    return figure


def overlay_slice(reference: np.ndarray, prediction: np.ndarray, class_values: Sequence[int]) -> int:
    """The slice (first axis) with the most voxels of a class in reference or prediction. Only class values
    count: with ``label > 0`` the ignore label counted too, and a reference with whole slices ignored showed
    a slice of ignore alone, no reference contour on it."""
    labelled = np.isin(reference, class_values) | np.isin(prediction, class_values)
    return int(np.argmax(labelled.reshape(reference.shape[0], -1).sum(axis=1)))


def overlay(image: np.ndarray, reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
            classes: Sequence[tuple[str, tuple[int, ...]]], title: str) -> Figure:
    """Image slice with reference (solid) and prediction (dashed) contours per class.

    ``image`` is (z, y, x) grey, or (C, z, y, x) with C >= 3 for a colour image shown in its colours (R, G, B).
    """
    index = overlay_slice(reference, prediction, [v for _, values in classes for v in values])
    colour = image.ndim == 4
    picture = np.moveaxis(image[:3, index], 0, -1).astype(np.float32) if colour else image[index].astype(np.float32)
    low, high = np.percentile(picture, IMAGE_WINDOW_PERCENTILES)
    high = max(high, low + 1e-6)
    figure = Figure(figsize=(5.2, 5.2))
    ax = figure.subplots()
    if colour:
        ax.imshow(np.clip((picture - low) / (high - low), 0, 1), aspect=spacing[-2] / spacing[-1], interpolation="nearest")
    else:
        ax.imshow(picture, cmap="gray", vmin=low, vmax=high, aspect=spacing[-2] / spacing[-1], interpolation="nearest")
    handles = []
    for c, (name, values) in enumerate(classes):
        color = CLASS_COLORS[c % len(CLASS_COLORS)]
        # Reference wide and translucent, prediction thin and dashed: both stay visible where they agree.
        for seg, style, width, alpha, kind in ((reference, "solid", 3.0, 0.55, "reference"), (prediction, "dashed", 1.3, 1.0, "prediction")):
            mask = np.isin(seg[index], values).astype(np.float32)
            if mask.any() and not mask.all():
                ax.contour(mask, levels=[0.5], colors=[color], linestyles=style, linewidths=width, alpha=alpha)
            handles.append(ax.plot([], [], color=color, linestyle=style, lw=width, alpha=alpha, label=f"{name} {kind}")[0])
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.7)
    ax.set_title(f"{title} (slice {index})", fontsize=9)
    ax.set_axis_off()
    return figure


def case_foreground_dice(row: dict[str, Any]) -> float:
    """Mean Dice over the classes of one case (classes empty in both left out; NaN if all are)."""
    values = [m["dice"] for m in row["metrics"].values() if m["dice"] is not None and math.isfinite(m["dice"])]
    return float(np.mean(values)) if values else math.nan


def best_and_worst(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = [r for r in summary["metric_per_case"] if math.isfinite(case_foreground_dice(r))]
    if not rows:
        return []
    ordered = sorted(rows, key=lambda r: (case_foreground_dice(r), r["case_id"]))
    return [("best", ordered[-1]), ("worst", ordered[0])] if len(ordered) > 1 else [("only", ordered[0])]


def case_image(raw_dir: Path, description: DatasetDescription, case_id: str) -> Path | None:
    """The first channel's raw image of a case, from the explicit case list or ``imagesTr``."""
    if description.cases and case_id in description.cases:
        path = raw_dir / description.cases[case_id]["images"][0]
    else:
        path = raw_dir / "imagesTr" / f"{case_id}_0000{description.file_ending}"
    return path if path.exists() else None  # raw data absent (a results root copied elsewhere): a note


# -------------------------------------------------------------------------------------------------- html


def _table(candidates: Sequence[dict[str, Any]], summaries: dict[str, dict[str, Any]], class_names: Sequence[str],
           best: dict[str, Any]) -> str:
    head = ["#", "candidate", *(f"Dice {c}" for c in class_names), *(f"fg {label}" for _, label, _ in TABLE_METRICS), "cases"]
    lines = ["<table><tr>" + "".join(f"<th{' class=name' if h == 'candidate' else ''}>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for rank, candidate in enumerate(candidates, 1):
        summary = summaries[candidate["name"]]
        cells = [str(rank), f"<span title='{html.escape(candidate['name'])}'>{html.escape(short_name(candidate['name']))}</span>"]
        for class_name in class_names:
            values = case_dice(summary, class_name)
            sd = f" &plusmn; {np.std(values):.4f}" if values else ""
            cells.append(_fmt(summary["mean"][class_name].get("dice"), 4) + sd)
        cells += [_fmt(summary["foreground_mean"].get(key), digits) for key, _, digits in TABLE_METRICS]
        cells.append(str(summary["num_cases"]))
        css = " class=best" if candidate["name"] == best["name"] else ""
        lines.append(f"<tr{css}>" + "".join(f"<td{' class=name' if i == 1 else ''}>{c}</td>" for i, c in enumerate(cells)) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _regions_note(description: DatasetDescription) -> str:
    """What each region holds and how its label maps are written; empty for class-based datasets."""
    if not description.has_regions:
        return ""
    regions = "; ".join(f"{name}: labels {', '.join(map(str, values))}" for name, values in description.regions)
    order = ", ".join(map(str, description.regions_class_order or []))
    return (f"<p>Regions (one sigmoid output each; a region's Dice counts every voxel holding one of its labels): "
            f"{html.escape(regions)}. Label maps are written with regions_class_order {html.escape(order)}: region "
            "by region, voxels above 0.5 get its label, later regions overwriting earlier ones.</p>")


def _figure_html(name: str, data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{encoded}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


class _Figures:
    """Collects figures: each is saved as ``<stem>_<name>.png`` beside the HTML and embedded in it. They are
    saved by ``save`` once the whole report is made: saved one by one as they were drawn, a report that
    failed later (a damaged case) left its first figures behind."""

    def __init__(self, html_path: Path) -> None:
        self.html_path = html_path
        self.pending: dict[Path, bytes] = {}

    def add(self, name: str, figure: Figure, caption: str) -> str:
        data = _png(figure)
        self.pending[self.html_path.with_name(f"{self.html_path.stem}_{name}.png")] = data
        return _figure_html(name, data, caption)

    def save(self) -> None:
        for path, data in self.pending.items():
            atomic_write_bytes(path, data)

    def remove_stale(self) -> None:
        """Remove the figures an earlier report wrote beside the same HTML that this one did not write
        (another best or worst case, a configuration since removed): left there, they passed for this
        report's figures."""
        stem = self.html_path.stem
        for path in self.html_path.parent.glob(f"{glob.escape(stem)}_*.png"):
            if path not in self.pending and FIGURE_NAME.fullmatch(path.name[len(stem) + 1 :]):
                path.unlink(missing_ok=True)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _commands(instructions: dict[str, Any]) -> list[str]:
    """The inference commands, made again from the resolved paths: the stored ones name the results root
    find-best ran in, stale in a copied or moved one."""
    best = instructions["best"]
    return inference_commands([Path(f) for f in best["model_folders"]], instructions["folds"],
                              {"steps": best["postprocessing_steps"]}, Path(best["postprocessing_file"]))


def _read_find_best_json(path: Path, keys: Sequence[str], dataset_name: str) -> dict[str, Any]:
    """A JSON file ``find-best`` wrote (the instructions or a cross-validation summary), refused naming the
    file and the fix when it is missing, damaged (cut short, edited) or lacks one of ``keys``: the report
    reads several such files, and a raw parser error named none of them."""
    fix = f"re-run autoseg find-best {dataset_name}"
    data = read_json(path, EvaluationError, f"not found; {fix}", fix)
    missing = [key for key in keys if not isinstance(data, dict) or key not in data]
    if missing:
        raise EvaluationError(f"{path}: is not what autoseg find-best writes (no {', '.join(missing)}); {fix}")
    return data


def _check_instructions(instructions: dict[str, Any], path: Path, dataset_name: str) -> None:
    """The candidate records, best and folds the report reads, refused naming the file when edited or damaged:
    a candidate without its summary_file, a best without its postprocessing steps or among no candidates,
    or folds stored as numbers stopped the report with an internal error (KeyError, TypeError)."""
    candidates, best = instructions["candidates"], instructions["best"]
    if not isinstance(candidates, list) or not candidates or not all(_is_record(c, CANDIDATE_FIELDS) for c in candidates):
        problem = "candidates is not a non-empty list of find-best's candidate records"
    elif not _is_record(best, BEST_FIELDS) or not best["model_folders"] or best["name"] not in {c["name"] for c in candidates}:
        problem = "best is not one of its candidates with model folders and postprocessing steps"
    elif not _is_names(instructions["folds"]):
        problem = "folds is not a list of fold names"
    elif not isinstance(instructions["rank_metric"], str):
        problem = "rank_metric is not a text"
    else:
        return
    raise EvaluationError(f"{path}: is not what autoseg find-best writes ({problem}); re-run autoseg find-best {dataset_name}")


def _check_summary_classes(summary: dict[str, Any], path: Path, class_names: Sequence[str], dataset_name: str) -> None:
    """A cross-validation summary must hold the Dice of every class of the model's dataset.json, in its means
    and in each case's row: a label renamed in dataset.json after find-best ran, or an edited summary,
    stopped the report with an internal error (KeyError)."""
    means, rows = summary["mean"], summary["metric_per_case"]
    rows_ok = isinstance(rows, list) and all(
        isinstance(row, dict) and isinstance(row.get("metrics"), dict)
        and all(isinstance(row.get(key), str) for key in ("case_id", "prediction_file", "reference_file")) for row in rows
    )
    missing = [name for name in class_names if not (
        isinstance(means, dict) and isinstance(means.get(name), dict)
        and rows_ok and all(isinstance(row["metrics"].get(name), dict) and "dice" in row["metrics"][name] for row in rows)
    )]
    if missing:
        raise EvaluationError(f"{path}: holds no Dice of {', '.join(missing)} for every case, classes of the model's "
                              f"dataset.json (renamed since find-best ran, or the file was edited); re-run autoseg "
                              f"find-best {dataset_name}")


def _is_record(record: Any, fields: dict[str, type]) -> bool:
    """``record`` is a JSON object holding each of ``fields`` with its type, and model folders named by strings."""
    return (isinstance(record, dict) and all(isinstance(record.get(key), kind) for key, kind in fields.items())
            and _is_names(record["model_folders"]))


def _is_names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def model_folders_of(instructions: dict[str, Any]) -> list[str]:
    """The model folders of every candidate, each once, in ranking order."""
    return list(dict.fromkeys(f for c in instructions["candidates"] for f in c["model_folders"]))


def _check_output_not_read(output: Path, folders: Sequence[Path]) -> None:
    """Refuse an ``-o`` of an image ending, or an existing file that is not an earlier report (``.html``): in
    ``folders`` (the dataset's raw and preprocessed folders, its results: find-best's instructions, models,
    cross-validations) ``-o <results>/<Dataset>/inference_instructions.json`` replaced find-best's instructions
    with the HTML; elsewhere ``-o images/case_0000.nii.gz`` replaced the user's scan (and a new one in a
    predictions folder was read as a label map there). Checked before find-best runs, which a missing
    instructions file starts: a refusal after it left its files written for a report that never came."""
    refuse_image_name(output, "the report is HTML", "give a .html file name, e.g. report.html", EvaluationError)
    target = output.resolve()
    if not target.is_file() or target.suffix.lower() in (".html", ".htm"):
        return
    if any(target.is_relative_to(f.resolve()) for f in folders):
        raise EvaluationError(f"{output}: is a file of find-best, a model or the dataset, which the report would "
                              "replace; give a new file name, e.g. report.html")
    raise EvaluationError(f"{output}: exists and is not an HTML report, which the report would replace; give a new "
                          "file name, e.g. report.html")


def _check_output_beside_no_cases(output: Path, datasets: Sequence[Path], crossvals: Sequence[Path]) -> None:
    """Refuse an ``-o`` in a folder of cases that autoseg reads: below the raw or preprocessed dataset folder
    (``imagesTr``, ``labelsTr``, ``gt_segmentations``, ...) or in a merged cross-validation. The report's PNG
    figures stood among the cases there: verify then refused the dataset, and in a PNG dataset they read as cases."""
    parent = output.resolve().parent
    inside = [d for d in datasets if parent != d.resolve() and parent.is_relative_to(d.resolve())]
    inside += [c for c in crossvals if parent.is_relative_to(c.resolve())]
    if inside:
        raise EvaluationError(f"{output}: lies in {inside[0]}, among the cases autoseg reads, where the report's figures "
                              "would stand among them; write it elsewhere (default: <results>/<Dataset>/report.html)")


REPORT_FILE = "report.html"


def report_dataset(dataset_spec: str | os.PathLike[str]) -> DatasetLocation:
    """The dataset to report on. Its raw folder gives only the overlays' images, so a results root copied to
    a machine without the raw data (the dataset not in its raw root) is found by its name in the results
    root: the report failed with 'not found in the raw root'; now the overlays say the images are missing."""
    try:
        return resolve_dataset(dataset_spec)
    except DatasetError:
        found = dataset_folders(results_root(), str(dataset_spec))
        if len(found) != 1 or dataset_folders(raw_root(), str(dataset_spec)):  # not an ambiguous raw name
            raise
        return DatasetLocation(found[0].name, raw_root() / found[0].name)


def build_report(dataset_spec: str | os.PathLike[str], output_html: str | os.PathLike[str] | None = None,
                 num_workers: int | None = None) -> Path:
    """Write the report (default ``<results>/<Dataset>/report.html``; a name ending in a separator is a folder to write
    ``report.html`` in) and its PNGs; returns the HTML path.

    Uses ``inference_instructions.json`` from ``find-best`` and runs it first when it is missing."""
    dataset = report_dataset(dataset_spec)
    dataset_results = results_root() / dataset.name
    output = output_file(dataset_results, output_html, REPORT_FILE)
    check_output_file(output, EvaluationError, REPORT_FILE)  # before its figures are written beside it
    dataset_folders = [dataset.raw_dir, preprocessed_root() / dataset.name]
    _check_output_not_read(output, [*dataset_folders, dataset_results])
    instructions = _instructions(dataset, dataset_results, num_workers)
    summaries, summary_files = _summaries(instructions, dataset.name)
    best = instructions["best"]
    description = load_description(Path(best["model_folders"][0]))
    classes, _ = evaluation_classes(description)
    class_names = [name for name, _ in classes]
    for name, summary in summaries.items():
        _check_summary_classes(summary, summary_files[name], class_names, dataset.name)
    _check_output_beside_no_cases(output, dataset_folders, [path.parent for path in summary_files.values()])
    figures = _Figures(output)
    sections = [
        *_cross_validation_sections(dataset.name, instructions, summaries, class_names, description),
        f"<h2>Per-{'region' if description.has_regions else 'class'} Dice</h2>",
        figures.add("dice_boxplot", dice_boxplot(summaries, class_names), "Dice per case and class (triangles: means)"),
        *_training_sections(figures, instructions),
        f"<h2>Best and worst case of {html.escape(short_name(best['name']))}</h2>",
    ]
    folders = (summary_files[best["name"]].parent, preprocessed_root() / dataset.name / "gt_segmentations")
    sections += _overlay_sections(figures, summaries[best["name"]], folders, dataset.raw_dir, description, classes)
    document = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
                f"<title>autoseg report {html.escape(dataset.name)}</title><style>{CSS}</style></head><body>"
                + "\n".join(sections) + "</body></html>\n")
    figures.save()
    atomic_write_text(output, document)
    figures.remove_stale()
    return output


def _instructions(dataset: DatasetLocation, dataset_results: Path, num_workers: int | None) -> dict[str, Any]:
    """find-best's stored instructions, checked and with their paths resolved; find-best is run when there are none,
    with its default folds and configurations. Its refusal for folds not trained (``MissingFoldsError``) then says
    why folds 0 to 4 were asked for, the report having no -f; its other errors (a full disk's ``DiskFullError``, no
    configuration that can be ranked) are raised as find-best raised them, whose advice on folds did not apply."""
    instructions_file = dataset_results / INSTRUCTIONS_JSON
    if not instructions_file.is_file():
        try:
            return find_best(dataset, num_workers=num_workers)
        except MissingFoldsError as exc:  # it names the find-best -f that ranks the folds trained; other errors as raised
            raise MissingFoldsError(
                f"{exc} (the report ran autoseg find-best with its default folds, as {instructions_file} does not exist; "
                "it reports the folds of the find-best run written there)"
            ) from None
    stored = _read_find_best_json(instructions_file, INSTRUCTIONS_KEYS, dataset.name)
    _check_instructions(stored, instructions_file, dataset.name)
    return resolve_instructions(stored, dataset_results.absolute())


def _summaries(instructions: Mapping[str, Any], dataset_name: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """Each candidate's cross-validation summary and its file, by candidate name; a missing one is refused."""
    summaries, summary_files = {}, {}
    for candidate in instructions["candidates"]:
        path = Path(candidate["summary_file"])
        if not path.is_file():
            raise EvaluationError(f"{path}: cross-validation summary missing; run autoseg find-best {dataset_name} again")
        summaries[candidate["name"]] = _read_find_best_json(path, SUMMARY_KEYS, dataset_name)
        summary_files[candidate["name"]] = path
    return summaries, summary_files


def _cross_validation_sections(dataset_name: str, instructions: Mapping[str, Any], summaries: Mapping[str, Any],
                               class_names: Sequence[str], description: DatasetDescription) -> list[str]:
    """The title, the ranking table, the chosen candidate and the commands that predict with it."""
    best = instructions["best"]
    return [
        f"<h1>autoseg cross-validation report: {html.escape(dataset_name)}</h1>",
        f"<p class=note>Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by autoseg {__version__}; "
        f"folds {', '.join(instructions['folds'])}; {instructions['num_cases']} cases; ranked by "
        f"{html.escape(instructions['rank_metric'])}.</p>",
        "<h2>Cross-validation</h2>",
        _table(instructions["candidates"], summaries, class_names, best),
        f"<p>Chosen: <code>{html.escape(best['name'])}</code>, mean foreground Dice {_fmt(best['foreground_dice'], 4)}, "
        f"after postprocessing ({len(best['postprocessing_steps'])} step(s)) "
        f"{_fmt(best['foreground_dice_postprocessed'], 4)}.</p>",
        "<p class=note>Class Dice: mean &plusmn; SD over cases; fg: mean over classes of the class means; "
        "cases where a class is empty in both prediction and reference are left out of its mean.</p>",
        _regions_note(description),
        "<pre>" + html.escape("\n".join(_commands(instructions))) + "</pre>",
    ]


def _training_sections(figures: _Figures, instructions: Mapping[str, Any]) -> list[str]:
    """One figure of training curves per model folder (a note for a folder without metrics.jsonl)."""
    sections = ["<h2>Training curves</h2>"]
    for folder in model_folders_of(instructions):
        figure = training_curves(Path(folder))
        if figure is None:
            sections.append(f"<p class=note>{html.escape(Path(folder).name)}: no metrics.jsonl found.</p>")
        else:
            sections.append(figures.add(f"training_{_safe(Path(folder).name)}", figure, f"{Path(folder).name}: one line per fold"))
    return sections


def _overlay_sections(figures: _Figures, summary: dict[str, Any], folders: tuple[Path, Path], raw_dir: Path,
                      description: DatasetDescription, classes: Sequence[tuple[str, tuple[int, ...]]]) -> list[str]:
    """The best and worst case's overlays. ``folders``: the cross-validation folder, where find-best
    evaluated the predictions beside the summary, and the reference folder of the preprocessed root in
    use (else the summary's reference): the summary's absolute paths name the roots find-best ran with,
    stale in copied or moved ones."""
    crossval_dir, gt_dir = folders
    sections = []
    for which, row in best_and_worst(summary):
        case_id, dice = row["case_id"], case_foreground_dice(row)
        image_path = case_image(raw_dir, description, case_id)
        if image_path is None:
            sections.append(f"<p class=note>{html.escape(case_id)}: raw image not found in {html.escape(str(raw_dir))}.</p>")
            continue
        channels, _, _ = read_image_channels(image_path)
        image = channels if channels.shape[0] >= 3 else channels[0]  # colour PNGs in colour, else the first channel
        reference_file = gt_dir / Path(row["reference_file"]).name
        reference_file = reference_file if reference_file.is_file() else Path(row["reference_file"])
        reference, geometry = read_image(reference_file)
        prediction_file = crossval_dir / Path(row["prediction_file"]).name
        prediction, _ = read_image(prediction_file)
        _check_same_shape(case_id, {image_path: image.shape[-reference.ndim:], reference_file: reference.shape,
                                    prediction_file: prediction.shape})
        title = f"{which}: {case_id}, mean Dice {dice:.4f}"
        figure = overlay(image, reference, prediction, geometry.spacing, classes, title)
        sections.append(figures.add(f"case_{which}_{_safe(case_id)}", figure, f"{title}; solid: reference, dashed: prediction"))
    return sections


def _check_same_shape(case_id: str, shapes: dict[Path, tuple[int, ...]]) -> None:
    """The image, reference and prediction of an overlay must have one shape: a reference or raw image
    replaced since find-best evaluated the case stopped the report with numpy's broadcast error."""
    if len(set(shapes.values())) > 1:
        listed = "; ".join(f"{path}: {'x'.join(map(str, shape))}" for path, shape in shapes.items())
        raise EvaluationError(f"{case_id}: its image, reference and prediction differ in shape ({listed}); one was "
                              "replaced since find-best evaluated it (or the preprocessed root is another one): restore "
                              "it, or re-run autoseg find-best")
