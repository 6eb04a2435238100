"""``autoseg predict``: segment a folder of cases (or one file, or DICOM series folders) into a folder.

The cases are found by ``input_cases`` (``discover_cases``, ``channel_files``, ``InputCase``, imported here as before).

Robust batch runs (issue 7): a case that cannot be read or does not fit the model is reported by name
while the others complete, and the run raises ``InferenceError`` at the end; ``continue_`` skips cases
whose outputs exist (every output is written atomically, so an existing file is a complete one);
``num_parts``/``part_id`` shard the cases across machines. Outputs lie in the input's geometry.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from autoseg.dataset.description import DatasetDescription
from autoseg.dataset.imageio import (
    NATURAL_2D_ENDINGS,
    SITK_ENDINGS,
    Geometry,
    case_nonfinite_voxels,
    geometry_differences,
    header_grid,
    ignored_sform_warning,
    image_ending,
    is_orthonormal,
    itk_header_reader,
    itk_reads_spelling,
    read_case_images,
    read_image,
    reader_grid,
    space_units_warning,
    unwritable_problem,
    voxel_data_cut_short,
    write_image,
)
from autoseg.errors import AutosegError, DatasetError, InferenceError
from autoseg.inference.engine import DEFAULT_CHECKPOINT, LoadedModel, require_torch
from autoseg.inference.input_cases import InputCase, channel_files, discover_cases
from autoseg.inference.predictor import Prediction, predict_array
from autoseg.inference.tiling import DEFAULT_STEP, check_batch_tiles, check_step
from autoseg.utils.atomic import (
    atomic_write_json, disk_full_error, folder_lock, remove_stale_temporaries, require_writable,
)
from autoseg.utils.checksummed_zip import checkpoint_kind
from autoseg.utils.names import string_list
from autoseg.utils.output_folders import PREDICT_RECORD, check_output_folder, refuse_outputs_not_ours
from autoseg.utils.probability_files import PROBABILITIES_KEY, probability_paths, read_sidecar, write_probability_files
from autoseg.utils.progress import Failure, track

if TYPE_CHECKING:  # the onnxruntime engine runs without torch: the torch engine imports it where it runs
    import torch

DEFAULT_OUTPUT_ENDING = ".nii.gz"
# Formats whose header stores any direction matrix; NIfTI's stores a rotation only.
ANY_DIRECTION_ENDINGS = (".mha", ".mhd", ".nrrd", ".nhdr")
PREDICT_INFO = PREDICT_RECORD  # also what marks a folder as autoseg's for ensemble and postprocess apply
# predict_info.json keys that must agree for two runs to share an output folder.
SAME_RUN_KEYS = ("configuration", "plans_name", "folds", "checkpoint", "step", "tta", "autocast_dtype")


@dataclass
class PredictReport:
    """What a run did: cases predicted, skipped (``continue_``), and failed (with the reason), the warnings it
    printed (``warn``), and the model's dataset description (labels, channels) for what runs on the outputs
    next."""

    output_folder: Path
    dataset: DatasetDescription | None = None
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def warn(self, warning: str) -> None:
        """Record ``warning`` and print it to stderr at once (above the progress bar), as training's monitor
        prints: a long run shows it when its case is predicted, not only in the report at the end."""
        self.warnings.append(warning)
        print(f"WARNING {warning}", file=sys.stderr, flush=True)


def blank_image_warning(case_id: str, files: Sequence[Path], data: np.ndarray) -> str | None:
    """The warning for a case whose image holds one value in every voxel (an all-zero file: a failed export
    or conversion), None otherwise: predicted without a word, it gave a label map (foreground, often) that says
    nothing about the case. Checked per file; a file holding several channels (a colour image) is blank when
    each of them is. Predicted all the same, as verify only warns of such training images."""
    constant = [bool(channel.size) and channel.min() == channel.max() for channel in data]
    if len(files) == len(data):
        blank = [f"{path} holds {_file_value(path, channel)}" for path, channel, flat in zip(files, data, constant) if flat]
    elif all(constant):  # colour file(s): one value per channel
        values = ", ".join(_number(channel.flat[0]) for channel in data)
        blank = [f"{', '.join(map(str, files))} {'holds' if len(files) == 1 else 'hold'} ({values})"]
    else:
        blank = []
    if not blank:
        return None
    return (f"case {case_id}: {'; '.join(blank)} in every voxel (a blank image: a failed export or conversion?); its label "
            "map is predicted from no image content and means nothing: check the file")


FLOAT32_EXACT_INTEGERS = 2**24  # float32 holds every whole number up to this; a larger one may be rounded


def _file_value(path: Path, channel: np.ndarray) -> str:
    """The value a blank file holds as the file stores it: cases are read as float32, which rounds integers
    beyond 2**24 (a uint64 file of 2**64-1 was shown as 18446744073709552000), so such a file is read again
    in its own dtype (only a blank file, and only then)."""
    value = channel.flat[0]
    if np.issubdtype(channel.dtype, np.floating) and float(value).is_integer() and abs(value) > FLOAT32_EXACT_INTEGERS:
        value = read_image(path)[0].flat[0]
    return _number(value)


def _number(value: Any) -> str:
    """An integer exactly (through float, 2**64-1 became 18446744073709552000), a float without trailing zeros."""
    if np.issubdtype(np.asarray(value).dtype, np.integer):
        return str(int(value))
    return np.format_float_positional(float(value), trim="-")


def read_finite_case(files: Sequence[Path], channel_names: Mapping[str, str]) -> tuple[np.ndarray, Geometry]:
    """``read_case_images`` for the model's channels (``channel_names``), refusing NaN/Inf by file name (in
    NIfTI files, whose reader silently turns them into numbers, from the file's own bytes)."""
    # first: its messages for unreadable files are the specific ones
    data, geometry = read_case_images(files, len(channel_names), model_channels=channel_names)
    found = case_nonfinite_voxels(files, data)
    if found is not None:
        where, nan, inf = found
        raise InferenceError(f"{where}: holds {nan} NaN and {inf} infinite voxel(s); replace them (e.g. by the "
                             "background value) and export the image again")
    return data, geometry


def _nifti_holds(path: Path) -> bool:
    """Whether NIfTI holds the image of ``path`` as its header describes it: an orthonormal direction matrix
    (to ``GEOMETRY_TOLERANCE``; ITK writes a sheared one as its nearest rotation) and at most 32767 voxels a
    side (an NRRD of 8x2x40000 was predicted in full and then refused at the write). An unreadable header
    counts as held; reading the case reports it. So does a DICOM series folder, unprobed (ImageFileReader on a
    folder printed HDF5 diagnostics for every DICOM case): its direction is a rotation, as GDCM reads it or
    refused (``read_image``), and no series comes near 32767 voxels a side. A named pipe or device, unprobed too
    (ITK waited on it for ever), is refused by name when the case is read."""
    if not path.is_file() or (reader := itk_header_reader(path)) is None:
        return True
    return is_orthonormal(reader.GetDirection()) and unwritable_problem(Path(f"label{DEFAULT_OUTPUT_ENDING}"), reader.GetSize(), np.uint8) is None


def output_ending(case: InputCase, dataset_ending: str) -> str:
    """The dataset's ending, spelled as in dataset.json, when the input uses it in any case (``.NII.GZ``
    inputs give ``.NII.GZ`` label maps, which evaluate finds beside the dataset's labels); a 2D image's
    own (PNG in, PNG label map out); else .nii.gz (DICOM and foreign 3D formats), except for an image NIfTI
    cannot hold (a sheared direction, a side over 32767 voxels): a MetaImage or NRRD input keeps its own
    format, any other becomes .nrrd, which holds both."""
    if case.ending == dataset_ending.lower():
        return dataset_ending
    if case.ending in NATURAL_2D_ENDINGS:
        return case.ending
    if _nifti_holds(next(iter(case.channels.values()))):
        return DEFAULT_OUTPUT_ENDING
    return case.ending if case.ending in ANY_DIRECTION_ENDINGS else ".nrrd"


def shard(cases: Sequence[InputCase], num_parts: int, part_id: int) -> list[InputCase]:
    """Every ``num_parts``-th case starting at ``part_id`` (cases sorted by id: parts are disjoint)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise InferenceError(
            f"--part-id {part_id} with --num-parts {num_parts}: need num_parts >= 1 and 0 <= part_id < num_parts"
        )
    return list(cases[part_id::num_parts])


def _outputs(case: InputCase, output: Path, ending: str, save_probabilities: bool) -> list[Path]:
    """Output files of a case; the label file comes last (written last, so it marks completion)."""
    files = list(probability_paths(output, case.case_id)) if save_probabilities else []
    return files + [output / f"{case.case_id}{ending}"]


# File names of a predictions folder that mean something else than a case's probabilities' sidecar: the run record, and
# the description evaluate, postprocess and ensemble look for beside the predictions (a case named 'dataset' saved
# with --save-probabilities left its sidecar there, and evaluate refused the folder as holding a broken dataset.json;
# one named 'plans' left a plans.json that postprocess apply took for the model's).
RESERVED_OUTPUT_NAMES = {
    PREDICT_INFO: "the file that records this run's model and settings",
    "dataset.json": "the name evaluate, postprocess and ensemble read as the predictions' dataset description",
    "plans.json": "the name postprocess apply copies beside its label maps as the model's plans",
}


def check_output_names(case: InputCase, files: Sequence[Path]) -> None:
    """Refuse a case whose output would be one of ``RESERVED_OUTPUT_NAMES`` (the sidecar of a case named
    ``predict_info``, ``dataset`` or ``plans``): the run record would be lost and every later run into the folder
    refused, or the sidecar read as the dataset's description (or copied as the plans). Refuse
    one whose output name is taken by a folder (it failed after its prediction with a bare
    IsADirectoryError, and ``--continue`` took the folder for a finished case)."""
    folders = [f for f in files if f.is_dir()]
    if folders:
        raise InferenceError(f"case {case.case_id}: its output {folders[0]} is a folder; move or rename that folder")
    clash = [f for f in files if f.name in RESERVED_OUTPUT_NAMES]
    if clash:
        raise InferenceError(
            f"case {case.case_id}: its probabilities' sidecar would be {clash[0]}, "
            f"{RESERVED_OUTPUT_NAMES[clash[0].name]}; rename the case's input files (e.g. "
            f"{case.case_id}_1_0000{case.ending})"
        )


def write_probabilities(
    prediction: Prediction, geometry: Geometry, model: LoadedModel, case_id: str, output: Path
) -> None:
    """``<case>.npz`` (float16 (C, z, y, x), input grid) and its JSON sidecar (utils/probability_files.py)."""
    assert prediction.probabilities is not None
    write_probability_files(output, case_id, prediction.probabilities, geometry, model.dataset.labels, model.regions_class_order)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory; predict on a machine with more RAM, or with --no-tta / fewer folds to shorten it"
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if isinstance(exc, AutosegError) else f"{type(exc).__name__}: {text}"


def _model_folder(model: LoadedModel | str | Path | tuple[str, str]) -> Path | None:
    """The folder of a model given by its path or ``(dataset, configuration)``, found without reading it; None for a
    model already loaded."""
    if isinstance(model, LoadedModel):
        return None
    if not isinstance(model, (str, os.PathLike, tuple)):
        raise InferenceError(f"model={model!r}: give a model folder, a (dataset, configuration) pair or a model "
                             "from load_model")
    require_torch()
    from autoseg.inference.model import find_model_folder, named_folder

    return find_model_folder(*model) if isinstance(model, tuple) else named_folder(Path(model))


def _resolve_model(
    model: LoadedModel | str | Path | tuple[str, str],
    output: Path,
    folds: Sequence[int | str] | str | None,
    checkpoint: str | None,
    device: str | torch.device | None,
    tta: bool,
) -> LoadedModel:
    """The model predict_folder runs into ``output``, refused where it is the model folder (before a model folder's
    weights are read); ``tta`` says whether it mirrors (folds trained with other mirror axes are refused only then)."""
    folder = _model_folder(model)
    if folder is None:
        assert isinstance(model, LoadedModel)
        refuse_other_settings(model, folds, checkpoint, device)
        model.tta_mirror_axes(tta)  # refused before any output where its folds share no mirror axes
        loaded = model
    else:
        from autoseg.inference.model import load_model

        refuse_output_in_folder(output, folder)  # before any weights are read
        loaded = load_model(folder, folds, DEFAULT_CHECKPOINT if checkpoint is None else checkpoint, device, tta=tta)
    refuse_output_in_model(output, loaded)  # a loaded model's folder, a cascade's low-resolution stage's
    return loaded


def refuse_output_in_model(output: Path, model: LoadedModel) -> None:
    """Refuse an output folder that is the model folder (a cascade's stage's too) or lies in it: ``-o`` given the
    ``-m`` folder, or a fold of it, put label maps and a predict_info.json among the model's plans and checkpoints,
    which export-model, find-best and the next predict read."""
    stage: LoadedModel | None = model
    while stage is not None:
        refuse_output_in_folder(output, stage.folder)
        stage = stage.previous_stage


def refuse_output_in_folder(output: Path, folder: Path) -> None:
    """``refuse_output_in_model`` for one model ``folder``, which need not be loaded: checked before its weights are
    read (every fold's were loaded, for minutes on a large model, before the refusal)."""
    target, resolved = output.resolve(), folder.resolve()
    if target.is_relative_to(resolved):
        where = "is the model folder" if target == resolved else f"lies in the model folder {folder}"
        raise InferenceError(f"{output}: {where}; predictions there would sit among the model's plans and "
                             "checkpoints: choose an output folder outside it")


def refuse_other_settings(
    model: LoadedModel, folds: Sequence[int | str] | str | None, checkpoint: str | None, device: str | torch.device | None
) -> None:
    """Refuse ``folds``, ``checkpoint`` or ``device`` given beside a loaded model that differ from its own:
    the loaded ones were used without a word (``folds=[1]`` predicted with the loaded fold 0). ``None`` is
    "not given": ``checkpoint='final'`` beside a model loaded with 'best' was taken for the default and let through.
    Checkpoints are compared by kind: ``final`` names the model loaded as ``checkpoint_final.safetensors``."""
    problems = []
    if folds is not None:
        asked = sorted(set(string_list(folds)))
        if asked != sorted(model.folds):
            problems.append(f"folds {asked} (the model holds folds {model.folds})")
    if checkpoint is not None and checkpoint_kind(checkpoint) != checkpoint_kind(model.checkpoint):
        problems.append(f"checkpoint {checkpoint!r} (the model holds {model.checkpoint!r})")
    if device is not None and str(device) != "auto" and not _same_device(device, model.device):
        problems.append(f"device {str(device)!r} (the model is on {str(model.device)!r})")
    if problems:
        raise InferenceError(
            f"model {model.folder} was loaded with other settings than {'; '.join(problems)}; leave them out "
            "(a loaded model predicts with its own), or load_model again with them"
        )


def _same_device(asked: str | torch.device, loaded: str | torch.device) -> bool:
    """Whether ``asked`` names ``loaded``'s device (``cuda`` names ``cuda:0``); torch is asked only then (the
    onnxruntime engine runs on ``cpu`` without it)."""
    if str(asked) == str(loaded):
        return True
    import torch

    want, have = torch.device(asked), torch.device(loaded)
    return want.type == have.type and want.index in (None, have.index)


def predict_folder(
    input_path: str | Path,
    output_folder: str | Path,
    model: LoadedModel | str | Path | tuple[str, str],
    folds: Sequence[int | str] | str | None = None,
    checkpoint: str | None = None,
    step: float = DEFAULT_STEP,
    tta: bool = True,
    save_probabilities: bool = False,
    device: str | torch.device | None = None,
    num_parts: int = 1,
    part_id: int = 0,
    continue_: bool = False,
    mixed_precision: str = "auto",
    batch_tiles: int | None = None,
    compile_networks: bool = False,
) -> PredictReport:
    """Predict every case of ``input_path`` into ``output_folder``; raise ``InferenceError`` if any failed.

    Args:
        input_path: a folder of ``<case>_XXXX<ending>`` files and/or DICOM series folders, one image
            file, or one DICOM series folder.
        output_folder: receives ``<case><ending>`` label maps (+ ``.npz``/``.json`` probabilities) and
            ``predict_info.json``.
        model: a model folder, ``(dataset, configuration)`` to look it up in the results root, or a
            model already loaded (then ``folds``, ``checkpoint``, ``device`` are the loaded ones: other
            values given are refused).
        folds, checkpoint, device: see ``load_model`` (``checkpoint`` None: ``final``, or a loaded model's own).
        step, tta, mixed_precision, batch_tiles: see ``predict_array``.
        save_probabilities: also write float16 probabilities with a JSON sidecar.
        num_parts, part_id: predict only this part of the sorted cases.
        continue_: skip cases whose outputs all exist.
        compile_networks: run each fold's network through ``torch.compile`` (pays a compilation on the
            first tile shape; measured worth it only for many tiles, docs/benchmarks.md).

    Returns the report; when cases failed, the raised ``InferenceError`` carries it as ``.report``.
    """
    start = time.perf_counter()
    check_step(step, InferenceError)  # every case would fail in its sliding window, or run for days
    check_batch_tiles(batch_tiles, InferenceError)
    input_path, output = Path(input_path), Path(output_folder)
    check_output_folder(output, InferenceError, [input_path], reads_subfolders=True)
    cases = shard(discover_cases(input_path), num_parts, part_id)
    loaded = _resolve_model(model, output, folds, checkpoint, device, tta)
    info = _predict_info(loaded, step, tta, save_probabilities, mixed_precision)  # checks the settings first
    _compile(loaded, compile_networks)
    info["compiled"] = compile_networks
    planned = {case.case_id: _outputs(case, output, output_ending(case, loaded.dataset.file_ending), save_probabilities)
               for case in cases}
    outputs = [f for files in planned.values() for f in files]
    finished = _prepare_output(output, info, outputs, cases, planned, continue_)
    report = PredictReport(output, dataset=loaded.dataset)
    for warning in input_header_warnings(cases):
        report.warn(warning)
    claim = functools.partial(claim_output_folder, output, info, outputs)
    _predict_cases(cases, planned, loaded, report, step, tta, save_probabilities, mixed_precision, batch_tiles, finished, claim)
    report.seconds = time.perf_counter() - start
    if report.failed:
        raise _failed_cases_error(report, len(cases), planned)
    return report


def _compile(loaded: LoadedModel, compile_networks: bool) -> None:
    """Put ``loaded``'s networks through ``torch.compile`` when asked; the onnxruntime engine has none to compile."""
    if not compile_networks:
        return
    if loaded.engine != "torch":
        raise InferenceError(f"--compile applies to the torch engine, not {loaded.engine}; leave it out")
    import torch

    loaded.networks = [torch.compile(network) for network in loaded.networks]


def _prepare_output(
    output: Path, info: dict[str, Any], outputs: Sequence[Path], cases: Sequence[InputCase],
    planned: Mapping[str, Sequence[Path]], continue_: bool,
) -> set[str]:
    """Refuse ``output`` before any case is predicted (another run's folder, one that cannot be made or written),
    make it and clear a killed run's temporaries; returns the cases ``--continue`` keeps (``_finished_cases``)."""
    check_predict_record(output, info, outputs)  # refused before predicting; the record waits for the first case
    output.mkdir(parents=True, exist_ok=True)  # an unwritable place is refused before predicting, too
    finished = _finished_cases(cases, planned) if continue_ else set()
    if not (continue_ and len(finished) == len(cases)):  # a finished folder, archived read-only, is no error
        require_writable(output)  # an existing folder that cannot be written is refused before predicting too
    remove_stale_temporaries(output)  # what a killed run left half-written
    return finished


def input_header_warnings(cases: Sequence[InputCase]) -> list[str]:
    """The run's warnings about its input files' headers, one line each for all cases (not one per case): NRRD
    spacing in another unit than mm (``space_units_warning``) and NIfTI files ITK places by their qform while their
    sform places them elsewhere (``ignored_sform_warning``), both read as nnU-Net reads them, as verify warns."""
    paths = [path for case in cases for path in case.channels.values()]
    return [line for line in (space_units_warning(paths), ignored_sform_warning(paths)) if line is not None]


def _failed_cases_error(report: PredictReport, count: int, planned: Mapping[str, Sequence[Path]]) -> InferenceError:
    """The error of a run whose cases ``report.failed``, carrying the report. A failed case's label map that exists is
    an earlier run's, of the input as it was then: named as such, since 'the others are in OUT' let it pass for this
    run's result (it is left in place: the failure may be passing, and the earlier result the one wanted)."""
    details = "; ".join(f"{f.key}: {f.message}" for f in report.failed)
    rest = f"the others are in {report.output_folder}" if report.predicted or report.skipped else "no case was predicted"
    stale = [str(planned[f.key][-1]) for f in report.failed if f.key in planned and planned[f.key][-1].is_file()]
    if stale:
        rest += (f"; {', '.join(stale)} {'is' if len(stale) == 1 else 'are'} left from an earlier run, not predicted from "
                 "the current input: fix the case and predict it again, or delete it")
    error = InferenceError(f"{len(report.failed)} of {count} case(s) failed ({details}); {rest}")
    error.report = report  # type: ignore[attr-defined]
    return error


def _predict_cases(
    cases: Sequence[InputCase], planned: Mapping[str, Sequence[Path]], loaded: LoadedModel, report: PredictReport,
    step: float, tta: bool, save_probabilities: bool, mixed_precision: str, batch_tiles: int | None,
    finished: set[str], claim: Callable[[], None],
) -> None:
    """Predict ``cases`` into their ``planned`` files, recording each in ``report``, skipping the ``finished`` ones
    (``_finished_cases``); a case that fails is
    recorded with its reason and the others go on. ``claim`` (``claim_output_folder``) makes the folder and
    writes the run record before the first case's files: a run that writes no case (every case refused)
    left a record of a model whose predictions the folder does not hold, and a rerun with another model or
    settings was refused as mixing two models' predictions. A refused claim ends the run: the folder is
    refused for every case (another model's run, started beside this one, claimed it meanwhile), and each
    case was predicted in full and then refused, the same message once per case."""
    output = report.output_folder
    claimed = False
    for case in track(cases, f"predict {loaded.configuration_name}"):
        files = planned[case.case_id]
        try:
            check_output_names(case, files)
            if case.case_id in finished:
                report.skipped.append(case.case_id)
                continue
            channels = loaded.dataset.channel_names
            inputs = channel_files(case, channels)
            data, geometry = read_finite_case(inputs, channels)
            if blank := blank_image_warning(case.case_id, inputs, data):
                report.warn(blank)
            prediction = predict_array(
                loaded, data, geometry, step=step, tta=tta, return_probabilities=save_probabilities,
                batch_tiles=batch_tiles, mixed_precision=mixed_precision, overwrite_input=True,
            )
            del data
        except Exception as exc:  # noqa: BLE001 - one case failing must not stop the others
            report.failed.append(Failure(case.case_id, _describe(exc)))
            continue
        if not claimed:
            claim()
            claimed = True
        try:
            if save_probabilities:
                write_probabilities(prediction, geometry, loaded, case.case_id, output)
            else:
                remove_superseded_probabilities(output, case.case_id)
            write_image(prediction.labels, geometry, files[-1])
            report.predicted.append(case.case_id)
        except Exception as exc:  # noqa: BLE001 - one case failing must not stop the others
            refuse_full_disk(exc, output, case.case_id, report)
            report.failed.append(Failure(case.case_id, _describe(exc)))


def _finished_cases(cases: Sequence[InputCase], planned: Mapping[str, Sequence[Path]]) -> set[str]:
    """The cases ``--continue`` keeps (``_finished``), decided before any case is predicted: a folder that cannot
    be written is then refused up front when any case is to be written again (a read-only folder holding a label
    map off its image's grid: that case was predicted in full, then refused as the run record was written)."""
    return {case.case_id for case in cases if _finished(case, planned[case.case_id])}


def _finished(case: InputCase, files: Sequence[Path]) -> bool:
    """Whether ``--continue`` keeps ``case``'s ``files``: all there and whole, and its label map (the last) on the grid
    of its image. One whose image's spacing or origin was corrected since was kept, off its image (and its superseded
    probabilities with it): it is predicted again, with a note saying why."""
    if not all(f.exists() for f in files):
        return False
    grid, damage = _label_map_grid(files[-1])
    damage = damage or _damaged_probabilities(case.case_id, files[:-1])
    if damage is not None:
        print(f"note: case {case.case_id}: {damage}; predicting it again", file=sys.stderr, flush=True)
        return False
    image = case.channels[min(case.channels)]
    differences = grid_differences(grid, image)
    if differences:
        print(f"note: case {case.case_id}: its label map {files[-1]} is not on the grid of its image {image} (label map "
              f"vs image: {'; '.join(differences)}); predicting it again", file=sys.stderr, flush=True)
    return not differences


def _label_map_grid(path: Path) -> tuple[tuple[tuple[int, ...], Geometry] | None, str | None]:
    """(``header_grid`` of the label map ``path`` that ``--continue`` found, why it is no finished output or None), from
    one read of its header: predict writes each atomically, but one emptied or cut short since (a copy interrupted, a
    full disk of a backup restored) was kept as a finished case, and evaluate then refused it. Its voxel data is
    measured as ``read_image`` measures it (a header intact, the voxels cut short, was kept)."""
    if path.is_file() and path.stat().st_size == 0:
        return None, f"its label map {path} is empty (0 bytes)"
    if image_ending(path) not in SITK_ENDINGS or not path.is_file():
        return None, _undecodable_label_map(path)
    if not itk_reads_spelling(path):
        spelled = path.name[-len(image_ending(path)):]
        return None, (f"its label map {path} ends in '{spelled}', a spelling of {image_ending(path)} that ITK, the "
                      "image reader, does not read")
    if (reader := itk_header_reader(path)) is None:
        return None, f"its label map {path} has a header ITK cannot read (damaged or cut short)"
    if voxel_data_cut_short(path):
        return None, f"its label map {path} is cut short (its voxel data ends before its header says)"
    return reader_grid(reader), None


def _undecodable_label_map(path: Path) -> str | None:
    """Why the label map ``path`` of a format ITK does not read (PNG, BMP, TIFF) is no finished output, or None: one
    cut short or damaged since was kept by ``--continue``. These formats have no header that says how long their
    data is (a PNG's ends in chunks, a TIFF's in strips anywhere in the file), so the image is decoded, as read."""
    if not path.is_file():
        return None
    try:
        read_image(path)
    except DatasetError:
        return f"its label map {path} cannot be decoded (damaged or cut short)"
    return None


def _damaged_probabilities(case_id: str, files: Sequence[Path]) -> str | None:
    """Why the probabilities ``files`` (the .npz and its sidecar, none without --save-probabilities) that ``--continue``
    found are no finished output, or None: an emptied or cut-short .npz was kept, and ensemble refused it. A cut zip
    fails to open cheaply (its directory is at its end); nothing is decompressed."""
    if not files:
        return None
    paths = probability_paths(files[0].parent, case_id)
    try:
        with zipfile.ZipFile(paths.probabilities) as archive:
            whole = f"{PROBABILITIES_KEY}.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        whole = False
    if not whole:
        return f"its probabilities {paths.probabilities} cannot be opened as a .npz (emptied, damaged or cut short)"
    try:
        read_sidecar(paths.probabilities.parent, case_id, InferenceError)
    except InferenceError as exc:
        return f"its probabilities' sidecar cannot be used ({exc})"
    return None


def grid_differences(label: tuple[tuple[int, ...], Geometry] | None, image_file: Path) -> list[str]:
    """How a label map's grid ``label`` (shape and geometry, ``header_grid``) differs from ``image_file``'s (shape,
    spacing, origin, direction), from headers alone; none where a header cannot tell (a DICOM series, a 2D picture, an
    unreadable header)."""
    image = header_grid(image_file)
    if label is None or image is None:
        return []
    differences = geometry_differences(label[1], image[1])
    if label[0] != image[0]:
        differences.insert(0, f"shape {label[0]} vs {image[0]}")
    return differences


def remove_superseded_probabilities(output: Path, case_id: str) -> None:
    """Remove the probabilities an earlier --save-probabilities run into ``output`` wrote for ``case_id``, now predicted
    again without them: they stayed beside the new label map, and ensemble averaged the old image's probabilities.
    Only a pair predict writes goes (the ``.npz`` with a sidecar of this case): a file of another kind stays."""
    paths = probability_paths(output, case_id)
    if not paths.probabilities.is_file():
        return
    try:
        sidecar = json.loads(paths.sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(sidecar, dict) and sidecar.get("case_id") == case_id:
        paths.probabilities.unlink(missing_ok=True)
        paths.sidecar.unlink(missing_ok=True)


def refuse_full_disk(exc: Exception, output: Path, case_id: str, report: PredictReport) -> None:
    """Stop the run when writing ``case_id`` failed on a full disk: every later case would fail the same way,
    each after its whole prediction, with the same bare 'No space left on device' once per case."""
    full = disk_full_error(exc, output / case_id)
    if full is None:
        return
    raise InferenceError(
        f"{output}: the disk of the output folder is full ({full.strerror}, writing case {case_id}; "
        f"{len(report.predicted)} case(s) written before it); free space or choose another -o, then rerun with "
        "--continue"
    ) from None


def _run_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' label maps comparable: the model (by name: a zip unpacks to a new temporary
    folder each time) and the settings that change the labels."""
    identity = {"model": Path(str(info.get("model_folder"))).name, **{k: info.get(k) for k in SAME_RUN_KEYS}}
    # The folder name is the same for every dataset's model of one network, plans and configuration: the
    # dataset tells them apart. Records written before it was kept lack it and are compared without it.
    if "dataset_name" in info:
        identity["dataset"] = info["dataset_name"]
    # A model retrained under the same folder name: --continue skipped the old model's outputs as done.
    if "weights_sha256" in info:
        identity["weights (sha256 of the networks' tensors)"] = (info["weights_sha256"] or "none")[:16]
    # A cascade's low-resolution stage retrained under its folder name: its labels are the cascade's input.
    previous = info.get("previous_stage")
    if isinstance(previous, dict) and "weights_sha256" in previous:
        identity["low-resolution stage weights"] = (previous["weights_sha256"] or "none")[:16]
    return identity


def check_predict_record(output: Path, info: dict[str, Any], outputs: Sequence[Path] = ()) -> None:
    """Refuse a folder whose ``predict_info.json`` records another model or settings than ``info``, or, without a
    record, label maps of this run's ``outputs``' endings: files predict did not write (a dataset's ``labelsTr``,
    another tool's predictions), refused rather than replaced or joined. Writes nothing; the folder need not exist."""
    path = output / PREDICT_INFO
    try:
        previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        previous = None  # unreadable: a killed writer's, replaced by the claim
    if not path.exists():
        refuse_outputs_not_ours(output, outputs, "autoseg predict", PREDICT_INFO, InferenceError)
    if isinstance(previous, dict):
        old, new = _run_identity(previous), _run_identity(info)
        differences = [f"{k} {old[k]!r} vs {new.get(k)!r}" for k in old if old[k] != new.get(k)]
        if differences:
            raise InferenceError(
                f"{path}: this folder holds predictions of another model or settings ({'; '.join(differences)}); "
                "choose another output folder, or delete this one to replace them"
            )


def claim_output_folder(output: Path, info: dict[str, Any], outputs: Sequence[Path] = ()) -> None:
    """Make the folder and record this run in ``predict_info.json``, after ``check_predict_record``.

    Runs with the same model and settings may share a folder (``--num-parts`` shards, a rerun, two runs
    at once: each output is written atomically and the same); a run with others would mix label maps
    of two models under one description, so it is refused, under a lock, so that two runs cannot both
    pass the check."""
    output.mkdir(parents=True, exist_ok=True)
    with folder_lock(output):
        check_predict_record(output, info, outputs)
        atomic_write_json(output / PREDICT_INFO, info)


def _predict_info(
    model: LoadedModel, step: float, tta: bool, save_probabilities: bool, mixed_precision: str
) -> dict[str, Any]:
    return {
        **model.info(),
        "step": step,
        "tta": tta,
        "mirror_axes": list(model.mirror_axes) if tta else [],
        "save_probabilities": save_probabilities,
        "mixed_precision": mixed_precision,
        "autocast_dtype": str(_autocast_dtype(model, mixed_precision)),
        "device": str(model.device),
    }


def _autocast_dtype(model: LoadedModel, mixed_precision: str) -> Any:
    """The torch engine's autocast dtype for ``mixed_precision``; None (float32) for onnxruntime."""
    if model.engine != "torch":
        return None
    from autoseg.utils.device import autocast_dtype

    return autocast_dtype(mixed_precision, model.device, InferenceError)
