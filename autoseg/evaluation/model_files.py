"""``autoseg export-model`` / ``import-model``: one zip to deploy a trained model, safe to import.

nnU-Net exports the checkpoint pickles themselves, so importing a downloaded zip can run arbitrary code.
An autoseg model file holds no pickle at all:

* per model folder ``<model>/plans.json``, ``dataset.json``, ``training_config.yaml`` and
  ``postprocessing.json`` (the last two when present), and per fold ``<model>/fold_<k>/<checkpoint>.safetensors``:
  the network weights and the checkpoint's JSON metadata as a safetensors file
  (autoseg/utils/weights_file.py), which any safetensors reader opens;
* ``ensembles/<ensemble>/postprocessing.json`` for every find-best ensemble of exported models only
  whose postprocessing was determined (it lives beside neither model folder, and predicting with the
  ensemble after import needs it);
* ``manifest.json``: format name and version, the autoseg version, the dataset, models, ensembles, folds
  and checkpoint, and the sha256 of every other member.

Importing checks everything before writing anything (member paths, manifest, exact member set,
checksums, weight files), then extracts into a temporary folder beside the target and renames it into
place; the weight files become the folds' checkpoints (``network_weights`` + ``metadata``), so
``autoseg predict -m`` works on the result. Format version 1 (autoseg's own tensor layout before
safetensors) is refused with the command that re-exports the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Sequence

import torch

from autoseg import __version__
from autoseg.errors import AutosegError, EvaluationError, InferenceError, ModelFileError, PlanError
from autoseg.evaluation.selection import ENSEMBLES_FOLDER, POSTPROCESSING_JSON, ensemble_model_names
from autoseg.inference.engine import LoadedModel
from autoseg.inference.model import (
    ModelFiles, build_network, check_fold_number, check_fold_of_model, check_folds_present, check_plans_of_checkpoint,
    load_model, named_folder,
)
from autoseg.paths import check_model_folder_name, parse_dataset_id, results_root as default_results_root
from autoseg.planning.plans import get_configuration, validate_plans
from autoseg.utils.atomic import atomic_write_bytes, remove_stale_temporaries, staging_folder
from autoseg.utils.folders import locked_new_folder
from autoseg.utils.checksummed_zip import (
    MANIFEST, MODEL_ZIP_FORMAT, ONNX_ZIP_FORMAT, check_entries, check_zip_checkpoint, read_member,
    write_checksummed_zip,
)
from autoseg.utils.checkpoint_format import (
    check_outputs_match_labels, checkpoint_file, checkpoint_from_bytes, checkpoint_name, missing_checkpoint,
    network_checkpoint_bytes, read_checkpoint, warn_if_training,
)
from autoseg.utils.output_folders import check_output_file, refuse_image_name
from autoseg.utils.jsonio import parse_json_bytes
from autoseg.utils.names import string_list
from autoseg.utils.weights_file import SUFFIX

FORMAT_NAME = MODEL_ZIP_FORMAT
# Version of the zip (manifest and member layout), not of the checkpoints inside it (utils/checkpoint_format.py).
MODEL_ZIP_FORMAT_VERSION = 2  # 2: weights as safetensors; 1: autoseg's own layout (refused with a re-export hint)
DEFAULT_FOLDS = (0, 1, 2, 3, 4)
# A file name, unlike inference.engine's default checkpoint, a kind ('final'): export_model names the file it packs.
DEFAULT_CHECKPOINT_FILE = checkpoint_name("final")
REQUIRED_FILES = ("plans.json", "dataset.json")
IMPORT_STAGING = "import"  # import-model builds its folders in a hidden staging folder named after this
OPTIONAL_FILES = ("training_config.yaml", "postprocessing.json")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # one path component, no '..', no separators
# The fix for a JSON member that does not parse: a zip export-model wrote holds valid UTF-8 JSON.
_CHANGED_AFTER_EXPORT = "the zip was changed after autoseg export-model wrote it; export the model again"
FOLD_DIR = re.compile(r"^fold_(\d+|all)$")
CHECKPOINT_NAME = re.compile(r"^checkpoint_[A-Za-z0-9_]+\.safetensors$")
_OWN_CHECKPOINT_FIX = "export each fold's own checkpoint"  # of a fold holding another fold's checkpoint


# ---------------------------------------------------------------------------------------------- export


def _fold_dir(fold: int | str) -> str:
    name = f"fold_{fold}"
    if not FOLD_DIR.match(name):
        raise ModelFileError(f"fold {fold!r} is not a fold; use 0-4 or 'all'")
    return name


def _checkpoint_weights(path: Path, model_name: str, plans: Mapping[str, Any] | None) -> bytes:
    """The network weights and metadata of a checkpoint (no optimizer state) as safetensors bytes; the
    checkpoint must be of its model folder (``model_name``) and, where they are a plan, of its ``plans``."""
    checkpoint = read_checkpoint(
        path, ModelFileError, missing=missing_checkpoint(path, "train this fold first or choose other folds/--checkpoint"),
        fix="export a checkpoint written by this autoseg",
    )
    warn_if_training(path)
    check_fold_of_model(checkpoint["metadata"], model_name, path, ModelFileError)
    check_fold_number(checkpoint["metadata"], path.parent.name, path, _OWN_CHECKPOINT_FIX, ModelFileError)
    if plans is not None:
        check_plans_of_checkpoint(checkpoint["metadata"], plans, model_name.split("__")[-1], path,
                                  path.parent.parent / "plans.json", ModelFileError)
    try:
        return network_checkpoint_bytes(checkpoint)
    except TypeError as exc:
        raise ModelFileError(f"{path}: {exc}; only plain tensors and JSON metadata can be exported") from None


def _check_cascades_complete(plans: Mapping[str, dict[str, Any] | None], where: str, fix: str) -> None:
    """Every cascade stage among the models (name -> its parsed plans, None for no plan) must come with the
    low-resolution model whose labels it predicts from: a cascade exported alone was written, imported and
    unpacked without a word, and ``predict -m`` then said the low-resolution stage had to be trained. ``fix``
    may name ``{stage}`` (the missing model) and ``{model}``. The plans are those already read for the zip:
    reading each plans.json again from disk cost a parse each and could see another file than the one packed."""
    for model, model_plans in plans.items():
        network, plans_name, configuration = model.split("__")
        previous = _previous_stage(model_plans, configuration)
        stage = f"{network}__{plans_name}__{previous}"
        if previous and stage not in plans:
            raise ModelFileError(f"{where}: {model} is a cascade stage, which predicts from the labels of {stage}, "
                                 f"and {stage} is not in the file; {fix.format(stage=stage, model=model)}")


def _previous_stage(plans: dict[str, Any] | None, configuration: str) -> str | None:
    """The configuration's previous stage by its plans; None for a plans file that is no plan: export-model
    packs the description files as they are, and import-model refuses such a one."""
    try:
        return None if plans is None else get_configuration(plans, configuration).get("previous_stage")
    except PlanError:
        return None


def _exported_plans(data: bytes, where: str) -> dict[str, Any] | None:
    """The plans of a plans.json packed for export (``data``, its bytes as packed), None when they are no plan."""
    try:
        return validate_plans(parse_json_bytes(data, where, PlanError, "re-run `autoseg plan`"), where)
    except PlanError:
        return None


@dataclass(frozen=True)
class _ForeignModel:
    """A model whose plans.json names another dataset (``planned``) than the one it is exported or installed under."""

    model: str
    planned: str


def _model_of_another_dataset(plans: Mapping[str, Mapping[str, Any] | None],
                              dataset_name: str) -> tuple[_ForeignModel | None, list[str]]:
    """The first of the models (name -> its parsed plans, None for no plan) whose plans.json is of another dataset than
    ``dataset_name``: a zip (checksums updated) holding a Dataset005 model was installed under Dataset004, whose
    predictions it then wrote as Dataset005's. A plans name of the same dataset id is the same dataset renamed after
    planning (Dataset004_Hippo -> Dataset004_Hippocampus), which was refused as another one: a note for each such
    model comes second, for export_model and install_model_file to print once they have exported or installed it
    (printed here, it was said by predict -m and --pretrained-weights too, which install nothing)."""
    notes = []
    for model, model_plans in plans.items():
        planned = None if model_plans is None else model_plans.get("dataset_name")
        if not isinstance(planned, str) or planned == dataset_name:
            continue
        planned_id = parse_dataset_id(planned)
        if planned_id is None or planned_id != parse_dataset_id(dataset_name):
            return _ForeignModel(model, planned), notes
        notes.append(f"note: {model}: planned as {planned}, exported and installed as {dataset_name} (the same dataset "
                     f"id {planned_id:03d}, renamed after planning)")
    return None, notes


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        print(note, file=sys.stderr)


def check_model_zip_output(output_zip: Path, folders: Sequence[Path]) -> None:
    """Every check of export-model's ``-o`` (both formats), before any weights are read: a file to write (not a
    folder), not named as an image (``-o model.nii.gz`` was written, a zip that a folder of label maps then read as
    one), and no file of the model ``folders`` exported."""
    check_output_file(output_zip, ModelFileError)
    refuse_image_name(output_zip, "the model file is a zip", "give a .zip file name, e.g. model.zip", ModelFileError)
    check_output_not_in_model(output_zip, folders)


def check_output_not_in_model(output_zip: Path, folders: Sequence[Path]) -> None:
    """Refuse an output that is an existing file of a model folder being exported (its description files,
    anything in a fold folder): ``-o MODEL/plans.json`` replaced the model's plans with the zip. A new file
    in the model folder (``-o MODEL/model.zip``) is fine."""
    target = output_zip.resolve()
    for folder in folders:
        if not target.is_file() or not target.is_relative_to(folder.resolve()):
            continue
        inside = target.relative_to(folder.resolve()).parts
        if FOLD_DIR.match(inside[0]) or inside[0] in REQUIRED_FILES + OPTIONAL_FILES:
            raise ModelFileError(f"{output_zip}: is a file of the trained model folder {folder}; the zip would replace "
                                 "it; give a new file name, e.g. model.zip")


def model_members(model_folder: Path, folds: Sequence[int | str], checkpoint: str) -> dict[str, bytes]:
    """Zip member name -> content for one model folder."""
    name = model_folder.name
    if not SAFE_NAME.match(name):
        raise ModelFileError(f"{model_folder}: folder name {name!r} cannot be stored; rename it (letters, digits, _ . + -)")
    members = {}
    for file in REQUIRED_FILES + OPTIONAL_FILES:
        path = model_folder / file
        if path.is_file():
            members[f"{name}/{file}"] = _decision_bytes(path) if file == POSTPROCESSING_JSON else path.read_bytes()
        elif file in REQUIRED_FILES:
            raise ModelFileError(f"{path}: not found; {model_folder} is not a trained model folder (plans.json and dataset.json are written by autoseg train)")
    stem = Path(checkpoint).stem
    plans = _exported_plans(members[f"{name}/plans.json"], str(model_folder / "plans.json"))
    check_folds_present(model_folder, [_fold_dir(fold).removeprefix("fold_") for fold in folds], ModelFileError)
    for fold in folds:
        fold_dir = _fold_dir(fold)
        members[f"{name}/{fold_dir}/{stem}{SUFFIX}"] = _checkpoint_weights(model_folder / fold_dir / checkpoint, name, plans)
    return members


def _decision_bytes(path: Path) -> bytes:
    """A postprocessing decision to export, checked as import-model checks it: a damaged one was exported and
    refused only by import-model. The bytes checked are the bytes exported, read once (the file was read twice:
    once to check, once to pack, so an edit between the two was packed unchecked)."""
    from autoseg.postprocessing.determine import check_decision

    data = path.read_bytes()
    check_decision(parse_json_bytes(data, str(path), EvaluationError, "re-run autoseg postprocess determine"), str(path))
    return data


def ensemble_members(dataset_results: Path, models: Sequence[str]) -> dict[str, bytes]:
    """Zip member name -> content of the postprocessing decision of every ensemble (find-best's
    ``ensembles/<ensemble>/postprocessing.json``) whose models are all exported."""
    members = {}
    for decision in sorted((dataset_results / ENSEMBLES_FOLDER).glob(f"*/{POSTPROCESSING_JSON}")):
        name = decision.parent.name
        joined = ensemble_model_names(name)
        if SAFE_NAME.match(name) and joined and set(joined) <= set(models):
            members[f"{ENSEMBLES_FOLDER}/{name}/{POSTPROCESSING_JSON}"] = _decision_bytes(decision)
    return members


def export_model(
    model_folders: str | Path | Sequence[str | Path],
    output_zip: str | Path,
    folds: int | str | Sequence[int | str] = DEFAULT_FOLDS,
    checkpoint: str = DEFAULT_CHECKPOINT_FILE,
) -> Path:
    """Write the weights of ``folds`` (a sequence or one fold; from ``checkpoint``) and the description files of one or more
    model folders of the same dataset (``<results>/<Dataset>/<network>__<plans>__<config>``) into
    ``output_zip``, with a manifest of checksums. ``checkpoint`` is ``final``, ``best``, ``latest`` or a
    file name such as ``checkpoint_final.safetensors``. Returns the zip's path."""
    folders, folds, dataset_name = _export_arguments(model_folders, output_zip, folds)
    checkpoint = checkpoint_file(checkpoint, ModelFileError)
    members = _folder_members(folders, folds, checkpoint)
    exported_plans = {f.name: _exported_plans(members[f"{f.name}/plans.json"], str(f / "plans.json")) for f in folders}
    _check_cascades_complete(exported_plans, "export-model",
                             "export both: autoseg export-model -m <results>/<Dataset>/{stage} -m "
                             "<results>/<Dataset>/{model} -o model.zip")
    notes = _refuse_model_of_another_dataset(folders, exported_plans, dataset_name)
    decisions = ensemble_members(folders[0].resolve().parent, [f.name for f in folders])
    members.update(decisions)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": MODEL_ZIP_FORMAT_VERSION,
        "autoseg_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset_name": dataset_name,
        "models": [f.name for f in folders],
        "ensembles": sorted(PurePosixPath(name).parent.name for name in decisions),
        "folds": [str(f) for f in folds],
        "checkpoint": checkpoint,
    }
    output_zip = Path(output_zip)
    remove_stale_temporaries(output_zip.parent, output_zip.name)  # what a killed export left half-written
    written = write_checksummed_zip(output_zip, manifest, members)
    _print_notes(notes)
    return written


def _export_arguments(
    model_folders: str | Path | Sequence[str | Path], output_zip: str | Path, folds: int | str | Sequence[int | str]
) -> tuple[list[Path], list[str], str]:
    """``export_model``'s model folders, folds and their dataset's name, refused before anything is read: none given,
    folders of several datasets or one given twice, a dataset name the zip cannot store, or an output that cannot be
    the zip."""
    given = [model_folders] if isinstance(model_folders, (str, Path)) else model_folders
    folders = [named_folder(Path(f)) for f in given]
    if not folders:
        raise ModelFileError("export-model: give at least one model folder")
    fold_names = string_list(folds)
    if not fold_names:
        raise ModelFileError("export-model: give at least one fold")
    check_model_zip_output(Path(output_zip), folders)
    datasets = {f.resolve().parent.name for f in folders}
    if len(datasets) != 1:
        raise ModelFileError(f"export-model: model folders belong to different datasets ({', '.join(sorted(datasets))}); export one dataset per file")
    if len({f.name for f in folders}) != len(folders):
        raise ModelFileError("export-model: the same model folder is given twice")
    dataset_name = datasets.pop()
    if not SAFE_NAME.match(dataset_name):
        raise ModelFileError(f"{folders[0].parent}: dataset folder name {dataset_name!r} cannot be stored; rename it")
    return folders, fold_names, dataset_name


def _folder_members(folders: Sequence[Path], folds: Sequence[str], checkpoint: str) -> dict[str, bytes]:
    """The zip's members of every model folder (``model_members``), each folder refused when missing or not named
    as autoseg train names it."""
    members: dict[str, bytes] = {}
    for folder in folders:
        if not folder.is_dir():
            raise ModelFileError(f"{folder}: model folder not found")
        check_model_folder_name(folder.name, str(folder), ModelFileError,
                                "give the folder autoseg train wrote, under its name (import-model and predict read "
                                "the configuration from it)")
        members.update(model_members(folder, folds, checkpoint))
    return members


def _refuse_model_of_another_dataset(
    folders: Sequence[Path], exported_plans: Mapping[str, Any], dataset_name: str
) -> list[str]:
    """Refuse a model whose plans name another dataset than the results folder it lies in (the zip would install it
    under that folder's name); returns the notes ``_model_of_another_dataset`` has for the others."""
    foreign, notes = _model_of_another_dataset(exported_plans, dataset_name)
    if foreign:
        folder = next(f for f in folders if f.name == foreign.model)
        raise ModelFileError(f"{folder / 'plans.json'}: plans dataset {foreign.planned}, but the model folder lies in "
                             f"{dataset_name}'s results folder ({folder.parent}), under whose name the zip would install "
                             f"it; move it to {folder.parent.parent / foreign.planned} and export it from there")
    return notes


# ---------------------------------------------------------------------------------------------- import


def _is_safe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return (
        "\\" not in name
        and not name.startswith("/")
        and not re.match(r"^[A-Za-z]:", name)
        and len(path.parts) > 0
        and all(SAFE_NAME.match(part) for part in path.parts)
    )


@dataclass(frozen=True)
class _Descriptions:
    """Each model's parsed dataset.json and plans.json, as checked in the zip (read once, passed along)."""

    datasets: dict[str, Any]
    plans: dict[str, dict[str, Any]]
    renamed: list[str] = field(default_factory=list)  # notes on models of this dataset planned under its old name


def _check_description_files(members: Mapping[str, bytes], models: Sequence[str], refuse: str) -> _Descriptions:
    """plans.json and dataset.json must pass the checks ``load_model`` makes, so predict can use them;
    returns each model's parsed dataset description and plans."""
    from autoseg.dataset.description import parse_description
    from autoseg.planning.plans import check_plans_match_dataset

    descriptions, all_plans = {}, {}
    for model in models:
        configuration = _model_name_parts(model, refuse)[2]
        plans: dict[str, Any] = {}
        for file in REQUIRED_FILES:
            name = f"{model}/{file}"
            try:
                data = parse_json_bytes(members[name], f"member {name!r}", ModelFileError, _CHANGED_AFTER_EXPORT)
                if file == "dataset.json":
                    if not isinstance(data, dict):
                        raise ModelFileError(f"{name}: must hold a JSON object")
                    descriptions[model] = parse_description(data, Path(name))
                else:
                    plans = validate_plans(data, name)
                    _check_network_name(get_configuration(plans, configuration), name)
            except AutosegError as exc:
                raise ModelFileError(f"{refuse}: {exc}") from None
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise ModelFileError(f"{refuse}: member {name!r} has a field of the wrong type ({type(exc).__name__}: {exc})") from None
        try:
            check_plans_match_dataset(plans, descriptions[model], f"{model}/plans.json", f"{model}/dataset.json",
                                      "the model was trained on a dataset.json edited after planning; train it again")
        except AutosegError as exc:
            raise ModelFileError(f"{refuse}: {exc}") from None
        all_plans[model] = plans
    return _Descriptions(descriptions, all_plans)


def _check_network_name(config: Mapping[str, Any], name: str) -> None:
    """The configuration must name its network (``validate_plans`` has checked its spacing and patch)."""
    if not isinstance(config["network"], dict) or not isinstance(config["network"].get("name"), str):
        raise ModelFileError(f"{name}: configuration network {config['network']!r} lacks a network name")


def _read_manifest(archive: zipfile.ZipFile, zip_path: Path, refuse: str) -> dict[str, Any]:
    try:
        data = read_member(archive, archive.getinfo(MANIFEST), refuse)
    except KeyError:
        raise ModelFileError(f"{refuse}: no {MANIFEST}; the file was not written by autoseg export-model") from None
    manifest = parse_json_bytes(data, f"{refuse}: {MANIFEST}", ModelFileError, _CHANGED_AFTER_EXPORT)
    if isinstance(manifest, dict) and manifest.get("format") == ONNX_ZIP_FORMAT:
        raise ModelFileError(_onnx_file_problem(zip_path))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{refuse}: {MANIFEST} does not describe an {FORMAT_NAME} file")
    version = manifest.get("format_version")
    if version == 1:
        raise ModelFileError(
            f"{refuse}: model file format version 1 (written by autoseg {manifest.get('autoseg_version')}) stores weights in "
            "autoseg's pre-safetensors layout; re-export it with `autoseg export-model -m MODEL_FOLDER -o model.zip` "
            "from the trained model folder (or import it with that autoseg version first)"
        )
    if version != MODEL_ZIP_FORMAT_VERSION:
        raise ModelFileError(
            f"{refuse}: model file format version {version!r} (written by autoseg {manifest.get('autoseg_version')}) "
            f"is not supported; autoseg {__version__} reads version {MODEL_ZIP_FORMAT_VERSION}; import it with a matching autoseg version"
        )
    fields = {"dataset_name": str, "models": list, "folds": list, "checkpoint": str, "files": dict}
    bad = [key for key, kind in fields.items() if not isinstance(manifest.get(key), kind)]
    manifest.setdefault("ensembles", [])  # zips exported before ensembles were carried have none
    if not isinstance(manifest["ensembles"], list):
        bad.append("ensembles")
    if bad:
        raise ModelFileError(f"{refuse}: {MANIFEST} lacks or has malformed {', '.join(bad)}")
    return manifest


def _onnx_file_problem(zip_path: Path) -> str:
    """An ONNX model file is not installed or unpacked: it runs as it is, with the engine that reads it."""
    return (
        f"{zip_path}: is an ONNX model file (written by export-model --format onnx); predict with it by adding "
        f"--engine onnxruntime (autoseg predict -m {zip_path} --engine onnxruntime -i ... -o ...); import-model and "
        "the torch engine take zips exported without --format onnx"
    )


def _model_name_parts(model: str, refuse: str) -> tuple[str, str, str]:
    """A model in the manifest must have the name predict reads its configuration from."""
    return check_model_folder_name(model, f"{refuse}: {MANIFEST} names model {model!r}", ModelFileError,
                                   "the file was not written by autoseg export-model")


def _expected_members(manifest: Mapping[str, Any], refuse: str) -> tuple[set[str], set[str]]:
    """(required, allowed) member names implied by the manifest's models, folds and checkpoint."""
    names = [manifest["dataset_name"], *manifest["models"], manifest["checkpoint"]]
    unsafe = not all(isinstance(n, str) and SAFE_NAME.match(n) for n in names)
    unsafe = unsafe or len(set(manifest["models"])) != len(manifest["models"])
    if unsafe or not manifest["models"] or not CHECKPOINT_NAME.match(manifest["checkpoint"]):
        raise ModelFileError(f"{refuse}: {MANIFEST} names an unsafe or empty dataset, model or checkpoint")
    for model in manifest["models"]:
        _model_name_parts(model, refuse)
    folds = [f"fold_{f}" for f in manifest["folds"]]
    if not folds or not all(FOLD_DIR.match(f) for f in folds):
        raise ModelFileError(f"{refuse}: {MANIFEST} lists invalid folds {manifest['folds']}")
    stem = Path(manifest["checkpoint"]).stem
    required, allowed = set(), set()
    for model in manifest["models"]:
        required |= {f"{model}/{f}" for f in REQUIRED_FILES} | {f"{model}/{fold}/{stem}{SUFFIX}" for fold in folds}
        allowed |= {f"{model}/{f}" for f in OPTIONAL_FILES}
    for ensemble in manifest["ensembles"]:
        joined = ensemble_model_names(ensemble) if isinstance(ensemble, str) and SAFE_NAME.match(ensemble) else []
        if not joined or not set(joined) <= set(manifest["models"]):
            raise ModelFileError(f"{refuse}: {MANIFEST} names ensemble {ensemble!r}, which is no ensemble of its models")
        required.add(f"{ENSEMBLES_FOLDER}/{ensemble}/{POSTPROCESSING_JSON}")
    return required, required | allowed


def _check_decisions(members: Mapping[str, bytes], refuse: str) -> None:
    """Every postprocessing decision (a model's, an ensemble's) must be one ``postprocess apply`` replays."""
    from autoseg.postprocessing.determine import check_decision

    for name in sorted(n for n in members if PurePosixPath(n).name == POSTPROCESSING_JSON):
        where = f"{refuse}: member {name!r}"
        try:
            check_decision(parse_json_bytes(members[name], where, ModelFileError, _CHANGED_AFTER_EXPORT), where)
        except EvaluationError as exc:
            raise ModelFileError(str(exc)) from None


def _refuse_first(names: Sequence[str], message: str) -> None:
    """Raise ``message`` (formatted with ``name``) for the first of ``names``, if any."""
    if names:
        raise ModelFileError(message.format(name=sorted(names)[0]))


def validate_model_file(zip_path: str | Path, build_networks: bool = True) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Check a model zip completely; return its manifest and members (name -> verified bytes, weights
    already decoded once so a bad header is caught here). Raises ``ModelFileError`` for anything that
    export-model would not have written. ``build_networks=False`` leaves loading each fold's weights into its
    network to the caller that loads them anyway (``unpacked_model``: predict's ``load_model``)."""
    manifest, members, _ = _validated_model_file(Path(zip_path), build_networks)
    return manifest, members


IMPORT_REFUSAL = "refusing to import"
PREDICT_REFUSAL = "refusing to predict with it"  # predict -m model.zip unpacks the zip into a temporary folder only


def _validated_model_file(zip_path: Path, build_networks: bool,
                          refusal: str = IMPORT_REFUSAL) -> tuple[dict[str, Any], dict[str, bytes], _Descriptions]:
    """``validate_model_file``, also returning the description files it parsed; ``refusal`` words its refusals for
    the command (predict installs nothing, and was refused as 'refusing to import')."""
    refuse = f"{zip_path}: {refusal}"
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ModelFileError(f"{zip_path}: not found") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{refuse}: not a zip file, or a truncated one ({exc})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        names = [info.filename for info in archive.infolist()]
        _refuse_first([n for n in names if not _is_safe_member(n)], refuse + ": member {name!r} has an unsafe path (absolute, '..' or unusual characters)")
        _refuse_first([n for n in set(names) if names.count(n) > 1], refuse + ": member {name!r} appears twice")
        check_entries(archive.infolist(), refuse)
        manifest = _read_manifest(archive, zip_path, refuse)
        listed, present = manifest["files"], set(names) - {MANIFEST}
        _refuse_first(list(present - set(listed)), refuse + ": member {name!r} is not listed in " + MANIFEST + "; the file was altered after export")
        _refuse_first(list(set(listed) - present), refuse + ": member {name!r} listed in " + MANIFEST + " is missing; the file is incomplete")
        required, allowed = _expected_members(manifest, refuse)
        _refuse_first(list(present - allowed), refuse + ": member {name!r} is not part of an autoseg model file")
        _refuse_first(list(required - present), refuse + ": required member {name!r} is missing; the file is incomplete")
        members, metadata = {}, {}
        for name in sorted(present):
            data = read_member(archive, infos[name], refuse)
            if hashlib.sha256(data).hexdigest() != listed[name]:
                raise ModelFileError(f"{refuse}: member {name!r} does not match its sha256 in {MANIFEST}; the file was altered or damaged")
            if name.endswith(SUFFIX):
                metadata[name] = _check_weights(data, f"{refuse}: member {name!r}", build_networks)
            members[name] = data
    descriptions = _check_description_files(members, manifest["models"], refuse)
    foreign, renamed = _model_of_another_dataset(descriptions.plans, manifest["dataset_name"])
    descriptions = replace(descriptions, renamed=renamed)
    if foreign:
        raise ModelFileError(f"{refuse}: member '{foreign.model}/plans.json' plans dataset {foreign.planned}, but the file "
                             f"installs its models under {manifest['dataset_name']} (its {MANIFEST}); a model of another "
                             "dataset was packed in: export each dataset's models into a file of its own")
    _check_decisions(members, refuse)
    for name, meta in metadata.items():
        model = name.split("/", 1)[0]
        check_fold_of_model(meta, model, f"{refuse}: member {name!r}", ModelFileError)
        check_fold_number(meta, PurePosixPath(name).parent.name, f"{refuse}: member {name!r}", _OWN_CHECKPOINT_FIX,
                          ModelFileError)
        check_outputs_match_labels(meta, descriptions.datasets[model].num_output_channels, f"{refuse}: member {name!r}",
                                   f"{model}/dataset.json", ModelFileError)
    return manifest, members, descriptions


def _check_weights(data: bytes, where: str, build: bool = True) -> dict[str, Any]:
    """A weight member must be a checkpoint whose tensors load into the network its metadata describes, as
    predict loads them (metadata naming another network, topology or input channels than the weights was
    imported, and failed only at predict); returns the metadata. ``build=False`` checks the checkpoint
    only, for a caller that builds the network next."""
    checkpoint = checkpoint_from_bytes(data, where, ModelFileError, fix="the file was not written by autoseg export-model")
    if not build:
        return checkpoint["metadata"]
    try:
        build_network(checkpoint, where, torch.device("cpu"))
    except AutosegError as exc:
        raise ModelFileError(str(exc)) from None
    return checkpoint["metadata"]


def _write_model_tree(members: Mapping[str, bytes], staging: Path) -> None:
    """Recreate the model folders under ``staging``; the weight members are the folds' checkpoints.

    Written as every result file is (``atomic_write_bytes``) so that a full disk is reported at the member's
    path (a bare ``write_bytes`` said 'No space left on device' without naming any folder)."""
    for name, data in members.items():
        atomic_write_bytes(staging / name, data, durable=False)  # the staging folder's rename commits them


@dataclass(frozen=True)
class Installed:
    """What ``install_model_file`` put in place."""

    models: list[Path]  # the model folders
    decisions: list[Path] = field(default_factory=list)  # ensembles' postprocessing.json
    manifest: dict[str, Any] = field(default_factory=dict)  # the zip's manifest.json
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)  # model name -> its plans.json, as checked
    datasets: dict[str, Any] = field(default_factory=dict)  # model name -> its parsed dataset.json, as checked


def import_model(zip_path: str | Path, results_root: str | Path | None = None, overwrite: bool = False) -> list[Path]:
    """Import a model file into ``<results_root>/<Dataset>/<model>/``; returns the model folders.

    Nothing is written unless the whole file is valid and no target exists (or ``overwrite``)."""
    return install_model_file(zip_path, results_root, overwrite).models


def install_model_file(zip_path: str | Path, results_root: str | Path | None = None, overwrite: bool = False,
                       build_networks: bool = True, notes: bool = True, refusal: str = IMPORT_REFUSAL) -> Installed:
    """``import_model``, also reporting the ensembles' postprocessing decisions it installed
    (``<Dataset>/ensembles/<ensemble>/postprocessing.json``, where find-best keeps them); ``build_networks``
    as in ``validate_model_file``; ``notes``: print the renamed-dataset notes once installed (not for
    predict's temporary unpacking); ``refusal``: how its refusals start after the zip's path (``PREDICT_REFUSAL``
    there)."""
    manifest, members, descriptions = _validated_model_file(Path(zip_path), build_networks, refusal)
    root = Path(results_root) if results_root is not None else default_results_root()
    dataset_dir = root / manifest["dataset_name"]
    targets = [dataset_dir / model for model in manifest["models"]]
    decisions = [dataset_dir / ENSEMBLES_FOLDER / name / POSTPROCESSING_JSON for name in manifest["ensembles"]]
    # Checked and installed under the dataset folder's lock (find-best's too): of two imports at once the
    # second finds the first's folders instead of replacing them unasked.
    with locked_new_folder(dataset_dir):  # made for the import: gone again if it fails
        existing = [t for t in targets + decisions if t.exists()]
        if existing and not overwrite:
            raise ModelFileError(_existing_problem(existing[0], existing[0] in targets))
        _refuse_replacing_the_zip(Path(zip_path), existing)
        remove_stale_temporaries(dataset_dir, IMPORT_STAGING)  # a killed import's staging folder
        staging = staging_folder(dataset_dir / IMPORT_STAGING)
        try:
            _write_model_tree(members, staging)
            for target in targets:
                _replace_folder(staging / target.name, target)
            for decision in decisions:  # one file into a folder that may hold find-best's merged predictions
                decision.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / decision.relative_to(dataset_dir), decision)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if notes:
        _print_notes(descriptions.renamed)
    return Installed(targets, decisions, manifest, descriptions.plans, descriptions.datasets)


def _existing_problem(path: Path, model_folder: bool) -> str:
    """The refusal of an import whose ``path`` (a ``model_folder``, else an ensemble's decision) exists: a file where
    the model folder goes was called 'model folder already exists'."""
    if model_folder and not path.is_dir():
        return (f"{path}: is a file where the imported model folder goes; move or remove it, pass --overwrite to replace "
                "it, or import into another results folder")
    what = "model folder" if model_folder else "ensemble postprocessing decision"
    return f"{path}: {what} already exists; pass --overwrite to replace it, or import into another results folder"


def _refuse_replacing_the_zip(zip_path: Path, replaced: Sequence[Path]) -> None:
    """``--overwrite`` must not replace the folder the zip lies in: ``import-model MODEL/model.zip --overwrite``
    into the zip's own results root deleted the zip with the folder it replaced."""
    source = zip_path.resolve()
    inside = next((folder for folder in replaced if source.is_relative_to(folder.resolve())), None)
    if inside is not None:
        raise ModelFileError(f"{zip_path}: lies in {inside}, which --overwrite would replace (deleting the zip); move "
                             "the zip out of it first")


def _replace_folder(source: Path, target: Path) -> None:
    """Move ``source`` onto ``target``; an existing ``target`` is removed only once the move is done."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(backup, ignore_errors=True)
        target.rename(backup)
    try:
        source.rename(target)
    except OSError:
        if backup is not None:
            backup.rename(target)
        raise
    if backup is not None:
        with contextlib.suppress(OSError):
            _remove(backup)


def _remove(path: Path) -> None:
    """Delete a folder with its files, or a file or symbolic link: what ``--overwrite`` replaced may be either
    (rmtree refused a file, or a link to a model folder, and left it behind as ``.<model>.replaced``)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _check_zip_holds(manifest: Mapping[str, Any], zip_path: Path, folds: Sequence[int | str] | str | None,
                     checkpoint: str) -> None:
    """The checkpoint and folds asked of a model zip must be in it: ``predict -m model.zip --checkpoint best``
    (or ``-f 3``) was refused naming the temporary folder the zip was unpacked into, gone by then, with the
    fix 'finish training this fold'."""
    checkpoint_file(checkpoint, ModelFileError)  # an unknown name is refused as such
    check_zip_checkpoint(zip_path, manifest["checkpoint"], checkpoint)
    asked = [] if folds is None else string_list(folds)
    missing = [f for f in asked if f not in manifest["folds"]]
    if missing:
        raise ModelFileError(f"{zip_path}: holds fold(s) {', '.join(manifest['folds'])}, not {', '.join(missing)}; "
                             "choose present folds with -f, or export those folds")


@contextlib.contextmanager
def unpacked_model(zip_path: str | Path, folds: Sequence[int | str] | str | None = None,
                   checkpoint: str = "final") -> Iterator[Path]:
    """A model zip checked like ``import_model`` and unpacked into a temporary folder, never the results
    root (``predict -m model.zip``); yields the model folder to predict with (a cascade's last stage).
    ``folds`` and ``checkpoint``, those predict asks for, must be in the zip.

    The weights are loaded into their networks once, by predict's ``load_model`` inside the ``with`` block
    (import-model's check built every fold's network a second time); a refusal of a file of the unpacked
    folder names the zip member, not the temporary folder, gone by the time it is read."""
    with _unpacked(zip_path, folds, checkpoint) as (folder, _):
        yield folder


@contextlib.contextmanager
def loaded_model_zip(zip_path: str | Path, folds: Sequence[int | str] | str | None, checkpoint: str,
                     device: str | torch.device | None, tta: bool = True) -> Iterator[LoadedModel]:
    """``predict -m model.zip``: the model of ``unpacked_model`` loaded with the plans and dataset.json the
    zip's check parsed (``load_model`` read and checked them a second time from the unpacked folder); ``tta`` as
    ``load_model``'s (--no-tta loads folds trained with different mirror axes)."""
    with _unpacked(zip_path, folds, checkpoint) as (folder, installed):
        parsed = {name: ModelFiles(plans, installed.datasets[name]) for name, plans in installed.plans.items()}
        yield load_model(folder, folds, checkpoint, device, parsed, tta)


@contextlib.contextmanager
def _unpacked(zip_path: str | Path, folds: Sequence[int | str] | str | None,
              checkpoint: str) -> Iterator[tuple[Path, Installed]]:
    """``unpacked_model``'s folder, with what its check parsed."""
    with tempfile.TemporaryDirectory(prefix="autoseg-model-") as tmp:
        installed = install_model_file(zip_path, tmp, build_networks=False, notes=False, refusal=PREDICT_REFUSAL)
        _check_zip_holds(installed.manifest, Path(zip_path), folds, checkpoint)
        folders = installed.models
        chosen = [f for f in folders if f.name.endswith("__3d_cascade_fullres")] if len(folders) > 1 else folders
        if len(chosen) != 1:
            raise ModelFileError(f"{zip_path}: holds {len(folders)} models ({', '.join(f.name for f in folders)}); "
                                 "install it with autoseg import-model and choose one with -m")
        _check_cascades_complete(installed.plans, str(zip_path),
                                 "re-export it with both models (autoseg export-model -m {stage} -m {model}), or "
                                 "import it where {stage} is trained and predict from there")
        with _members_named_in(Path(zip_path), Path(tmp) / installed.manifest["dataset_name"]):
            yield chosen[0], installed


@contextlib.contextmanager
def _members_named_in(zip_path: Path, unpacked: Path) -> Iterator[None]:
    """Re-raise an ``InferenceError`` that starts with a file under ``unpacked`` (where ``zip_path`` was
    unpacked) as a ``ModelFileError`` naming that file, and any other under ``unpacked`` it names, as the zip's
    member (the temporary folder is gone by the time the message is read)."""
    try:
        yield
    except InferenceError as exc:
        prefix = f"{unpacked}{os.sep}"
        if not str(exc).startswith(prefix):
            raise
        member, _, problem = str(exc).removeprefix(prefix).partition(": ")
        problem = re.sub(re.escape(prefix) + r"(\S+)", lambda m: f"member {Path(m.group(1)).as_posix()!r}", problem)
        raise ModelFileError(f"{zip_path}: member {Path(member).as_posix()!r}: {problem}") from None
