"""ONNX model zips: ``export-model --format onnx`` writes one, ``predict --engine onnxruntime`` runs it.

A zip holds, for one model folder: ``plans.json``, ``dataset.json`` (and ``postprocessing.json``), a
``deploy.json`` with everything a deployer reimplementing preprocessing and export needs (spacing,
transposition, normalization with its intensity statistics, resampling, patch, mirror axes, classes or
regions, activation, postprocessing), and per fold ``fold_<k>/network.onnx``: the eval-mode graph with
input ``image`` (B, C, *spatial) and output ``logits`` (B, K, *spatial), batch and (where the network
allows it, see ``deploy.json``) spatial axes dynamic. ``manifest.json`` lists the sha256 of each member.

With the onnxruntime engine each fold's graph replaces the torch network inside autoseg's own
preprocessing, sliding window (its numpy side, ``inference/tiling.py``), TTA and export, so predictions
equal torch's to float32 tolerance, and loading and predicting import no torch: a deployment installs
without it (docs/interop.md). Exporting needs torch and onnx; it imports them when called.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from autoseg import __version__
from autoseg.dataset.description import parse_description
from autoseg.errors import ModelFileError, PlanError
from autoseg.inference.engine import LoadedModel, canonical_folds
from autoseg.planning.plans import get_configuration, validate_plans
from autoseg.utils.checksummed_zip import (
    MANIFEST, MODEL_ZIP_FORMAT, ONNX_ZIP_FORMAT, check_entries, check_zip_checkpoint, read_member,
    write_checksummed_zip,
)
from autoseg.utils.finite import is_finite_number
from autoseg.utils.jsonio import parse_json_bytes
from autoseg.utils.onnx_runtime import INPUT, OUTPUT, onnx_session, run_onnx

if TYPE_CHECKING:  # export only: loading and predicting run without torch
    from torch import nn

FORMAT_NAME = ONNX_ZIP_FORMAT
FORMAT_VERSION = 1
DEPLOY = "deploy.json"
GRAPH = "network.onnx"
DESCRIPTION_FILES = ("plans.json", "dataset.json", "postprocessing.json")


class OnnxNetwork:
    """One fold's graph in an onnxruntime session: numpy (B, C, *spatial) in, numpy logits out."""

    def __init__(self, graph: bytes) -> None:
        self.session = onnx_session(graph)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return run_onnx(self.session, x)


# ---------------------------------------------------------------------------------------------- export


def deploy_description(model: LoadedModel, postprocessing: Any, dynamic_spatial: bool) -> dict[str, Any]:
    """What a deployment needs besides the graph, in plain JSON (docs/interop.md explains each key)."""
    from autoseg.networks.onnx_export import OPSET

    plans, config = model.plans, model.configuration
    return {
        "configuration": model.configuration_name,
        "spatial_dims": model.spatial_dims,
        "spacing": config["spacing"],
        "transpose_forward": plans.get("transpose_forward"),
        "transpose_backward": plans.get("transpose_backward"),
        "normalization": config["normalization"],
        "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
        "resampling": config.get("resampling"),
        "patch_size": list(model.patch_size),
        "mirror_axes": list(model.mirror_axes),
        "channel_names": model.dataset.channel_names,
        "labels": model.dataset.labels,
        "regions_class_order": model.regions_class_order,
        "activation": "sigmoid" if model.regions_class_order else "softmax",
        "postprocessing": postprocessing,
        "folds": model.folds,
        "input": INPUT,
        "output": OUTPUT,
        "dynamic_spatial_axes": dynamic_spatial,
        "opset": OPSET,
    }


def _fold_graph(network: nn.Module, in_channels: int, patch: Sequence[int]) -> tuple[bytes, bool]:
    """The graph with dynamic spatial axes when it holds at a second size (batch 2, last axis doubled),
    else with the patch fixed; (graph, dynamic)."""
    import torch

    from autoseg.networks.onnx_export import check_onnx, export_onnx

    generator = torch.Generator().manual_seed(0)  # its own stream: the caller's global one is not reseeded
    example = torch.randn(1, in_channels, *patch, generator=generator)
    larger = torch.randn(2, in_channels, *patch[:-1], 2 * patch[-1], generator=generator)
    graph = export_onnx(network, example, dynamic_spatial=True)
    try:
        check_onnx(network, graph, [example, larger])
        return graph, True
    except ModelFileError:
        graph = export_onnx(network, example, dynamic_spatial=False)
        check_onnx(network, graph, [example, torch.randn(2, in_channels, *patch)])
        return graph, False


def export_onnx_model(
    model_folder: str | Path, output_zip: str | Path, folds: Sequence[int | str] | None = None, checkpoint: str = "final"
) -> Path:
    """Write the ONNX model zip of ``model_folder``'s ``folds`` (default: every trained fold)."""
    from autoseg.evaluation.model_files import check_model_zip_output
    from autoseg.inference.model import load_model, named_folder
    from autoseg.postprocessing.determine import load_decision

    folder = named_folder(Path(model_folder))
    check_model_zip_output(Path(output_zip), [folder])
    model = load_model(folder, folds, checkpoint, "cpu")
    if model.previous_stage is not None:
        raise ModelFileError(
            f"{folder}: a cascade stage needs its low-resolution model's labels as input; ONNX export covers "
            "single-stage configurations (export 3d_fullres or 2d instead)"
        )
    members = {name: (folder / name).read_bytes() for name in DESCRIPTION_FILES if (folder / name).is_file()}
    # checked as postprocess apply checks it: a damaged one stopped the export with an internal error
    postprocessing = load_decision(folder / "postprocessing.json") if "postprocessing.json" in members else None
    in_channels = model.num_image_channels
    dynamic = True
    for fold, network in zip(model.folds, model.networks):
        members[f"fold_{fold}/{GRAPH}"], fold_dynamic = _fold_graph(network, in_channels, model.patch_size)
        dynamic = dynamic and fold_dynamic
    members[DEPLOY] = (json.dumps(deploy_description(model, postprocessing, dynamic), indent=2) + "\n").encode()
    manifest = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "autoseg_version": __version__,
        "model": folder.name, "checkpoint": checkpoint, "folds": model.folds,
    }
    return write_checksummed_zip(output_zip, manifest, members)


# ---------------------------------------------------------------------------------------------- load


def _not_an_onnx_file(model: Path, manifest: Any) -> str:
    """Why ``model`` (a model folder, a zip for the torch engine, or another file) is no ONNX model file,
    and the two ways on: export one, or predict with ``model`` on the torch engine."""
    export = "write one with `autoseg export-model -m MODEL_FOLDER -o model.onnx.zip --format onnx`"
    if model.is_dir():
        return (
            f"{model}: is a folder; --engine onnxruntime takes an ONNX model file (.onnx.zip): write one with "
            f"`autoseg export-model -m {model} -o model.onnx.zip --format onnx`, or drop --engine onnxruntime to "
            "predict with the model folder"
        )
    refuse = f"{model}: not usable with --engine onnxruntime"
    if isinstance(manifest, dict) and manifest.get("format") == MODEL_ZIP_FORMAT:
        return (f"{refuse}: a model zip for the torch engine (exported without --format onnx), not an ONNX model "
                f"file; drop --engine onnxruntime to predict with it, or {export}")
    return f"{refuse}: not an ONNX model zip; {export}"


def _read_members(zip_path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Manifest and checksum-verified members of an ONNX model zip, read as ``import-model`` reads a model
    zip (``read_member``: no zip bombs, no truncated data); the members the engine reads must be listed."""
    refuse = f"{zip_path}: not usable with --engine onnxruntime"
    if zip_path.is_dir():
        raise ModelFileError(_not_an_onnx_file(zip_path, None))
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ModelFileError(f"{zip_path}: not found") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{refuse}: not a zip file, or a truncated one ({exc})") from None
    with archive:
        check_entries(archive.infolist(), refuse)
        present = set(archive.namelist())
        manifest = _json_member(archive, MANIFEST, refuse) if MANIFEST in present else None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
            raise ModelFileError(_not_an_onnx_file(zip_path, manifest))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(f"{refuse}: ONNX model format version {manifest.get('format_version')!r}, this autoseg reads {FORMAT_VERSION}; re-export it")
        _check_manifest(manifest, refuse)
        missing = sorted(set(manifest["files"]) - present)
        if missing:
            raise ModelFileError(f"{refuse}: member {missing[0]!r} missing; re-export it with `autoseg export-model --format onnx`")
        members = {name: read_member(archive, archive.getinfo(name), refuse) for name in manifest["files"]}
    for name, data in members.items():
        if hashlib.sha256(data).hexdigest() != manifest["files"][name]:
            raise ModelFileError(f"{refuse}: member {name!r} does not match its sha256; the file was altered or damaged")
    return manifest, members


def _check_manifest(manifest: dict[str, Any], refuse: str) -> None:
    """The manifest's folds, checkpoint and member list, with every member the engine reads listed: a
    manifest without them stopped predict with an internal error (KeyError, TypeError)."""
    folds, files = manifest.get("folds"), manifest.get("files")
    if not (isinstance(folds, list) and folds and all(isinstance(f, str) for f in folds)
            and isinstance(manifest.get("checkpoint"), str)
            and isinstance(files, dict) and all(isinstance(v, str) for v in files.values())):
        raise ModelFileError(f"{refuse}: {MANIFEST} lacks or has malformed folds, checkpoint or files; "
                             "re-export it with `autoseg export-model --format onnx`")
    unlisted = [n for n in ("plans.json", "dataset.json", DEPLOY, *(f"fold_{f}/{GRAPH}" for f in folds)) if n not in files]
    if unlisted:
        raise ModelFileError(f"{refuse}: member {unlisted[0]!r} is not listed in {MANIFEST}; the file is incomplete; "
                             "re-export it with `autoseg export-model --format onnx`")


def _json_member(archive: zipfile.ZipFile, name: str, refuse: str) -> Any:
    """A JSON member of the zip, checked against zip bombs and damage, decoded."""
    return _decode_json(read_member(archive, archive.getinfo(name), refuse), name, refuse)


def _decode_json(data: bytes, name: str, refuse: str) -> Any:
    """Member ``name`` decoded by the reader of every autoseg JSON file: a member with a byte-order mark or in
    another encoding than UTF-8 is named as such (it was 'is not valid JSON', as import-model once said too)."""
    return parse_json_bytes(data, f"{refuse}: member {name!r}", ModelFileError,
                            "re-export it with `autoseg export-model --format onnx`")


def _deploy_settings(members: dict[str, bytes], zip_path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """plans.json (checked as ``load_model`` checks it), deploy.json and dataset.json of an ONNX zip, decoded:
    a plans.json or deploy.json missing a key stopped predict with an internal error (KeyError)."""
    refuse = f"{zip_path}: not usable with --engine onnxruntime"
    plans = validate_plans(_decode_json(members["plans.json"], "plans.json", refuse), f"{zip_path}: plans.json")
    deploy = _decode_json(members[DEPLOY], DEPLOY, refuse)
    kinds = {"configuration": str, "mirror_axes": list, "patch_size": list}
    if not isinstance(deploy, dict) or any(not isinstance(deploy.get(key), kind) for key, kind in kinds.items()):
        raise ModelFileError(f"{refuse}: {DEPLOY} lacks or has malformed {', '.join(kinds)}; re-export it with "
                             "`autoseg export-model --format onnx`")
    _check_deploy_grid(deploy, plans, refuse)
    return plans, deploy, _decode_json(members["dataset.json"], "dataset.json", refuse)


def _check_deploy_grid(deploy: dict[str, Any], plans: dict[str, Any], refuse: str) -> None:
    """deploy.json's configuration must be planned, its patch one positive size per axis and its mirror axes among
    them: a configuration missing from plans.json was refused naming neither the zip nor a fix, and a patch size of
    strings or a mirror axis out of range failed every case with an internal ValueError."""
    fix = "re-export it with `autoseg export-model --format onnx`"
    try:
        axes = len(get_configuration(plans, deploy["configuration"])["patch_size"])
    except PlanError as exc:
        raise ModelFileError(f"{refuse}: {DEPLOY}: {exc}; {fix}") from None
    patch, mirror = deploy["patch_size"], deploy["mirror_axes"]
    if len(patch) != axes or not all(is_finite_number(v, integer=True) and v > 0 for v in patch) or \
            not all(is_finite_number(a, integer=True) and 0 <= a < axes for a in mirror):
        raise ModelFileError(f"{refuse}: {DEPLOY}'s patch_size {patch!r} and mirror_axes {mirror!r} must be {axes} "
                             f"positive sizes and axes among 0..{axes - 1}; {fix}")


def _fold_network(graph: bytes, where: str) -> OnnxNetwork:
    """An onnxruntime session for one fold's graph; a graph onnxruntime cannot load is named, not an internal error."""
    try:
        return OnnxNetwork(graph)
    except ModelFileError:  # onnxruntime not installed: its install hint
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ModelFileError(f"{where}: not a graph onnxruntime can load ({str(exc).splitlines()[0][:200]}); "
                             "re-export it with `autoseg export-model --format onnx`") from None


def load_onnx_model(
    zip_path: str | Path, folds: Sequence[int | str] | str | None = None, checkpoint: str | None = None
) -> LoadedModel:
    """A ``LoadedModel`` whose networks are onnxruntime sessions (CPU), for ``predict_array`` / ``predict_folder``.

    ``checkpoint``, when given, must be the one the zip was exported from: ``--checkpoint best`` predicted
    with a zip of the final checkpoint without a word (a torch model zip refuses it as missing)."""
    zip_path = Path(zip_path)
    manifest, members = _read_members(zip_path)
    if checkpoint is not None:
        check_zip_checkpoint(zip_path, str(manifest["checkpoint"]), checkpoint)
    plans, deploy, dataset = _deploy_settings(members, zip_path)
    names = manifest["folds"] if folds is None else [str(f) for f in ([folds] if isinstance(folds, (str, int)) else folds)]
    if not names:  # loaded no network, and every case then failed inside the sliding window
        raise ModelFileError(f"{zip_path}: empty fold list; give folds of the file ({', '.join(manifest['folds'])}), "
                             "or none for all of them")
    missing = [f for f in names if f"fold_{f}/{GRAPH}" not in members]
    if missing:
        raise ModelFileError(f"{zip_path}: fold(s) {', '.join(missing)} not in the file (present: {', '.join(manifest['folds'])}); choose present folds with -f")
    names = canonical_folds(names, manifest["folds"])
    return LoadedModel(
        folder=zip_path,
        plans=plans,
        configuration_name=deploy["configuration"],
        configuration=get_configuration(plans, deploy["configuration"]),
        dataset=parse_description(dataset, zip_path / "dataset.json"),
        folds=names,
        checkpoint=manifest["checkpoint"],
        networks=[_fold_network(members[f"fold_{f}/{GRAPH}"], f"{zip_path}: fold_{f}/{GRAPH}") for f in names],
        mirror_axes=tuple(deploy["mirror_axes"]),
        patch_size=tuple(deploy["patch_size"]),
        device="cpu",
        engine="onnxruntime",
        weights_sha256=_graphs_digest(manifest, names),
    )


def _graphs_digest(manifest: dict[str, Any], folds: Sequence[str]) -> str:
    """The chosen folds' graphs hashed together (from the manifest's checksums, which the members matched):
    without it, ``predict --continue`` into a folder of an earlier export of the same file name (a retrained
    model) skipped the old model's outputs as done."""
    return hashlib.sha256("".join(manifest["files"][f"fold_{f}/{GRAPH}"] for f in folds).encode()).hexdigest()

