"""Load a trained model folder for prediction: plans, dataset description and one network per fold.

A model folder is ``<results>/<Dataset>/<network>__<plans>__<configuration>/`` holding ``plans.json``,
``dataset.json`` and ``fold_<k>/checkpoint_{best,final,latest}.safetensors`` (docs/architecture.md).
Checkpoints are safetensors files read by autoseg/utils/checkpoint_format.py: a model file cannot run code. A cascade's full-resolution
configuration loads its low-resolution stage from the sibling folder with the same folds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from autoseg.utils.device import choose_device
from autoseg.dataset.description import DatasetDescription, channel_list, parse_description, previous_stage_label_problem
from autoseg.errors import InferenceError, NetworkError, PlanError
from autoseg.inference.engine import DEFAULT_CHECKPOINT, LoadedModel, canonical_folds
from autoseg.networks import create_network
from autoseg.paths import check_model_folder_name, dataset_folders, expand_home, parse_dataset_id, results_root
from autoseg.planning.plans import check_plans_match_dataset, get_configuration, load_plans
from autoseg.utils.checkpoint_format import (
    check_outputs_match_labels, checkpoint_exists, checkpoint_file, first_mismatch, missing_checkpoint, read_checkpoint,
    warn_if_training,
)

FOLD_DIR = re.compile(r"^fold_(\d+|all)$")
MISSING_CHECKPOINT_FIX = "finish training this fold or choose another --checkpoint"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``auto``: CUDA, else MPS, else CPU; otherwise the named device (checked)."""
    return choose_device(device, InferenceError)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InferenceError(f"{path}: not found; a model folder needs dataset.json (copy it from the raw dataset)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InferenceError(f"{path}: is not valid JSON ({exc}); restore it from the training run") from None


def available_folds(folder: Path) -> list[str]:
    """Fold names present in ``folder``: numeric folds sorted, ``all`` last."""
    found = [m.group(1) for p in folder.iterdir() if p.is_dir() and (m := FOLD_DIR.match(p.name))]
    numeric = sorted((f for f in found if f != "all"), key=int)
    return numeric + (["all"] if "all" in found else [])


def _resolve_folds(folder: Path, folds: Sequence[int | str] | str | None) -> list[str]:
    present = available_folds(folder)
    if folds is None:
        numeric = [f for f in present if f != "all"]
        chosen = numeric or present
        if not chosen:
            raise InferenceError(f"{folder}: holds no fold_<k> folders; train a fold first or check the model folder")
        return chosen
    names = [str(f) for f in ([folds] if isinstance(folds, (str, int)) else folds)]
    if not names:
        raise InferenceError(f"{folder}: empty fold list; give folds like 0 1 2 3 4 or all")
    check_folds_present(folder, names, InferenceError)
    return canonical_folds(names, present)


def check_folds_present(folder: Path, names: Sequence[str], error: type[Exception]) -> None:
    """Raise ``error`` naming the folds of ``names`` that ``folder`` lacks, and those it holds (predict, export-model)."""
    present = available_folds(folder)
    missing = [f for f in names if f not in present]
    if missing:
        raise error(f"{folder}: fold(s) {', '.join(missing)} not found (present: {', '.join(present) or 'none'}); "
                    "train them or choose present folds with -f")


def _load_checkpoint(path: Path, device: torch.device, missing_fix: str = MISSING_CHECKPOINT_FIX) -> dict[str, Any]:
    missing = missing_checkpoint(path, missing_fix)
    checkpoint = read_checkpoint(path, InferenceError, missing, fix="use a matching autoseg version or retrain", device=device)
    warn_if_training(path)
    return checkpoint


def _missing_checkpoint_fix(folder: Path, folds: Sequence[str], file_name: str) -> str:
    """What to do about a chosen fold lacking the checkpoint: the fix named only 'choose another --checkpoint', also
    for a fold holding none (an interrupted training's fold_<k>, which the default folds include), never the folds
    that could predict."""
    ready = [fold for fold in folds if checkpoint_exists(folder / f"fold_{fold}" / file_name)]
    with_ready = f", or predict with the folds that hold it (-f {' -f '.join(ready)})" if ready else ""
    return MISSING_CHECKPOINT_FIX + with_ready


def build_network(checkpoint: dict[str, Any], path: Path | str, device: torch.device) -> nn.Module:
    """Re-create the network a checkpoint describes and load its weights (strict), in eval mode."""
    meta = checkpoint["metadata"]
    try:
        network = create_network(
            meta["network"], meta["topology"], int(meta["in_channels"]), int(meta["num_outputs"]),
            **dict(meta.get("network_options") or {}),
        )
    except KeyError as exc:
        raise InferenceError(f"{path}: checkpoint metadata lacks {exc}; re-save it with autoseg") from None
    except NetworkError as exc:  # a network or option this autoseg lacks: the message named no file
        raise InferenceError(f"{path}: {exc}") from None
    try:
        network.load_state_dict(checkpoint["network_weights"])
    except RuntimeError as exc:
        raise InferenceError(f"{path}: weights do not fit the network its metadata describes ({first_mismatch(exc)})") from None
    return network.to(device).eval()


def named_folder(folder: Path) -> Path:
    """``folder`` as given, or its absolute path where it ends in no name (``.``, ``..``): ``-m .`` run inside
    a model folder was refused as a folder not named <network>__<plans>__<configuration>."""
    return Path(os.path.abspath(folder)) if folder.name in ("", ".", "..") else folder


def _configuration_from_folder(folder: Path) -> str:
    return check_model_folder_name(folder.name, str(folder), InferenceError, "point -m at one")[2]


def check_fold_of_model(metadata: Mapping[str, Any], model_name: str, path: Path | str,
                        error: type[Exception] = InferenceError) -> None:
    """A fold's checkpoint must be of the network, plans and configuration its model folder is named after
    (``model_name``, validated): a fold copied in from another model folder (2d into 3d_fullres, another plans'
    3d_fullres), or a folder renamed, ran with the wrong plans: every case failed with torch's shape error or,
    shapes permitting, was predicted at another plan's spacing. Fields a checkpoint does not record pass."""
    expected = dict(zip(("network", "plans_name", "configuration"), model_name.split("__")))
    trained = {key: value if metadata.get(key) is None else metadata[key] for key, value in expected.items()}
    if trained != expected:
        trained_name = "__".join(map(str, trained.values()))
        raise error(
            f"{path}: is a checkpoint of {trained_name}, but its model folder is {model_name} (a fold copied from "
            f"another model folder, or the folder renamed?); put this model's own fold back, or use the checkpoint "
            f"from a {trained_name} folder"
        )


def check_fold_number(metadata: Mapping[str, Any], fold_dir: str, where: str | Path, fix: str,
                      error: type[Exception] = InferenceError) -> None:
    """A fold's checkpoint must be of that fold (``fold_dir``, its folder's name): fold_0's copied into fold_1 was
    exported, imported and predicted as a second fold, fold 0 counting twice in predict's average. ``fix`` says
    how to give the fold its own checkpoint. Metadata without a fold passes."""
    trained = metadata.get("fold")
    if trained is not None and f"fold_{trained}" != fold_dir:
        raise error(f"{where}: is the checkpoint of fold {trained}, not of {fold_dir} (copied from fold_{trained}?); "
                    f"predict would count fold {trained} twice: {fix}, or leave {fold_dir} out (-f)")


# What predict reads from the plans besides the checkpoint: the axis order, grid, intensities and resampling it
# predicts at (the patch and mirror axes it takes from the checkpoint). Recorded in every checkpoint's metadata.
PREDICTION_PLANS_KEYS = ("transpose_forward", "transpose_backward")
PREDICTION_CONFIGURATION_KEYS = ("spatial_dims", "spacing", "normalization", "resampling")
PREDICTION_PLAN = "prediction_plan"  # the metadata key of the record


def prediction_plan(plans: Mapping[str, Any], configuration_name: str) -> dict[str, Any]:
    """The plans' values predict depends on for ``configuration_name``, as JSON (what a checkpoint records)."""
    configuration = (plans.get("configurations") or {}).get(configuration_name) or {}
    record = {**{key: plans.get(key) for key in PREDICTION_PLANS_KEYS},
              **{key: configuration.get(key) for key in PREDICTION_CONFIGURATION_KEYS}}
    return json.loads(json.dumps(record))


def plan_differences(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Each value of ``before`` (what a model was trained with) that ``now`` holds otherwise, as
    ``key X (trained) vs Y (now)``: the one wording of "trained with another plan" for train (the model folder's
    plans.json), --continue (the checkpoint's network) and predict (the checkpoint's prediction plan)."""
    return [f"{key} {json.dumps(value)} (trained) vs {json.dumps(now.get(key))} (now)"
            for key, value in before.items() if now.get(key) != value]


def listed_differences(differences: Sequence[str]) -> str:
    """The first three of ``plan_differences``, then '...' for the rest."""
    return "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")


def check_plans_of_checkpoint(metadata: Mapping[str, Any], plans: Mapping[str, Any], configuration_name: str,
                              path: Path | str, plans_file: Path | str, error: type[Exception] = InferenceError) -> None:
    """The plans.json must still hold what the checkpoint was trained with: a configuration's spacing or the
    transpose edited after training changed every prediction without a word. Checkpoints written before the
    record (no ``prediction_plan``) pass."""
    if differences := prediction_plan_differences(metadata, plans, configuration_name):
        raise error(f"{plans_file}: {path} was trained with another plan ({differences}; the plans were edited "
                    "after training); restore the plans.json the model was trained with, or train the model again with "
                    "these plans")


def prediction_plan_differences(metadata: Mapping[str, Any], plans: Mapping[str, Any], configuration_name: str) -> str:
    """How the checkpoint's recorded prediction plan differs from ``plans``' (``plan-wide: ...; configuration C:
    ...``), '' when it agrees or was not recorded (older checkpoints): predict and train's --continue name them alike.
    Keys of the whole plan (the transpose) were named as the configuration's, where the user looked for them in vain."""
    trained = metadata.get(PREDICTION_PLAN)
    if not isinstance(trained, Mapping):
        return ""
    now = prediction_plan(plans, configuration_name)
    plan_wide = plan_differences({k: v for k, v in trained.items() if k in PREDICTION_PLANS_KEYS}, now)
    own = plan_differences({k: v for k, v in trained.items() if k not in PREDICTION_PLANS_KEYS}, now)
    parts = ([f"plan-wide: {listed_differences(plan_wide)}"] if plan_wide else []) + (
        [f"configuration {configuration_name}: {listed_differences(own)}"] if own else [])
    return "; ".join(parts)


def _check_inputs_match_channels(
    metadata: dict[str, Any], description: DatasetDescription, cascade: bool, path: Path, dataset_json: Path
) -> None:
    """The network's input channels must be the model's dataset.json channels (and, for a cascade stage, one
    per foreground label, as training built it): an edited dataset.json loaded, and every case then failed
    with torch's channel mismatch."""
    expected = description.num_channels + (len(description.foreground_labels) if cascade else 0)
    taken = int(metadata.get("in_channels", expected))
    if taken != expected:
        cascade_note = f" + {len(description.foreground_labels)} cascade label channel(s)" if cascade else ""
        raise InferenceError(
            f"{path}: the network takes {taken} input channel(s) but {dataset_json} gives {description.num_channels} "
            f"({channel_list(description.channel_names)}){cascade_note}; that dataset.json is not the one the model "
            "was trained with: restore it"
        )


def weights_digest(weights: Mapping[str, torch.Tensor]) -> bytes:
    """sha256 of a network's tensors (names, dtypes, shapes, values), the same whether they came from the
    training checkpoint or an exported zip: what tells a retrained model from the one of the same name."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.digest()


def _check_folds_differ(digests: Sequence[bytes], metas: Sequence[Mapping[str, Any]], paths: Sequence[Path]) -> None:
    """Folds of one ensemble whose checkpoints record no fold (``check_fold_number`` needs one) must hold different
    weights (``digests``: each fold's ``weights_digest``): such a checkpoint copied into another fold folder was
    averaged twice. Checkpoints that record their own folds may agree: a run of a few iterations can draw the same
    batches in two folds and end with the same weights, which average to themselves."""
    first_with: dict[bytes, Path] = {}
    for digest, meta, path in zip(digests, metas, paths):
        if digest in first_with and meta.get("fold") is None:
            fold_dir = path.parent.name
            raise InferenceError(f"{path}: holds the same weights as {first_with[digest]} (copied?); predict would count "
                                 f"that fold twice: put {fold_dir}'s own checkpoint back, or leave {fold_dir} out (-f)")
        first_with.setdefault(digest, path)


FOLD_WIDE_SETTINGS = ("patch_size", "mirror_axes")  # the sliding window runs every fold with fold 0's


def _check_folds_agree(metadata: Sequence[Mapping[str, Any]], paths: Sequence[Path], tta: bool = True) -> tuple[int, ...] | None:
    """The folds ensembled in one sliding window must have been trained with the same patch and mirror axes
    (``--set patch_size=...`` given to one fold's training): the others ran silently at the first fold's
    patch and test-time mirroring, which they were not trained with. Without TTA nothing is mirrored, so only
    the patch must agree. Returns the folds' shared mirror axes, None where they differ (only without TTA)."""
    for key in FOLD_WIDE_SETTINGS if tta else ("patch_size",):
        for meta, path in zip(metadata[1:], paths[1:]):
            if meta.get(key) != metadata[0].get(key):
                raise InferenceError(
                    f"{path}: was trained with {key} {meta.get(key)}, {paths[0]} with {metadata[0].get(key)}; the folds "
                    "of one prediction share one sliding window: predict them separately (-f) with "
                    "--save-probabilities and combine the folders with autoseg ensemble, or retrain the fold"
                )
    if any(meta.get("mirror_axes") != metadata[0].get("mirror_axes") for meta in metadata[1:]):
        return None
    return tuple(int(a) for a in metadata[0].get("mirror_axes") or ())


def _model_file_fix(path: Path) -> str:
    """How to predict from the file ``path`` given as a model: a zip asked to be named ``.zip``, which it
    was (only ``autoseg predict`` unpacks zips; from Python, ``unpacked_model`` does)."""
    if path.suffix.lower() == ".zip":
        return ("a model zip is unpacked by autoseg predict -m; from Python, unpack it first: "
                "with autoseg.evaluation.model_files.unpacked_model(zip_path) as folder: load_model(folder) "
                "(or predict_folder(..., folder))")
    return "give a model folder, or a model zip from autoseg export-model under a name ending in .zip"


def _model_configuration(plans: dict[str, Any], name: str, plans_file: Path) -> dict[str, Any]:
    """The configuration the model folder is named after, from its plans.json: one lacking it (edited, or another
    plans file copied in) was refused naming neither that file nor the fix."""
    try:
        return get_configuration(plans, name)
    except PlanError as exc:
        raise InferenceError(f"{plans_file}: {exc}; restore the plans.json the model was trained with (its folder is "
                             f"named after {name})") from None


@dataclass(frozen=True)
class ModelFiles:
    """A model folder's plans.json and dataset.json, parsed and checked."""

    plans: dict[str, Any]
    description: DatasetDescription


def _read_model_files(folder: Path) -> ModelFiles:
    """The plans.json and dataset.json of ``folder``, read and checked."""
    if not (folder / "plans.json").is_file():
        raise InferenceError(f"{folder / 'plans.json'}: not found; a model folder needs the plans it was trained with")
    return ModelFiles(load_plans(folder / "plans.json"), parse_description(_read_json(folder / "dataset.json"), folder / "dataset.json"))


def _load_folds(folder: Path, fold_names: Sequence[str], file_name: str, files: ModelFiles, configuration_name: str,
                device: torch.device) -> tuple[list[nn.Module], list[dict[str, Any]], list[Path], Any]:
    """Each fold's checkpoint read, checked against the model's files and built: its networks, metadata and paths,
    and the hash of all their weights (``weights_sha256``)."""
    description = files.description
    cascade = bool(files.plans["configurations"][configuration_name].get("previous_stage"))
    networks, metas, paths, fold_digests = [], [], [], []
    digest = hashlib.sha256()
    missing_fix = _missing_checkpoint_fix(folder, fold_names, file_name)
    for fold in fold_names:
        path = folder / f"fold_{fold}" / file_name
        paths.append(path)
        loaded = _load_checkpoint(path, device, missing_fix)
        check_outputs_match_labels(loaded["metadata"], description.num_output_channels, str(path),
                                   str(folder / "dataset.json"), InferenceError)
        check_fold_of_model(loaded["metadata"], folder.name, path)
        check_fold_number(loaded["metadata"], path.parent.name, path, f"put {path.parent.name}'s own checkpoint back")
        check_plans_of_checkpoint(loaded["metadata"], files.plans, configuration_name, path, folder / "plans.json")
        _check_inputs_match_channels(loaded["metadata"], description, cascade, path, folder / "dataset.json")
        networks.append(build_network(loaded, path, device))
        metas.append(loaded["metadata"])
        fold_digests.append(weights_digest(loaded["network_weights"]))
        digest.update(fold_digests[-1])
    _check_folds_differ(fold_digests, metas, paths)
    return networks, metas, paths, digest


def load_model(
    folder: str | Path,
    folds: Sequence[int | str] | str | None = None,
    checkpoint: str = DEFAULT_CHECKPOINT,
    device: str | torch.device | None = None,
    parsed: Mapping[str, ModelFiles] | None = None,
    tta: bool = True,
) -> LoadedModel:
    """Load the model folder with the given folds (``None``: every numeric fold present, else ``all``).

    Raises ``InferenceError`` naming the missing file or fold and the fix. For a cascade configuration
    the ``previous_stage`` model is loaded from the sibling folder with the same folds and checkpoint.
    ``parsed``: model folder name -> its files as a model zip's reader parsed and checked them (predict -m
    model.zip), taken instead of reading the unpacked files a second time. ``tta=False`` (predicting
    without mirroring) lets folds trained with different ``mirror_axes`` load together; the model then has no
    mirror axes, as no axis is one its folds share, and refuses to predict with TTA (``mirror_axes_differ``).
    """
    folder = named_folder(Path(folder))
    if folder.is_file():  # was 'model folder not found', of a file that is there (a model zip renamed)
        raise InferenceError(f"{folder}: is a file, not a model folder; {_model_file_fix(folder)}")
    if not folder.is_dir():
        raise InferenceError(f"{folder}: model folder not found; give <results>/<Dataset>/<network>__<plans>__<configuration>")
    checkpoint_file_name = checkpoint_file(checkpoint, InferenceError)
    configuration_name = _configuration_from_folder(folder)
    files = (parsed or {}).get(folder.name) or _read_model_files(folder)
    plans, description = files.plans, files.description
    configuration = _model_configuration(plans, configuration_name, folder / "plans.json")
    check_plans_match_dataset(
        plans, description, folder / "plans.json", folder / "dataset.json",
        "the model was trained on a dataset.json edited after planning: re-plan (autoseg plan --overwrite), "
        "preprocess and train it again",
    )
    fold_names = _resolve_folds(folder, folds)
    torch_device = pick_device(device)
    networks, metas, paths, digest = _load_folds(folder, fold_names, checkpoint_file_name, files, configuration_name,
                                                 torch_device)
    mirror_axes = _check_folds_agree(metas, paths, tta)
    previous = None
    if configuration.get("previous_stage"):
        previous = _load_previous_stage(folder, configuration["previous_stage"], fold_names, checkpoint, torch_device,
                                        parsed, tta)
        if problem := previous_stage_label_problem(previous.dataset, previous.folder / "dataset.json", description,
                                                   folder / "dataset.json"):
            raise InferenceError(problem)
    return LoadedModel(
        folder=folder, plans=plans, configuration_name=configuration_name, configuration=configuration,
        dataset=description, folds=fold_names, checkpoint=checkpoint, networks=networks,
        mirror_axes=mirror_axes or (), mirror_axes_differ=mirror_axes is None,
        patch_size=tuple(int(p) for p in (metas[0].get("patch_size") or configuration["patch_size"])),
        device=torch_device, previous_stage=previous, weights_sha256=digest.hexdigest(),
    )


def _load_previous_stage(
    folder: Path, stage: str, folds: list[str], checkpoint: str, device: torch.device,
    parsed: Mapping[str, ModelFiles] | None, tta: bool,
) -> LoadedModel:
    network, plans_name, _ = folder.name.split("__")
    sibling = folder.parent / f"{network}__{plans_name}__{stage}"
    if not sibling.is_dir():
        raise InferenceError(
            f"{sibling}: not found; the cascade needs its {stage} stage trained (same folds) before predicting "
            f"with {folder.name}"
        )
    return load_model(sibling, folds, checkpoint, device, parsed, tta)


def find_model_folder(
    dataset: str | int, configuration: str, network: str | None = None, plans_name: str | None = None
) -> Path:
    """Find ``<results>/<Dataset>/<network>__<plans>__<configuration>`` from a dataset name or id.

    ``dataset`` may be ``Dataset004_Hippocampus``, ``Dataset004``, ``4`` or the raw dataset folder. When several networks or
    plans were trained for the configuration, ``network`` / ``plans_name`` pick one.
    """
    root = results_root()
    text = str(dataset)
    folder = expand_home(text, "dataset")
    if folder.is_dir() and (folder / "dataset.json").is_file():
        # A raw dataset folder: train keeps its results under the folder's name, whatever that is (a folder
        # not named DatasetNNN_... was looked up among the Dataset* folders and never found).
        text = folder.resolve().name
        candidates = [root / text] if (root / text).is_dir() else []
    else:
        # Parsed as every other command parses it: a loose prefix match took "Hippo" or "4abc" for whichever
        # dataset the results root held (the only one, or Dataset004), and predicted with its model.
        if parse_dataset_id(text) is None:
            raise InferenceError(f"-d {text}: not a dataset name; use Dataset004, 4, Dataset004_Hippocampus or the "
                                 "raw dataset folder's path (or -m MODEL_FOLDER)")
        candidates = dataset_folders(root, text)
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise InferenceError(f"{root}: dataset {text!r} matches {found}; give the full dataset name or -m MODEL_FOLDER")
    pattern = f"{network or '*'}__{plans_name or '*'}__{configuration}"
    folders = sorted(p for p in candidates[0].glob(pattern) if p.is_dir())
    if len(folders) != 1:
        found = ", ".join(p.name for p in folders) or "none"
        raise InferenceError(
            f"{candidates[0]}: {len(folders)} model folders match {pattern} ({found}); train the configuration "
            "or pick one with -m MODEL_FOLDER"
        )
    return folders[0]
