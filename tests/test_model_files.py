"""Model export/import: exact round trip of weights and files; tampered or incompatible zips refused."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch

from autoseg import __version__
from autoseg.errors import EvaluationError, ModelFileError
import autoseg.evaluation.model_files as model_files
from autoseg.evaluation.model_files import (
    MODEL_ZIP_FORMAT_VERSION,
    MANIFEST,
    export_model,
    import_model,
    unpacked_model,
)
from autoseg.networks import Topology, create_network
from autoseg.utils.weights_file import load_weights, save_weights, weights_from_bytes, weights_to_bytes

from cli_helpers import autoseg, autoseg_fails
from preprocessing_helpers import make_configuration, make_plans

torch.set_num_threads(1)

DATASET = "Dataset123_Tiny"
MODEL = "unet__autosegPlans__3d_fullres"
TOPOLOGY = Topology(3, [2, 4], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])
FOLDS = (0, 1)
PLANS = {**make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0], patch_size=[8, 8, 8])}), "dataset_name": DATASET}
DATASET_JSON = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 2, "file_ending": ".nii.gz"}


def load(path: Path) -> dict:
    return load_weights(path, ModelFileError)


def make_model_folder(results: Path, with_postprocessing: bool = True, legacy: bool = False) -> Path:
    """A results model folder in the documented layout, with one tiny U-Net checkpoint per fold."""
    folder = results / DATASET / MODEL
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(PLANS))
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON))
    (folder / "training_config.yaml").write_text("optimizer:\n  lr: 0.01\n")
    if with_postprocessing:
        (folder / "postprocessing.json").write_text(json.dumps({"version": 1, "steps": [], "file_ending": ".nii.gz"}))
    for fold in FOLDS:
        torch.manual_seed(fold)
        network = create_network("unet", TOPOLOGY, 1, 2)
        metadata = {"format_version": 1, "network": "unet", "topology": TOPOLOGY.__dict__, "in_channels": 1,
                    "num_outputs": 2, "configuration": "3d_fullres", "epoch": 3 + fold, "mirror_axes": [0, 1, 2]}
        checkpoint = {"network_weights": network.state_dict(), "optimizer_state": {"lr": 0.01},
                      "metadata": metadata}
        (folder / f"fold_{fold}").mkdir()
        if legacy:  # autoseg before safetensors
            torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pt")
        else:
            save_weights(folder / f"fold_{fold}" / "checkpoint_final.safetensors", checkpoint)
    return folder


@pytest.fixture()
def exported(tmp_path: Path) -> tuple[Path, Path]:
    folder = make_model_folder(tmp_path / "results")
    return folder, export_model(folder, tmp_path / "model.zip", folds=FOLDS)


def rewrite_zip(source: Path, target: Path, edit) -> Path:
    """Copy a zip member by member through ``edit(members: dict) -> dict``."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in edit(members).items():
            archive.writestr(name, data)
    return target


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*")) if path.exists() else []


def test_round_trip_restores_weights_metadata_and_files(exported: tuple[Path, Path], tmp_path: Path) -> None:
    folder, zip_path = exported
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read(MANIFEST))
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(archive.read(name)).hexdigest() == digest
    assert names == {MANIFEST, f"{MODEL}/plans.json", f"{MODEL}/dataset.json", f"{MODEL}/training_config.yaml",
                     f"{MODEL}/postprocessing.json", f"{MODEL}/fold_0/checkpoint_final.safetensors",
                     f"{MODEL}/fold_1/checkpoint_final.safetensors"}
    assert manifest["format_version"] == MODEL_ZIP_FORMAT_VERSION and manifest["autoseg_version"] == __version__
    assert manifest["dataset_name"] == DATASET and manifest["models"] == [MODEL] and manifest["folds"] == ["0", "1"]

    (imported,) = import_model(zip_path, tmp_path / "clean")
    assert imported == tmp_path / "clean" / DATASET / MODEL
    for name in ("plans.json", "dataset.json", "training_config.yaml", "postprocessing.json"):
        assert (imported / name).read_bytes() == (folder / name).read_bytes()
    for fold in FOLDS:
        original = load(folder / f"fold_{fold}" / "checkpoint_final.safetensors")
        loaded = load(imported / f"fold_{fold}" / "checkpoint_final.safetensors")
        assert set(loaded) == {"network_weights", "metadata"}  # optimizer state is not exported
        assert loaded["metadata"] == original["metadata"]
        assert list(loaded["network_weights"]) == list(original["network_weights"])
        for key, tensor in original["network_weights"].items():
            assert loaded["network_weights"][key].dtype == tensor.dtype
            assert torch.equal(loaded["network_weights"][key], tensor)
        network = create_network("unet", TOPOLOGY, 1, 2)
        network.load_state_dict(loaded["network_weights"])  # the imported checkpoint builds the network
    assert [p.name for p in (tmp_path / "clean" / DATASET).iterdir()] == [MODEL]  # no staging left behind


def test_the_default_checkpoint_of_export_is_named_as_a_file() -> None:
    """model_files.DEFAULT_CHECKPOINT was a file name while inference.engine.DEFAULT_CHECKPOINT, spelled the same,
    is a kind ('final'): one name, two meanings. export_model's default names the file it packs."""
    assert model_files.DEFAULT_CHECKPOINT_FILE == "checkpoint_final.safetensors"
    assert inspect.signature(export_model).parameters["checkpoint"].default == model_files.DEFAULT_CHECKPOINT_FILE
    assert not hasattr(model_files, "DEFAULT_CHECKPOINT")


def test_legacy_pt_checkpoints_are_exported_as_safetensors(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "results", legacy=True)
    (imported,) = import_model(export_model(folder, tmp_path / "m.zip", folds=FOLDS), tmp_path / "clean")
    for fold in FOLDS:
        original = torch.load(folder / f"fold_{fold}" / "checkpoint_final.pt", weights_only=True)
        loaded = load(imported / f"fold_{fold}" / "checkpoint_final.safetensors")
        assert loaded["metadata"] == original["metadata"]
        assert all(torch.equal(loaded["network_weights"][k], t) for k, t in original["network_weights"].items())


def test_safetensors_members_open_with_the_library_alone(exported: tuple[Path, Path]) -> None:
    """Any safetensors reader gets the weights under network_weights/<name>, without autoseg."""
    from safetensors.torch import load

    folder, zip_path = exported
    with zipfile.ZipFile(zip_path) as archive:
        tensors = load(archive.read(f"{MODEL}/fold_0/checkpoint_final.safetensors"))
    original = load_weights(folder / "fold_0" / "checkpoint_final.safetensors", ModelFileError)["network_weights"]
    assert set(tensors) == {f"network_weights/{k}" for k in original}
    assert all(torch.equal(tensors[f"network_weights/{k}"], t) for k, t in original.items())


def test_version_1_model_file_is_refused_with_the_re_export_command(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, zip_path = exported
    bad = rewrite_zip(zip_path, tmp_path / "old.zip", _edit_manifest(format_version=1, autoseg_version="0.1.0"))
    with pytest.raises(ModelFileError, match=r"version 1 .* re-export it with `autoseg export-model -m MODEL_FOLDER"):
        import_model(bad, tmp_path / "clean")


def test_tensor_encoding_keeps_every_dtype_and_shape() -> None:
    tensors = {
        "f16": torch.tensor([[1.5, -2.0]], dtype=torch.float16),
        "bf16": torch.tensor([3.25], dtype=torch.bfloat16),
        "i64": torch.tensor(7, dtype=torch.int64),  # 0-d tensor (num_batches_tracked)
        "empty": torch.zeros(0, 3),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
    }
    tree = {"weights": tensors, "metadata": {"epoch": 2}, "state": {0: (1.5, None, [torch.ones(2)])}}
    decoded = weights_from_bytes(weights_to_bytes(tree), "test", ModelFileError)
    assert decoded["metadata"] == {"epoch": 2} and decoded["state"][0][:2] == (1.5, None)  # int keys, tuples
    assert torch.equal(decoded["state"][0][2][0], torch.ones(2))
    decoded = decoded["weights"]
    for name, tensor in tensors.items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor)


def test_optional_postprocessing_is_left_out_when_absent(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "results", with_postprocessing=False)
    zip_path = export_model([folder], tmp_path / "m.zip", folds=[1], checkpoint="final")
    with zipfile.ZipFile(zip_path) as archive:
        assert f"{MODEL}/postprocessing.json" not in archive.namelist()
        assert f"{MODEL}/fold_0/checkpoint_final.safetensors" not in archive.namelist()
    (imported,) = import_model(zip_path, tmp_path / "clean")
    assert sorted(p.name for p in imported.iterdir()) == ["dataset.json", "fold_1", "plans.json", "training_config.yaml"]


@pytest.mark.parametrize("member", ["plans.json", "fold_0/checkpoint_final.safetensors", "fold_1/checkpoint_best.safetensors"])
def test_export_refuses_to_write_over_a_file_of_the_model(member: str, tmp_path: Path) -> None:
    """``-o MODEL/plans.json`` replaced the model's plans (or a checkpoint) with the zip; a new file in the
    model folder is still written, and written again."""
    folder = make_model_folder(tmp_path / "results")
    target = folder / member
    if not target.exists():
        target.write_bytes(b"the user's best checkpoint")
    before = target.read_bytes()
    message = " ".join(autoseg_fails("export-model", "-m", folder, "-o", target, "-f", 0).split())
    assert f"{target}: is a file of the trained model folder {folder}; the zip would replace it" in message
    assert target.read_bytes() == before
    for _ in range(2):
        assert export_model(folder, folder / "model.zip", folds=[0]).is_file()


@pytest.mark.parametrize("format_", ["autoseg", "onnx"])
@pytest.mark.parametrize("name", ["model.nii.gz", "labels/case_1.nrrd", "model.PNG"])
def test_export_refuses_an_output_named_as_an_image(format_: str, name: str, tmp_path: Path) -> None:
    """``-o model.nii.gz`` wrote the zip under an image's name, which a folder of label maps (predictions, labelsTr)
    then read as a case's label map, or a viewer failed to open; refused before any weights are read."""
    folder = make_model_folder(tmp_path / "results")
    target = tmp_path / name
    message = " ".join(autoseg_fails("export-model", "-m", folder, "-o", target, "-f", 0, "--format", format_).split())
    assert (f"error: {target}: the model file is a zip, not an image, and would be read as one there; give a .zip file "
            "name, e.g. model.zip") in message, message
    assert not target.exists() and not any(target.parent.glob(".*"))


def _as_configuration(path: Path, configuration: str) -> None:
    """Rewrite a fold's checkpoint as if trained for another configuration (a fold copied from its folder)."""
    checkpoint = load_weights(path, ModelFileError)
    checkpoint["metadata"]["configuration"] = configuration
    save_weights(path, checkpoint)


def test_a_fold_of_another_configuration_is_refused_by_export_and_import(tmp_path: Path) -> None:
    """A 2d fold copied into a 3d_fullres model folder was exported and imported, and every predicted case then
    failed with torch's shape error; export and import now name the checkpoint and both configurations."""
    folder = make_model_folder(tmp_path / "results")
    good = export_model(folder, tmp_path / "good.zip", folds=[0, 1])
    checkpoint = folder / "fold_1" / "checkpoint_final.safetensors"
    _as_configuration(checkpoint, "2d")
    problem = f"is a checkpoint of unet__autosegPlans__2d, but its model folder is {MODEL}"
    with pytest.raises(ModelFileError, match=f"{re.escape(str(checkpoint))}: {problem}"):
        export_model(folder, tmp_path / "m.zip", folds=[0, 1])
    member = f"{MODEL}/fold_1/checkpoint_final.safetensors"

    def swap_fold(members: dict[str, bytes]) -> dict[str, bytes]:
        members[member] = checkpoint.read_bytes()
        manifest = json.loads(members[MANIFEST])
        manifest["files"][member] = hashlib.sha256(members[member]).hexdigest()
        return {**members, MANIFEST: json.dumps(manifest).encode()}

    bad = rewrite_zip(good, tmp_path / "bad.zip", swap_fold)
    with pytest.raises(ModelFileError, match=f"refusing to import: member '{member}': {problem}"):
        import_model(bad, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("decision", ['{"steps": [', '{"version": 1, "steps": [{"operation": "keep_largest"}], "file_ending": ".nii.gz"}'])
def test_export_refuses_a_damaged_postprocessing_decision(decision: str, tmp_path: Path) -> None:
    """A damaged postprocessing.json was exported, and only import-model refused the zip; export now names it."""
    folder = make_model_folder(tmp_path / "results")
    (folder / "postprocessing.json").write_text(decision)
    message = " ".join(autoseg_fails("export-model", "-m", folder, "-o", tmp_path / "m.zip", "-f", 0).split())
    assert f"{folder / 'postprocessing.json'}: " in message and "re-run autoseg postprocess determine" in message
    assert not (tmp_path / "m.zip").exists()


def test_export_and_unpacking_read_each_description_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Export read postprocessing.json twice (once to check it, once to pack it: an edit between the two was packed
    unchecked) and plans.json twice (to pack it, then to check the cascade); ``predict -m model.zip`` read the
    unpacked plans.json again for that check after the zip's own had been parsed. Each is read once now."""
    folder = make_model_folder(tmp_path / "results")
    reads: list[str] = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self.name) or read_bytes(self))
    zip_path = export_model(folder, tmp_path / "model.zip", folds=(0,))
    assert sorted(n for n in reads if n.endswith(".json")) == ["dataset.json", "plans.json", "postprocessing.json"]
    reads.clear()
    with unpacked_model(zip_path, folds=(0,)) as unpacked:
        assert unpacked.name == MODEL
    assert not [n for n in reads if n.endswith(".json")]  # the zip's members, read from the zip, are all there is


def test_predict_from_a_model_zip_loads_the_plans_and_dataset_json_the_zip_check_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``predict -m model.zip``: load_model read and checked the unpacked plans.json and dataset.json a second
    time after the zip's check had parsed them; it now takes the parsed ones (and still checks they agree)."""
    import autoseg.inference.model as model_module
    from conftest import HIPPOCAMPUS

    zip_path = export_model(make_model_folder(tmp_path / "results"), tmp_path / "model.zip", folds=(0,))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case_0000.nii.gz").write_bytes((HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz").read_bytes())
    read: list[object] = []
    load_plans, read_json = model_module.load_plans, model_module._read_json
    monkeypatch.setattr(model_module, "load_plans", lambda path: read.append(path) or load_plans(path))
    monkeypatch.setattr(model_module, "_read_json", lambda path: read.append(path) or read_json(path))
    autoseg("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", zip_path, "-f", 0, "--no-tta")
    assert (tmp_path / "out" / "case.nii.gz").is_file() and read == []


def test_a_cascade_stage_is_neither_exported_nor_predicted_without_its_lowres_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cascade exported alone was written, imported and unpacked without a word; predict then said the
    low-resolution stage had to be trained."""
    from test_inference_predict import make_model

    lowres = make_model(tmp_path / "results", "3d_lowres", folds=("0",))
    cascade = make_model(tmp_path / "results", "3d_cascade_fullres", folds=("0",), in_channels=3)
    problem = (f"{cascade.name} is a cascade stage, which predicts from the labels of {lowres.name}, and {lowres.name} "
               "is not in the file; ")
    with pytest.raises(ModelFileError) as caught:
        export_model(cascade, tmp_path / "cascade.zip", folds=(0,))
    assert str(caught.value).startswith(f"export-model: {problem}export both: autoseg export-model -m "
                                        f"<results>/<Dataset>/{lowres.name} -m <results>/<Dataset>/{cascade.name}")
    assert not (tmp_path / "cascade.zip").exists()
    with unpacked_model(export_model([lowres, cascade], tmp_path / "both.zip", folds=(0,))) as folder:
        assert folder.name == cascade.name
    monkeypatch.setattr(model_files, "_check_cascades_complete", lambda *args: None)  # a zip of an older export
    alone = export_model(cascade, tmp_path / "cascade.zip", folds=(0,))
    monkeypatch.undo()
    with pytest.raises(ModelFileError, match=re.escape(f"{alone}: {problem}re-export it with both models")):
        with unpacked_model(alone):
            pass


def test_export_takes_a_model_folder_given_as_dot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``export-model -m .`` inside the model folder was refused as not named <network>__<plans>__<configuration>."""
    folder = make_model_folder(tmp_path / "results")
    monkeypatch.chdir(folder)
    zip_path = export_model(".", tmp_path / "m.zip", folds=[0])
    assert json.loads(zipfile.ZipFile(zip_path).read(MANIFEST))["models"] == [MODEL]


def test_overwrite_refuses_to_replace_the_folder_holding_the_zip(tmp_path: Path) -> None:
    """``import-model MODEL/model.zip --overwrite`` into the zip's own results root deleted the zip with the model
    folder it replaced; now refused with nothing changed, and a zip outside still replaces the folder."""
    folder = make_model_folder(tmp_path / "results")
    zip_path = export_model(folder, folder / "model.zip", folds=[0])
    with pytest.raises(ModelFileError, match=f"{re.escape(str(zip_path))}: lies in {re.escape(str(folder))}, which "
                                             "--overwrite would replace"):
        import_model(zip_path, tmp_path / "results", overwrite=True)
    assert zip_path.is_file() and (folder / "fold_1").is_dir()
    outside = zip_path.rename(tmp_path / "model.zip")
    assert import_model(outside, tmp_path / "results", overwrite=True) == [folder] and outside.is_file()


def test_export_names_a_missing_fold_and_a_missing_checkpoint(tmp_path: Path) -> None:
    """A fold the model lacks was named as its missing checkpoint file ('fold_2/checkpoint_final.safetensors: not
    found (present: none)'), where predict names the missing and the present folds; both now say it alike."""
    folder = make_model_folder(tmp_path / "results")
    with pytest.raises(ModelFileError) as info:
        export_model(folder, tmp_path / "m.zip", folds=[0, 2, 3])
    assert str(info.value) == f"{folder}: fold(s) 2, 3 not found (present: 0, 1); train them or choose present folds with -f"
    (folder / "fold_2").mkdir()  # an interrupted training's fold, without the checkpoint
    missing = folder / "fold_2" / "checkpoint_final.safetensors"
    with pytest.raises(ModelFileError) as info:
        export_model(folder, tmp_path / "m.zip", folds=[0, 2])
    assert str(info.value) == f"{missing}: not found (present: none); train this fold first or choose other folds/--checkpoint"
    assert not (tmp_path / "m.zip").exists()


@pytest.mark.parametrize(("checkpoint", "message"), [
    ("foo", "checkpoint 'foo' unknown; choose one of final, best, latest"),
    ("checkpoint_foo.safetensors", "checkpoint 'checkpoint_foo.safetensors' unknown; choose one of final, best, latest"),
    ("best", "fold_0/checkpoint_best.safetensors: not found (present: final); train this fold first or choose other "
             "folds/--checkpoint"),
])
def test_export_names_the_checkpoints_to_choose_from(checkpoint: str, message: str, tmp_path: Path) -> None:
    """An unknown --checkpoint is named as such with the choices (was: 'train this fold first'); a missing one
    lists the checkpoints the fold holds."""
    folder = make_model_folder(tmp_path / "results")
    text = " ".join(autoseg_fails("export-model", "-m", folder, "-o", tmp_path / "m.zip", "-f", 0, "--checkpoint", checkpoint).split())
    assert message in text
    assert not (tmp_path / "m.zip").exists()


@pytest.mark.parametrize("name", ["mymodel", "unet__3d_fullres", "unet__autosegPlans__3d_fullres__copy"])
def test_export_and_import_refuse_a_model_folder_not_named_network_plans_configuration(name: str, tmp_path: Path) -> None:
    """export-model used to write such a folder, which import-model then refused: both apply predict's rule."""
    folder = make_model_folder(tmp_path / "results").rename(tmp_path / "results" / DATASET / name)
    with pytest.raises(ModelFileError) as info:
        export_model(folder, tmp_path / "m.zip", folds=[0])
    assert str(info.value).startswith(f"{folder}: model folders are named <network>__<plans>__<configuration>; give the "
                                      "folder autoseg train wrote, under its name")
    assert not (tmp_path / "m.zip").exists()
    renamed = rewrite_zip(export_model(make_model_folder(tmp_path / "other"), tmp_path / "ok.zip", folds=[0]),
                          tmp_path / "renamed.zip", _rename_model(name))
    with pytest.raises(ModelFileError, match=f"manifest.json names model '{name}': model folders are named "
                                             "<network>__<plans>__<configuration>; the file was not written by autoseg export-model"):
        import_model(renamed, tmp_path / "installed")
    assert not (tmp_path / "installed").exists()


def _rename_model(name: str):
    """A zip whose model was renamed, manifest and checksums updated (as an export of that folder would be)."""
    def edit(members: dict) -> dict:
        renamed = {k.replace(MODEL, name): v for k, v in members.items() if k != MANIFEST}
        manifest = json.loads(members[MANIFEST])
        manifest["models"] = [name]
        manifest["files"] = {k: hashlib.sha256(v).hexdigest() for k, v in renamed.items()}
        return {MANIFEST: json.dumps(manifest).encode(), **renamed}
    return edit


def _modify_member(members: dict) -> dict:
    name = f"{MODEL}/fold_0/checkpoint_final.safetensors"
    data = bytearray(members[name])
    data[-1] ^= 0xFF  # flip bits of one weight
    return {**members, name: bytes(data)}


def _edit_manifest(**changes):
    def edit(members: dict) -> dict:
        manifest = json.loads(members[MANIFEST])
        manifest.update(changes)
        return {**members, MANIFEST: json.dumps(manifest).encode()}
    return edit


def _add_listed_member(name: str, data: bytes):
    """A tamperer who also updates the manifest."""
    def edit(members: dict) -> dict:
        manifest = json.loads(members[MANIFEST])
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
        return {**members, name: data, MANIFEST: json.dumps(manifest).encode()}
    return edit


TAMPERED = {
    "modified member": (
        _modify_member,
        f"member '{MODEL}/fold_0/checkpoint_final.safetensors' does not match its sha256 in manifest.json; "
        "the file was altered or damaged",
    ),
    "extra member": (
        lambda m: {**m, f"{MODEL}/fold_0/evil.py": b"import os"},
        f"member '{MODEL}/fold_0/evil.py' is not listed in manifest.json; the file was altered after export",
    ),
    "extra member listed in the manifest": (
        _add_listed_member(f"{MODEL}/hook.py", b"import os"),
        f"member '{MODEL}/hook.py' is not part of an autoseg model file",
    ),
    "zip slip": (
        lambda m: {**m, "../outside.txt": b"x"},
        "member '../outside.txt' has an unsafe path (absolute, '..' or unusual characters)",
    ),
    "absolute path": (
        lambda m: {**m, "/tmp/abs.txt": b"x"},
        "member '/tmp/abs.txt' has an unsafe path (absolute, '..' or unusual characters)",
    ),
    "missing manifest": (
        lambda m: {k: v for k, v in m.items() if k != MANIFEST},
        "no manifest.json; the file was not written by autoseg export-model",
    ),
    "missing member": (
        lambda m: {k: v for k, v in m.items() if k != f"{MODEL}/plans.json"},
        f"member '{MODEL}/plans.json' listed in manifest.json is missing; the file is incomplete",
    ),
    "wrong version": (
        _edit_manifest(format_version=99, autoseg_version="9.0"),
        f"model file format version 99 (written by autoseg 9.0) is not supported; autoseg {__version__} reads "
        f"version {MODEL_ZIP_FORMAT_VERSION}; import it with a matching autoseg version",
    ),
    "unsafe dataset name in manifest": (
        _edit_manifest(dataset_name=".."),
        "manifest.json names an unsafe or empty dataset, model or checkpoint",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_zip_is_refused_and_nothing_written(case: str, exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, zip_path = exported
    edit, problem = TAMPERED[case]
    bad = rewrite_zip(zip_path, tmp_path / "bad.zip", edit)
    clean = tmp_path / "clean"
    with pytest.raises(ModelFileError) as info:
        import_model(bad, clean)
    assert str(info.value) == f"{bad}: refusing to import: {problem}"
    assert files_under(clean) == [] and not (tmp_path / "outside.txt").exists()


def test_weights_with_a_lying_header_are_refused(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Checksums recomputed by the tamperer: the header itself is still checked against the data."""
    _, zip_path = exported
    name = f"{MODEL}/fold_0/checkpoint_final.safetensors"
    with zipfile.ZipFile(zip_path) as archive:
        data = archive.read(name)
    truncated = data[:-4]
    bad = rewrite_zip(zip_path, tmp_path / "bad.zip", lambda m: _add_listed_member(name, truncated)(m))
    with pytest.raises(ModelFileError) as info:
        import_model(bad, tmp_path / "clean")
    assert str(info.value).startswith(f"{bad}: refusing to import: member '{name}': not a valid safetensors weight file (")
    assert files_under(tmp_path / "clean") == []


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.zip"
    fake.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelFileError) as info:
        import_model(fake, tmp_path / "clean")
    assert str(info.value) == f"{fake}: refusing to import: not a zip file, or a truncated one (File is not a zip file)"


def test_existing_model_folder_is_kept_unless_overwrite(exported: tuple[Path, Path], tmp_path: Path) -> None:
    _, zip_path = exported
    target = tmp_path / "clean" / DATASET / MODEL
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ModelFileError) as info:
        import_model(zip_path, tmp_path / "clean")
    assert str(info.value) == f"{target}: model folder already exists; pass --overwrite to replace it, or import into another results folder"
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    import_model(zip_path, tmp_path / "clean", overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "fold_1" / "checkpoint_final.safetensors").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [MODEL]


@pytest.mark.parametrize("kind", ["file", "link"])
def test_overwrite_replaces_a_file_or_link_at_the_models_place_without_leaving_it_behind(
    kind: str, exported: tuple[Path, Path], tmp_path: Path
) -> None:
    """The replaced file, or link to a model folder elsewhere, was kept as a hidden ``.<model>.replaced``
    (rmtree refuses both); a link's folder must stay untouched."""
    _, zip_path = exported
    target = tmp_path / "clean" / DATASET / MODEL
    target.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    if kind == "file":
        target.write_text("not a model")
    else:
        target.symlink_to(elsewhere, target_is_directory=True)
    import_model(zip_path, tmp_path / "clean", overwrite=True)
    assert target.is_dir() and not target.is_symlink() and (target / "fold_0" / "checkpoint_final.safetensors").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == [MODEL]
    assert (elsewhere / "keep.txt").read_text() == "mine"


def test_an_import_waits_for_one_running_and_then_finds_its_folder(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Two imports at once both passed the 'already exists' check and the second replaced the first's
    folder unasked: the check and the install now run under the dataset folder's lock."""
    import threading

    from autoseg.utils.atomic import folder_lock

    _, zip_path = exported
    dataset_dir = tmp_path / "clean" / DATASET
    dataset_dir.mkdir(parents=True)
    outcome: list[BaseException | None] = []

    def second_import() -> None:
        try:
            import_model(zip_path, tmp_path / "clean")
            outcome.append(None)
        except ModelFileError as exc:
            outcome.append(exc)

    with folder_lock(dataset_dir):  # an import (or find-best) running
        thread = threading.Thread(target=second_import)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive() and not outcome  # waits for the lock
        (dataset_dir / MODEL).mkdir()  # what the running import installs
    thread.join(timeout=60)
    assert isinstance(outcome[0], ModelFileError) and "model folder already exists" in str(outcome[0])


def test_imported_checkpoints_build_the_same_networks_for_inference(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Inference builds its networks from the imported checkpoints alone: same outputs as the originals."""
    from autoseg.inference.model import build_network

    folder, zip_path = exported
    (imported,) = import_model(zip_path, tmp_path / "clean")
    x = torch.randn(1, 1, 8, 8, 8)
    for fold in FOLDS:
        paths = [f / f"fold_{fold}" / "checkpoint_final.safetensors" for f in (folder, imported)]
        a, b = (build_network(load(p), p, torch.device("cpu")) for p in paths)
        with torch.no_grad():
            assert torch.equal(a(x), b(x))


def test_the_same_checkpoint_always_gives_the_same_bytes() -> None:
    """safetensors writes its metadata map in no fixed order; autoseg keeps one entry so exports repeat."""
    tree = {"network_weights": {"w": torch.arange(6.0).reshape(2, 3)}, "metadata": {"epoch": 3, "patch_size": [8, 8, 8]}}
    assert len({weights_to_bytes(tree) for _ in range(8)}) == 1


ENSEMBLE_DECISION = {"version": 1, "steps": [{"operation": "keep_largest", "target": "a", "label_values": [1]}],
                     "file_ending": ".nii.gz"}


def make_ensemble(results: Path, models: tuple[str, ...], decision: dict | None = None) -> Path:
    """find-best's layout: ensembles/ensemble___A___B/postprocessing.json beside the model folders."""
    from autoseg.evaluation.selection import ensemble_name

    folder = results / DATASET / "ensembles" / ensemble_name(models)
    folder.mkdir(parents=True)
    (folder / "postprocessing.json").write_text(json.dumps(decision or ENSEMBLE_DECISION))
    return folder / "postprocessing.json"


def two_models(results: Path) -> tuple[Path, Path]:
    first = make_model_folder(results)
    second = results / DATASET / "unet__otherPlans__3d_fullres"
    second.mkdir()
    for path in first.rglob("*"):
        target = second / path.relative_to(first)
        target.mkdir() if path.is_dir() else target.write_bytes(path.read_bytes())
    return first, second


def test_a_fold_holding_another_folds_checkpoint_is_refused_by_export_and_import(tmp_path: Path) -> None:
    """fold_0's checkpoint copied into fold_1 was exported and imported as fold 1: predict averaged fold 0 twice."""
    folder = make_model_folder(tmp_path / "results")
    for fold in FOLDS:
        path = folder / f"fold_{fold}" / "checkpoint_final.safetensors"
        checkpoint = load(path)
        save_weights(path, {**checkpoint, "metadata": {**checkpoint["metadata"], "fold": 0}})
    path = folder / "fold_1" / "checkpoint_final.safetensors"
    with pytest.raises(ModelFileError) as info:
        export_model(folder, tmp_path / "model.zip", folds=FOLDS)
    assert str(info.value) == (f"{path}: is the checkpoint of fold 0, not of fold_1 (copied from fold_0?); predict would "
                               "count fold 0 twice: export each fold's own checkpoint, or leave fold_1 out (-f)")
    good = export_model(folder, tmp_path / "good.zip", folds=[0])
    name = f"{MODEL}/fold_0/checkpoint_final.safetensors"
    renamed = f"{MODEL}/fold_1/checkpoint_final.safetensors"

    def as_fold_1(members: dict) -> dict:
        manifest = json.loads(members[MANIFEST])
        manifest["folds"] = ["1"]
        manifest["files"][renamed] = manifest["files"].pop(name)
        return {**{renamed if k == name else k: v for k, v in members.items()}, MANIFEST: json.dumps(manifest).encode()}

    bad = rewrite_zip(good, tmp_path / "bad.zip", as_fold_1)
    with pytest.raises(ModelFileError, match=rf"refusing to import: member '{renamed}': is the checkpoint of fold 0, not of fold_1"):
        import_model(bad, tmp_path / "clean")
    assert files_under(tmp_path / "clean") == []


def test_a_zip_holding_a_model_of_another_dataset_is_refused_naming_both(tmp_path: Path) -> None:
    """A zip (checksums updated) whose second model's plans.json is of Dataset005_Prostate was installed under the
    manifest's Dataset123_Tiny, where predict then wrote its label maps as Dataset005's."""
    first, second = two_models(tmp_path / "results")
    zip_path = export_model([first, second], tmp_path / "model.zip", folds=FOLDS)
    foreign = json.dumps({**PLANS, "dataset_name": "Dataset005_Prostate"}).encode()
    bad = rewrite_zip(zip_path, tmp_path / "bad.zip", _add_listed_member(f"{second.name}/plans.json", foreign))
    with pytest.raises(ModelFileError) as info:
        import_model(bad, tmp_path / "clean")
    assert str(info.value) == (
        f"{bad}: refusing to import: member '{second.name}/plans.json' plans dataset Dataset005_Prostate, but the file "
        f"installs its models under {DATASET} (its manifest.json); a model of another dataset was packed in: export "
        "each dataset's models into a file of its own"
    )
    assert files_under(tmp_path / "clean") == []


def test_export_refuses_a_model_folder_under_another_datasets_results(tmp_path: Path) -> None:
    """The zip installs its models under the name of the folder they lie in: one moved there from another dataset's
    results was exported, and installed as a model of the wrong dataset."""
    folder = make_model_folder(tmp_path / "results")
    (folder / "plans.json").write_text(json.dumps({**PLANS, "dataset_name": "Dataset005_Prostate"}))
    with pytest.raises(ModelFileError) as info:
        export_model(folder, tmp_path / "model.zip", folds=FOLDS)
    assert str(info.value) == (
        f"{folder / 'plans.json'}: plans dataset Dataset005_Prostate, but the model folder lies in {DATASET}'s results "
        f"folder ({folder.parent}), under whose name the zip would install it; move it to "
        f"{tmp_path / 'results' / 'Dataset005_Prostate'} and export it from there"
    )
    assert not (tmp_path / "model.zip").exists()


def test_an_ensembles_postprocessing_travels_with_its_models(tmp_path: Path) -> None:
    """find-best's winner may be an ensemble whose postprocessing decision lives in ensembles/, beside
    neither model folder: exporting both models carries it, importing installs it where find-best keeps it."""
    from autoseg.evaluation.model_files import install_model_file

    first, second = two_models(tmp_path / "results")
    decision = make_ensemble(tmp_path / "results", (first.name, second.name))
    make_ensemble(tmp_path / "results", (first.name, "nnunet__otherPlans__2d"))  # a model not exported: left out
    zip_path = export_model([first, second], tmp_path / "model.zip", folds=FOLDS)
    with zipfile.ZipFile(zip_path) as archive:
        manifest = json.loads(archive.read(MANIFEST))
        ensembles = [n for n in archive.namelist() if n.startswith("ensembles/")]
    assert manifest["ensembles"] == [decision.parent.name]
    assert ensembles == [f"ensembles/{decision.parent.name}/postprocessing.json"]

    installed = install_model_file(zip_path, tmp_path / "clean")
    assert installed.models == [tmp_path / "clean" / DATASET / first.name, tmp_path / "clean" / DATASET / second.name]
    assert installed.decisions == [tmp_path / "clean" / DATASET / "ensembles" / decision.parent.name / "postprocessing.json"]
    assert installed.decisions[0].read_bytes() == decision.read_bytes()

    with pytest.raises(ModelFileError, match="ensemble postprocessing decision already exists; pass --overwrite"):
        _import_over_decision(zip_path, tmp_path)
    assert install_model_file(zip_path, tmp_path / "clean", overwrite=True).decisions == installed.decisions
    printed = autoseg("import-model", zip_path, "--results-root", tmp_path / "cli")
    assert f"installed: {tmp_path / 'cli' / DATASET / 'ensembles' / decision.parent.name / 'postprocessing.json'} (postprocess apply" in printed


def _import_over_decision(zip_path: Path, tmp_path: Path) -> None:
    """A decision already at the target (the models not yet): refused before anything is written."""
    target = tmp_path / "again"
    with zipfile.ZipFile(zip_path) as archive:
        name = json.loads(archive.read(MANIFEST))["ensembles"][0]
    existing = target / DATASET / "ensembles" / name / "postprocessing.json"
    existing.parent.mkdir(parents=True)
    existing.write_text("{}")
    try:
        import_model(zip_path, target)
    finally:
        assert existing.read_text() == "{}" and not (target / DATASET / MODEL).exists()


def test_a_zip_without_ensembles_in_its_manifest_still_imports(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Zips exported before ensembles were carried have no "ensembles" key."""
    _, zip_path = exported

    def drop_key(members: dict) -> dict:
        manifest = json.loads(members[MANIFEST])
        del manifest["ensembles"]
        return {**members, MANIFEST: json.dumps(manifest).encode()}

    (imported,) = import_model(rewrite_zip(zip_path, tmp_path / "old.zip", drop_key), tmp_path / "clean")
    assert (imported / "fold_0" / "checkpoint_final.safetensors").is_file()


@pytest.mark.parametrize("edit, expected", [
    (lambda m: {**m, "ensembles": ["ensemble___unet__autosegPlans__3d_fullres___unet__autosegPlans__2d"]},
     "names ensemble .* which is no ensemble of its models"),
    (lambda m: {**m, "ensembles": ["unet__autosegPlans__3d_fullres"]}, "which is no ensemble of its models"),
])
def test_a_manifest_naming_an_ensemble_of_other_models_is_refused(exported, tmp_path, edit, expected) -> None:
    _, zip_path = exported

    def edit_manifest(members: dict) -> dict:
        return {**members, MANIFEST: json.dumps(edit(json.loads(members[MANIFEST]))).encode()}

    with pytest.raises(ModelFileError, match=expected):
        import_model(rewrite_zip(zip_path, tmp_path / "bad.zip", edit_manifest), tmp_path / "clean")
    assert not (tmp_path / "clean").exists()


@pytest.mark.parametrize("decision, expected", [
    ({"version": 1, "steps": [{"operation": "keep_largest"}], "file_ending": ".nii.gz"}, "step keep_largest has label_values None"),
    ({"steps": []}, "is not a postprocessing decision"),
])
def test_an_exported_decision_postprocess_apply_cannot_replay_is_refused_on_import(tmp_path, decision, expected) -> None:
    """Refused by export-model from the ensemble folder, and by import-model from a zip edited to hold it."""
    first, second = two_models(tmp_path / "results")
    decision_file = make_ensemble(tmp_path / "results", (first.name, second.name), decision)
    with pytest.raises(EvaluationError, match=rf"{re.escape(str(decision_file))}: {expected}"):
        export_model([first, second], tmp_path / "model.zip", folds=FOLDS)
    decision_file.write_text(json.dumps(ENSEMBLE_DECISION))
    zip_path = export_model([first, second], tmp_path / "model.zip", folds=FOLDS)
    member = f"ensembles/{decision_file.parent.name}/postprocessing.json"

    def edit_decision(members: dict) -> dict:
        members[member] = json.dumps(decision).encode()
        manifest = json.loads(members[MANIFEST])
        manifest["files"][member] = hashlib.sha256(members[member]).hexdigest()
        return {**members, MANIFEST: json.dumps(manifest).encode()}

    with pytest.raises(ModelFileError, match=rf"refusing to import: member '{member}': {expected}"):
        import_model(rewrite_zip(zip_path, tmp_path / "bad.zip", edit_decision), tmp_path / "clean")
    assert not (tmp_path / "clean" / DATASET / first.name).exists()


def test_a_full_disk_during_import_names_the_results_folder_and_leaves_nothing(
    exported: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fills the disk raises OSError without a file name; the message named no folder."""
    _, zip_path = exported
    real = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if "checkpoint" in self.name:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError) as info:
        import_model(zip_path, tmp_path / "clean")
    assert info.value.errno == 28 and str(info.value.filename).startswith(str(tmp_path / "clean" / DATASET))
    # Was: the results root and <Dataset>/ it had created stayed behind, empty; a folder it found is kept.
    assert not (tmp_path / "clean").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError):
        import_model(zip_path, tmp_path / "kept")
    assert list((tmp_path / "kept").iterdir()) == []


def test_export_accepts_a_model_of_its_dataset_renamed_after_planning(tmp_path: Path, capsys) -> None:
    """The plans name Dataset123_Old, the results folder Dataset123_Tiny (the dataset renamed, same id): the model was
    refused as another dataset's; it is exported and imported with a note, and another id is still refused."""
    folder = make_model_folder(tmp_path / "results")
    (folder / "plans.json").write_text(json.dumps({**PLANS, "dataset_name": "Dataset123_Old"}))
    zip_path = export_model(folder, tmp_path / "model.zip", folds=FOLDS)
    installed = import_model(zip_path, tmp_path / "clean")
    assert installed == [tmp_path / "clean" / DATASET / MODEL]
    assert capsys.readouterr().err.splitlines()[0] == (
        f"note: {MODEL}: planned as Dataset123_Old, exported and installed as {DATASET} (the same dataset id 123, "
        "renamed after planning)"
    )
    (folder / "plans.json").write_text(json.dumps({**PLANS, "dataset_name": "Dataset124_Tiny"}))
    with pytest.raises(ModelFileError, match="plans dataset Dataset124_Tiny, but the model folder lies in"):
        export_model(folder, tmp_path / "other.zip", folds=FOLDS)


def test_the_renamed_dataset_note_is_printed_only_by_export_and_import(tmp_path: Path, capsys) -> None:
    """Was: the note 'exported and installed as ...' was printed by every check of the zip, so predict -m model.zip
    and --pretrained-weights model.zip said it though nothing was exported or installed."""
    from autoseg.evaluation.model_files import validate_model_file

    folder = make_model_folder(tmp_path / "results")
    (folder / "plans.json").write_text(json.dumps({**PLANS, "dataset_name": "Dataset123_Old"}))
    note = (f"note: {MODEL}: planned as Dataset123_Old, exported and installed as {DATASET} (the same dataset id 123, "
            "renamed after planning)")
    zip_path = export_model(folder, tmp_path / "model.zip", folds=FOLDS)
    assert capsys.readouterr().err.splitlines() == [note]
    validate_model_file(zip_path, build_networks=False)
    with unpacked_model(zip_path, FOLDS):
        pass
    assert capsys.readouterr().err == ""
    import_model(zip_path, tmp_path / "clean")
    assert capsys.readouterr().err.splitlines() == [note]
