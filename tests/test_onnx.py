"""ONNX export and the onnxruntime engine: every registered family's exported graph matches autoseg's torch
logits on a real Hippocampus case, and `predict --engine onnxruntime` writes torch's labels."""

from __future__ import annotations

import codecs
import copy
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from autoseg.dataset.imageio import read_case_images, read_image
from autoseg.errors import ModelFileError
from autoseg.inference.model import load_model
from autoseg.inference.onnx_model import DEPLOY, GRAPH, _fold_graph, export_onnx_model, load_onnx_model
from autoseg.inference.predictor import predict_array
from autoseg.networks import create_network, get_network_spec, list_networks
from autoseg.networks import Topology
from autoseg.networks.onnx_export import ONNX_ATOL, ONNX_RTOL, check_onnx, require_onnx
from autoseg.planning.topology import plan_topology
from autoseg.preprocessing.pipeline import preprocess_case
import autoseg.utils.checksummed_zip as checksummed_zip
from autoseg.utils.weights_file import load_weights, save_weights
from cli_helpers import autoseg, autoseg_fails
from conftest import HIPPOCAMPUS
from test_inference_predict import DATASET, PLANS

torch.set_num_threads(1)
PATCH = [16, 16, 16]
CASE = HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz"


def make_family_model(results: Path, network: str) -> Path:
    """A 3d_fullres model folder of ``network`` (random weights, the planner's topology for a 16^3 patch)."""
    plans = copy.deepcopy(PLANS)
    plans["configurations"] = {"3d_fullres": {**plans["configurations"]["3d_fullres"], "patch_size": PATCH}}
    topology = plan_topology(PATCH, [1, 1, 1], get_network_spec(network).constraints, 8).to_dict()
    folder = results / DATASET / f"{network}__autosegPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text((HIPPOCAMPUS / "dataset.json").read_text())
    torch.manual_seed(0)
    weights = create_network(network, topology, 1, 3).state_dict()
    metadata = {"format_version": 1, "network": network, "topology": topology, "in_channels": 1, "num_outputs": 3,
                "configuration": "3d_fullres", "mirror_axes": [0, 1, 2], "patch_size": PATCH}
    save_weights(folder / "fold_0" / "checkpoint_final.safetensors", {"network_weights": weights, "metadata": metadata})
    return folder


@pytest.mark.parametrize("network", [n for n in list_networks() if 3 in get_network_spec(n).constraints.spatial_dims])
def test_exported_graph_matches_torch_logits_on_a_real_case(network: str, tmp_path: Path) -> None:
    """Every registered family exports (conresnet since its slice difference avoids torch.diff); the graph
    runs at the patch and, its spatial axes being dynamic, on the whole preprocessed case."""
    folder = make_family_model(tmp_path, network)
    zip_path = export_onnx_model(folder, tmp_path / "model.zip", folds=[0])
    torch_model, onnx_model = load_model(folder, [0], device="cpu"), load_onnx_model(zip_path)
    deploy = json.loads(zipfile.ZipFile(zip_path).read(DEPLOY))
    assert deploy["dynamic_spatial_axes"] is True and deploy["patch_size"] == PATCH and deploy["activation"] == "softmax"
    data, geometry = read_case_images([CASE])
    data_pp, _, _ = preprocess_case(data, geometry, torch_model.plans, "3d_fullres")
    multiple = Topology.from_dict(deploy_topology(folder)).size_multiple
    whole = [s - s % m for s, m in zip(data_pp.shape[1:], multiple)]  # what the topology's strides and windows take
    for x in (data_pp[None, :, :16, :16, :16], data_pp[None, :, : whole[0], : whole[1], : whole[2]]):
        x = np.ascontiguousarray(x)
        with torch.no_grad():
            expected = torch_model.networks[0](torch.from_numpy(x)).numpy()
        got = onnx_model.networks[0](x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=ONNX_RTOL, atol=ONNX_ATOL * max(1.0, float(np.abs(expected).max())))


def deploy_topology(folder: Path) -> dict:
    """The topology a family model folder's checkpoint was built with."""
    return load_weights(folder / "fold_0" / "checkpoint_final.safetensors", ValueError)["metadata"]["topology"]


@pytest.mark.parametrize("network", [n for n in list_networks() if get_network_spec(n).constraints.spatial_dims == (2,)])
def test_2d_only_families_export_and_match_torch(network: str) -> None:
    """2D-only families (Swin-UNet) export too. Swin-UNet's graph keeps the patch fixed: whether a stage
    shifts its windows depends on the feature map's size, which the exporter freezes, so a larger input
    would disagree; the sliding window only ever feeds patch-sized tiles."""
    constraints = get_network_spec(network).constraints
    topology = plan_topology([64, 64], [1.0, 1.0], constraints, 8)
    torch.manual_seed(0)
    model = create_network(network, topology, 1, 3, deep_supervision=False).eval()
    graph, dynamic = _fold_graph(model, 1, topology.size_multiple)
    data, _ = read_case_images([CASE])
    slice_ = torch.from_numpy(np.ascontiguousarray(data[:, data.shape[1] // 2]))[None].float()
    tiles = torch.nn.functional.interpolate(slice_, size=topology.size_multiple, mode="bilinear").repeat(2, 1, 1, 1)
    assert check_onnx(model, graph, [tiles]) >= 0  # raises when the graph fails or disagrees beyond the tolerance
    assert dynamic is False


def test_cli_onnxruntime_engine_writes_torch_labels(tmp_path: Path) -> None:
    folder = make_family_model(tmp_path / "results", "unet")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / CASE.name).write_bytes(CASE.read_bytes())
    zip_path = tmp_path / "unet.onnx.zip"
    autoseg("export-model", "-m", folder, "-o", zip_path, "--format", "onnx", "-f", 0)
    assert set(zipfile.ZipFile(zip_path).namelist()) == {"manifest.json", "plans.json", "dataset.json", DEPLOY, f"fold_0/{GRAPH}"}
    autoseg("predict", "-i", inputs, "-o", tmp_path / "torch", "-m", folder, "--mixed-precision", "off")
    autoseg("predict", "-i", inputs, "-o", tmp_path / "onnx", "-m", zip_path, "--engine", "onnxruntime")
    torch_labels, _ = read_image(tmp_path / "torch" / "hippocampus_001.nii.gz")
    onnx_labels, geometry = read_image(tmp_path / "onnx" / "hippocampus_001.nii.gz")
    assert torch_labels.shape == onnx_labels.shape and len(np.unique(torch_labels)) > 1
    np.testing.assert_array_equal(onnx_labels, torch_labels)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model folder and its ONNX model file (fold 0)."""
    base = tmp_path_factory.mktemp("onnx")
    folder = make_family_model(base / "results", "unet")
    return folder, export_onnx_model(folder, base / "unet.onnx.zip", folds=[0])


def test_an_onnx_model_file_without_the_onnxruntime_engine_names_the_engine(onnx_export: tuple[Path, Path], tmp_path: Path) -> None:
    """predict -m model.onnx.zip with the default torch engine (and import-model) says to add --engine onnxruntime."""
    _, zip_path = onnx_export
    fix = f"{zip_path}: is an ONNX model file (written by export-model --format onnx); predict with it by adding --engine onnxruntime"
    assert fix in autoseg_fails("predict", "-i", tmp_path, "-o", tmp_path / "out", "-m", zip_path)
    assert fix in autoseg_fails("import-model", zip_path, "--results-root", tmp_path / "results")
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


def test_the_onnxruntime_engine_given_a_model_folder_or_torch_zip_says_what_it_takes(onnx_export: tuple[Path, Path], tmp_path: Path) -> None:
    """--engine onnxruntime with a model folder (was: [Errno 21] Is a directory) or a torch-engine zip: export
    an ONNX model file, or drop --engine."""
    folder, _ = onnx_export
    message = " ".join(autoseg_fails("predict", "-i", tmp_path, "-o", tmp_path / "out", "-m", folder, "--engine", "onnxruntime").split())
    assert (f"{folder}: is a folder; --engine onnxruntime takes an ONNX model file (.onnx.zip): write one with `autoseg "
            f"export-model -m {folder} -o model.onnx.zip --format onnx`, or drop --engine onnxruntime to predict with "
            "the model folder") in message
    with pytest.raises(ModelFileError, match="a model zip for the torch engine .*; drop --engine onnxruntime to predict with it"):
        load_onnx_model(export_model_zip(folder, tmp_path))
    assert not (tmp_path / "out").exists()


def test_an_empty_fold_list_is_refused_as_load_model_refuses_it(onnx_export: tuple[Path, Path]) -> None:
    """``load_onnx_model(zip, [])`` loaded no network; every case then failed with 'sliding_window_predict needs
    at least one network'."""
    _, zip_path = onnx_export
    with pytest.raises(ModelFileError, match=re.escape(f"{zip_path}: empty fold list; give folds of the file (0), or none")):
        load_onnx_model(zip_path, [])


def test_a_checkpoint_other_than_the_exported_one_is_refused(onnx_export: tuple[Path, Path], tmp_path: Path) -> None:
    """--checkpoint best with a zip of the final checkpoint predicted with the final one without a word."""
    _, zip_path = onnx_export
    message = autoseg_fails("predict", "-i", tmp_path, "-o", tmp_path / "out", "-m", zip_path, "--engine", "onnxruntime",
                            "--checkpoint", "best")
    assert f"{zip_path}: holds the final checkpoint, not best; predict with --checkpoint final" in " ".join(message.split())
    assert not (tmp_path / "out").exists()
    assert load_onnx_model(zip_path, checkpoint="checkpoint_final.safetensors").checkpoint == "final"


def test_tampered_onnx_zip_and_missing_fold_are_refused(tmp_path: Path) -> None:
    folder = make_family_model(tmp_path / "results", "unet")
    zip_path = export_onnx_model(folder, tmp_path / "m.zip", folds=[0])
    with pytest.raises(ModelFileError, match=r"fold\(s\) 3 not in the file \(present: 0\)"):
        load_onnx_model(zip_path, folds=[3])
    assert load_onnx_model(zip_path, folds=[0, 0]).folds == ["0"]  # once, as the torch engine loads it
    with zipfile.ZipFile(zip_path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members[DEPLOY] = members[DEPLOY].replace(b'"softmax"', b'"sigmoid"')
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError, match="member 'deploy.json' does not match its sha256"):
        load_onnx_model(tmp_path / "bad.zip")
    with pytest.raises(ModelFileError, match="not an ONNX model zip; write one with `autoseg export-model -m MODEL_FOLDER -o model.onnx.zip --format onnx`"):
        load_onnx_model(_foreign_zip(tmp_path))


# each failed every case with an internal ValueError, or (the configuration) named neither the zip nor a fix
DEPLOY_EDITS = {"patch of strings": {"patch_size": ["a", "b", "c"]}, "mirror axis out of range": {"mirror_axes": [7]},
                "configuration not planned": {"configuration": "2d_nope"}}


def _rewritten(zip_path: Path, target: Path, change: str) -> Path:
    """``zip_path`` with one hostile change, checksums recomputed so that only the change is wrong."""
    with zipfile.ZipFile(zip_path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    if change == "no folds":
        del manifest["folds"]
    elif change == "files as a list":
        manifest["files"] = list(manifest["files"])
    elif change == "no deploy.json":
        del members[DEPLOY], manifest["files"][DEPLOY]
    elif change == "deploy.json with a BOM":  # an editor's re-save; its checksum made to match
        members[DEPLOY] = codecs.BOM_UTF8 + members[DEPLOY]
        manifest["files"][DEPLOY] = hashlib.sha256(members[DEPLOY]).hexdigest()
    elif change == "dataset.json a list":
        members["dataset.json"] = b'["MRI"]'
        manifest["files"]["dataset.json"] = hashlib.sha256(members["dataset.json"]).hexdigest()
    elif change in DEPLOY_EDITS:
        members[DEPLOY] = json.dumps(json.loads(members[DEPLOY]) | DEPLOY_EDITS[change]).encode()
        manifest["files"][DEPLOY] = hashlib.sha256(members[DEPLOY]).hexdigest()
    else:
        members[{"plans without keys": "plans.json", "deploy without keys": DEPLOY, "damaged graph": f"fold_0/{GRAPH}"}[change]] = b"{}"
        manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        for name, data in members.items():
            archive.writestr(name, data)
    return target


@pytest.mark.parametrize("change, message", [
    ("no folds", "manifest.json lacks or has malformed folds, checkpoint or files"),
    ("files as a list", "manifest.json lacks or has malformed folds, checkpoint or files"),
    ("no deploy.json", "member 'deploy.json' is not listed in manifest.json"),
    ("plans without keys", "plans.json: missing version"),
    ("deploy without keys", "deploy.json lacks or has malformed configuration"),
    ("deploy.json with a BOM", "member 'deploy.json': saved as UTF-8 with a byte-order mark (BOM), which JSON readers"),
    ("patch of strings", "deploy.json's patch_size ['a', 'b', 'c'] and mirror_axes [0, 1, 2] must be 3 positive sizes"),
    ("mirror axis out of range", "mirror_axes [7] must be 3 positive sizes and axes among 0..2; re-export it"),
    ("configuration not planned", "deploy.json: configuration '2d_nope' is not in plans"),
    ("damaged graph", "fold_0/network.onnx: not a graph onnxruntime can load"),
    ("dataset.json a list", "dataset.json: must hold a JSON object"),
])
def test_an_onnx_zip_with_a_malformed_manifest_or_member_is_refused_by_name(
        change: str, message: str, onnx_export: tuple[Path, Path], tmp_path: Path) -> None:
    """Each of these stopped predict --engine onnxruntime with an internal error (KeyError, TypeError,
    onnxruntime's InvalidProtobuf); now one message naming the zip and what is wrong, and no output."""
    bad = _rewritten(onnx_export[1], tmp_path / "bad.onnx.zip", change)
    output = autoseg_fails("predict", "-i", tmp_path, "-o", tmp_path / "out", "-m", bad, "--engine", "onnxruntime")
    assert str(bad) in output and message in " ".join(output.split())
    assert not (tmp_path / "out").exists()


def test_an_onnx_zip_declaring_more_than_any_model_is_refused_before_inflating(
        onnx_export: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The onnxruntime engine read every member whole, whatever size it declared (a zip bomb); it reads
    them as import-model does now."""
    monkeypatch.setattr(checksummed_zip, "MAX_UNCOMPRESSED_BYTES", 1024)
    with pytest.raises(ModelFileError, match="a zip bomb or not a model file"):
        load_onnx_model(onnx_export[1])


def test_onnx_export_does_not_reseed_the_callers_random_state(tmp_path: Path) -> None:
    """export_onnx_model seeded torch's global generator (manual_seed(0)) for its example inputs, so a
    notebook's later torch.rand calls gave the same numbers after every export, whatever its own seed."""
    folder = make_family_model(tmp_path / "results", "unet")
    after = []
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        export_onnx_model(folder, tmp_path / f"{name}.onnx.zip", folds=[0])
        after.append(torch.rand(3))
    assert not torch.equal(*after)

def test_onnx_export_refuses_to_write_over_a_file_of_the_model(onnx_export: tuple[Path, Path]) -> None:
    """``--format onnx -o MODEL/plans.json`` replaced the model's plans with the zip."""
    folder = onnx_export[0]
    before = (folder / "plans.json").read_bytes()
    message = autoseg_fails("export-model", "-m", folder, "-o", folder / "plans.json", "-f", 0, "--format", "onnx")
    assert "is a file of the trained model folder" in message
    assert (folder / "plans.json").read_bytes() == before


def test_onnx_export_refuses_a_damaged_postprocessing_decision(tmp_path: Path) -> None:
    """A postprocessing.json cut short stopped --format onnx with an internal error (JSONDecodeError)."""
    folder = make_family_model(tmp_path / "results", "unet")
    (folder / "postprocessing.json").write_text('{"steps": [')
    message = autoseg_fails("export-model", "-m", folder, "-o", tmp_path / "m.zip", "-f", 0, "--format", "onnx")
    assert f"{folder / 'postprocessing.json'}: is not valid JSON" in " ".join(message.split())
    assert not (tmp_path / "m.zip").exists()


def test_continue_with_a_re_exported_zip_of_other_weights_is_refused(tmp_path: Path) -> None:
    """The ONNX engine recorded no weights digest: ``--continue`` with a zip re-exported under the same name
    from a retrained model skipped the old model's outputs as done."""
    folder = make_family_model(tmp_path / "results", "unet")
    inputs, output, zip_path = tmp_path / "in", tmp_path / "out", tmp_path / "unet.onnx.zip"
    inputs.mkdir()
    (inputs / CASE.name).write_bytes(CASE.read_bytes())
    export_onnx_model(folder, zip_path, folds=[0])
    autoseg("predict", "-i", inputs, "-o", output, "-m", zip_path, "--engine", "onnxruntime", "--no-tta")
    checkpoint = folder / "fold_0" / "checkpoint_final.safetensors"
    retrained = load_weights(checkpoint, ModelFileError)
    retrained["network_weights"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in retrained["network_weights"].items()}
    save_weights(checkpoint, retrained)
    export_onnx_model(folder, zip_path, folds=[0])
    message = autoseg_fails("predict", "-i", inputs, "-o", output, "-m", zip_path, "--engine", "onnxruntime", "--no-tta", "--continue")
    assert "holds predictions of another model or settings (weights" in " ".join(message.split())


def _foreign_zip(tmp_path: Path) -> Path:
    """A zip with a manifest of some other tool."""
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "other-tool"}))
    return tmp_path / "foreign.zip"


def export_model_zip(folder: Path, tmp_path: Path) -> Path:
    from autoseg.evaluation.model_files import export_model

    return export_model(folder, tmp_path / "weights.zip", folds=[0])


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelFileError, match=r"install them with: pip install 'autoseg\[onnx\]'"):
        require_onnx("the onnxruntime engine")


def test_a_2d_model_runs_slice_by_slice_in_onnxruntime_with_torch_labels(tmp_path: Path) -> None:
    """2D graphs take (B, C, y, x); the sliding window feeds them one slice per tile as it does torch."""
    from test_inference_predict import make_model

    folder = make_model(tmp_path / "models", "2d", folds=("0",))
    zip_path = export_onnx_model(folder, tmp_path / "2d.zip", folds=[0])
    assert json.loads(zipfile.ZipFile(zip_path).read(DEPLOY))["spatial_dims"] == 2
    data, geometry = read_case_images([CASE])
    expected = predict_array(load_model(folder, [0], device="cpu"), data, geometry, mixed_precision="off").labels
    got = predict_array(load_onnx_model(zip_path), data, geometry, mixed_precision="off").labels
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(got, expected)
