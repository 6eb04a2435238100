"""Hostile model files: symlinks, zip bombs, truncated zips and description files of the wrong types are
refused by ``import-model`` (and ``predict -m model.zip``) before anything is written."""

from __future__ import annotations

import codecs
import dataclasses
import functools
import hashlib
import json
import shutil
import stat
import struct
import zipfile
from pathlib import Path

import pytest

import autoseg.networks.registry as registry
import autoseg.utils.checksummed_zip as checksummed_zip
from autoseg.cli import app
from autoseg.errors import ModelFileError
from autoseg.evaluation.model_files import MANIFEST, export_model, import_model
from autoseg.utils.weights_file import weights_from_bytes, weights_to_bytes

from cli_helpers import runner
from conftest import HIPPOCAMPUS
from test_model_files import MODEL, PLANS, TOPOLOGY, files_under, make_model_folder, rewrite_zip


@pytest.fixture(scope="module")
def model_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    return export_model(make_model_folder(base / "results"), base / "model.zip", folds=(0, 1))


def _members(zip_path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(zip_path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _refused(bad: Path, tmp_path: Path) -> str:
    clean = tmp_path / "clean"
    with pytest.raises(ModelFileError) as info:
        import_model(bad, clean)
    assert files_under(clean) == []
    message = str(info.value)
    assert message.startswith(f"{bad}: refusing to import: "), message
    return message.removeprefix(f"{bad}: refusing to import: ")


def test_a_symlink_member_is_refused_even_with_the_right_checksum(model_zip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in _members(model_zip).items():
            info = zipfile.ZipInfo(name)
            if name == f"{MODEL}/plans.json":  # same bytes (checksum matches), stored as a symbolic link
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    assert _refused(bad, tmp_path) == f"member '{MODEL}/plans.json' is a symbolic link; model files hold plain files only"


def _patch_central_directory(raw: bytearray, name: str, field_offset: int, value: int) -> None:
    """Set a 4-byte field of ``name``'s central directory entry (20: compressed, 24: uncompressed size)."""
    position = raw.find(b"PK\x01\x02")
    while position >= 0:
        length = struct.unpack_from("<H", raw, position + 28)[0]
        if raw[position + 46: position + 46 + length].decode() == name:
            struct.pack_into("<I", raw, position + field_offset, value)
        position = raw.find(b"PK\x01\x02", position + 4)


def _lie_about_size(zip_path: Path, name: str, declared: int) -> None:
    """Patch the uncompressed size of ``name`` in its local header and the central directory."""
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(name)
    raw = bytearray(zip_path.read_bytes())
    struct.pack_into("<I", raw, info.header_offset + 22, declared)
    _patch_central_directory(raw, name, 24, declared)
    zip_path.write_bytes(bytes(raw))


def test_a_member_inflating_beyond_its_declared_size_is_refused(model_zip: Path, tmp_path: Path) -> None:
    bomb = b"\0" * (20 * 1024**2)  # 20 MiB of zeros deflate to about 20 KiB
    name = f"{MODEL}/training_config.yaml"

    def add_bomb(members: dict) -> dict:
        manifest = json.loads(members[MANIFEST])
        manifest["files"][name] = hashlib.sha256(bomb).hexdigest()
        return {**members, name: bomb, MANIFEST: json.dumps(manifest).encode()}

    bad = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bad, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in add_bomb(_members(model_zip)).items():
            archive.writestr(member, data)
    assert bad.stat().st_size < 1024**2
    _lie_about_size(bad, name, 1000)
    assert _refused(bad, tmp_path) == f"member '{name}' inflates beyond its declared size of 1000 bytes (a zip bomb?)"


def test_declared_sizes_beyond_any_model_are_refused_before_inflating(model_zip: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checksummed_zip, "MAX_UNCOMPRESSED_BYTES", 1024)
    message = _refused(model_zip, tmp_path)
    assert message.startswith("its members declare ") and "a zip bomb or not a model file" in message


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.97])
def test_a_truncated_zip_is_refused(fraction: float, model_zip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.zip"
    data = model_zip.read_bytes()
    bad.write_bytes(data[: int(len(data) * fraction)])
    assert _refused(bad, tmp_path).startswith("not a zip file, or a truncated one (")


def test_member_data_cut_short_is_refused(model_zip: Path, tmp_path: Path) -> None:
    """A central directory that promises more compressed bytes than the file holds."""
    bad = tmp_path / "short.zip"
    bad.write_bytes(model_zip.read_bytes())
    name = f"{MODEL}/fold_1/checkpoint_final.safetensors"
    with zipfile.ZipFile(bad) as archive:
        info = archive.getinfo(name)
    raw = bytearray(bad.read_bytes())
    _patch_central_directory(raw, name, 20, info.compress_size + 10**6)
    bad.write_bytes(bytes(raw))
    assert _refused(bad, tmp_path) == f"member '{name}' cannot be read (the zip is truncated: its data ends early)"


def _configuration(**changes: object) -> dict:
    plans = json.loads(json.dumps(PLANS))
    plans["configurations"]["3d_fullres"].update(changes)
    return plans


ACCENTED_DATASET = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
                    "file_ending": ".nii.gz", "description": "hippocampe, tête"}
WRONG_TYPES = {
    "plans not JSON": ("plans.json", b"{'version': 1", "member '{model}/plans.json': is not valid JSON ("),
    # a hostile member beyond Python's JSON reader: an internal RecursionError, and a ValueError called "a field of the
    # wrong type" with the advice to call sys.set_int_max_str_digits()
    "plans nested too deep": ("plans.json", b"[" * 100_000 + b"]" * 100_000,
                              "member '{model}/plans.json': nests arrays or objects deeper than a JSON reader follows"),
    "plans with a 5000-digit number": ("plans.json", b'{"version": ' + b"1" * 5000 + b"}",
                                       "member '{model}/plans.json': holds an integer of more than 4300 digits"),
    # an editor's re-save: the JSON is right, its encoding is not (was "is not valid JSON", the file reader names it)
    "dataset with a BOM": ("dataset.json", codecs.BOM_UTF8 + json.dumps(ACCENTED_DATASET).encode(),
                           "member '{model}/dataset.json': saved as UTF-8 with a byte-order mark (BOM)"),
    "dataset in Latin-1": ("dataset.json", json.dumps(ACCENTED_DATASET, ensure_ascii=False).encode("latin-1"),
                           "member '{model}/dataset.json': is not UTF-8 text (byte 0xea at offset"),
    "plans a list": ("plans.json", [1, 2], "{model}/plans.json: a plans file must hold a JSON object"),
    "plans version a string": ("plans.json", {**PLANS, "version": "1"}, "{model}/plans.json: plans version '1' but this autoseg reads"),
    "configurations a list": ("plans.json", {**PLANS, "configurations": ["3d_fullres"]}, "{model}/plans.json: 'configurations' is empty"),
    "patch size a string": ("plans.json", _configuration(patch_size="888"),
                            "{model}/plans.json: configuration patch_size '888' is not a list of 3 positive numbers"),
    "spacing zero": ("plans.json", _configuration(spacing=[0, 1, 1]),
                     "{model}/plans.json: configuration spacing [0, 1, 1] is not a list of 3 positive numbers"),
    "network a string": ("plans.json", _configuration(network="unet"),
                         "{model}/plans.json: configuration network 'unet' lacks a network name"),
    "configuration not planned": ("plans.json", {**PLANS, "configurations": {"2d": PLANS["configurations"]["3d_fullres"]}},
                                  "configuration '3d_fullres' is not in plans"),
    "dataset a list": ("dataset.json", ["MRI"], "{model}/dataset.json: must hold a JSON object"),
    "labels a list": ("dataset.json", {"channel_names": {"0": "MRI"}, "labels": ["background"], "numTraining": 2,
                                       "file_ending": ".nii.gz"}, "{model}/dataset.json: labels must map \"background\" to 0"),
    "numTraining a string": ("dataset.json", {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1},
                                              "numTraining": "2", "file_ending": ".nii.gz"},
                             "{model}/dataset.json: numTraining must be a non-negative integer, got '2'"),
    # an ignore label the plans lack (same outputs): the plans' preprocessing sampled its voxels as foreground
    "ignore label not the plans'": ("dataset.json", {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "ignore": 2},
                                                     "numTraining": 2, "file_ending": ".nii.gz"},
                                    "{model}/dataset.json: ignore label is 2, but {model}/plans.json was planned with None; "
                                    "the model was trained on a dataset.json edited after planning"),
    # another model's dataset.json (a label more): every prediction would be named from the wrong labels
    "labels not the network's": ("dataset.json", {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
                                                  "numTraining": 2, "file_ending": ".nii.gz"},
                                 "member '{model}/fold_0/checkpoint_final.safetensors': the network predicts 2 channel(s) but "
                                 "{model}/dataset.json gives 3 (its labels, background included, or its regions); that "
                                 "dataset.json is not the one the model was trained with: restore it"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_description_files_of_the_wrong_types_are_refused(case: str, model_zip: Path, tmp_path: Path) -> None:
    file, content, message = WRONG_TYPES[case]
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    name = f"{MODEL}/{file}"

    def replace(members: dict) -> dict:  # a tamperer who also fixes the checksum
        manifest = json.loads(members[MANIFEST])
        manifest["files"][name] = hashlib.sha256(data).hexdigest()
        return {**members, name: data, MANIFEST: json.dumps(manifest).encode()}

    bad = rewrite_zip(model_zip, tmp_path / "bad.zip", replace)
    assert message.format(model=MODEL) in _refused(bad, tmp_path)


WEIGHTS_MEMBER = f"{MODEL}/fold_0/checkpoint_final.safetensors"
NOT_FITTING = "weights do not fit the network its metadata describes (size mismatch for encoder.stages.0.0.0.weight: " \
              "copying a param with shape torch.Size([2, 1, 3, 3, 3]) from checkpoint, the shape in current model is "
WIDER_TOPOLOGY = {"topology": {**TOPOLOGY.__dict__, "features_per_stage": [4, 8]}}  # the tensors hold 2, 4


def _with_metadata(model_zip: Path, target: Path, change: dict) -> Path:
    """``model_zip`` with fold 0's checkpoint metadata updated by ``change`` (checksum fixed)."""
    def edit_metadata(members: dict) -> dict:
        checkpoint = weights_from_bytes(members[WEIGHTS_MEMBER], "test", ModelFileError)
        checkpoint["metadata"].update(change)
        members[WEIGHTS_MEMBER] = weights_to_bytes(checkpoint)
        manifest = json.loads(members[MANIFEST])
        manifest["files"][WEIGHTS_MEMBER] = hashlib.sha256(members[WEIGHTS_MEMBER]).hexdigest()
        return {**members, MANIFEST: json.dumps(manifest).encode()}

    return rewrite_zip(model_zip, target, edit_metadata)


@pytest.mark.parametrize("change, problem", [
    ({"in_channels": 4}, NOT_FITTING + "torch.Size([2, 4, 3, 3, 3]))"),
    (WIDER_TOPOLOGY, NOT_FITTING + "torch.Size([4, 1, 3, 3, 3]))"),
    ({"network": "nosuchnet"}, "unknown network 'nosuchnet'"),
])
def test_weights_that_do_not_load_into_their_network_are_refused(change: dict, problem: str, model_zip: Path,
                                                                 tmp_path: Path) -> None:
    """Metadata naming another network, topology or input channels than the weights was imported, and such a
    model failed only at predict; import now loads each fold's weights into its network, as predict does, and
    names the first tensor that does not fit (it said only torch's header line)."""
    message = _refused(_with_metadata(model_zip, tmp_path / "bad.zip", change), tmp_path)
    assert message.startswith(f"member '{WEIGHTS_MEMBER}': {problem}"), message


def test_predict_names_the_member_and_tensor_of_weights_that_do_not_fit(model_zip: Path, tmp_path: Path,
                                                                         roots: dict[str, Path]) -> None:
    """Loaded by predict (not by a second build in import-model's check), a fold that does not fit its metadata
    is named as the zip's member, never as the temporary folder the zip was unpacked into."""
    bad = _with_metadata(model_zip, tmp_path / "bad.zip", WIDER_TOPOLOGY)
    code, text, output = _predict_with(bad, tmp_path)
    assert code == 2 and f"{bad}: member '{WEIGHTS_MEMBER}': {NOT_FITTING}torch.Size([4, 1, 3, 3, 3]))" in text, text
    assert "autoseg-model-" not in text and not output.exists() and files_under(roots["results"]) == []


def test_predict_builds_each_folds_network_once(model_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                roots: dict[str, Path]) -> None:
    """``predict -m model.zip`` built every fold's network twice: in import-model's weight check, then to predict."""
    spec = registry.get_network_spec("unet")
    built = []

    @functools.wraps(spec.builder)  # the registry reads the builder's options from its signature
    def counting_builder(*args, **kwargs):
        built.append(args)
        return spec.builder(*args, **kwargs)

    monkeypatch.setitem(registry._REGISTRY, "unet", dataclasses.replace(spec, builder=counting_builder))
    code, text, output = _predict_with(model_zip, tmp_path)
    assert code == 0 and (output / "case.nii.gz").is_file(), text
    assert len(built) == 2  # folds 0 and 1


def _predict_with(zip_path: Path, tmp_path: Path, *options: str) -> tuple[int, str, Path]:
    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir(exist_ok=True)
    shutil.copy(HIPPOCAMPUS / "imagesTr" / "hippocampus_001_0000.nii.gz", inputs / "case_0000.nii.gz")
    result = runner.invoke(app, ["predict", "-i", str(inputs), "-o", str(output), "-m", str(zip_path), "--no-tta", *options])
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split()), output


def test_predict_uses_a_model_zip_without_installing_it(model_zip: Path, tmp_path: Path, roots: dict[str, Path]) -> None:
    code, text, output = _predict_with(model_zip, tmp_path)
    assert code == 0, text
    assert (output / "case.nii.gz").is_file() and files_under(roots["results"]) == []


def test_predict_refuses_a_hostile_zip_before_writing(model_zip: Path, tmp_path: Path, roots: dict[str, Path]) -> None:
    bad = rewrite_zip(model_zip, tmp_path / "bad.zip", lambda m: {**m, "../evil.txt": b"x"})
    code, text, output = _predict_with(bad, tmp_path)
    # predict installs nothing: its refusal was worded for import-model ('refusing to import')
    assert code == 2 and f"{bad}: refusing to predict with it: member '../evil.txt' has an unsafe path" in text, text
    assert "import" not in text
    assert not output.exists() and not (tmp_path.parent / "evil.txt").exists() and files_under(roots["results"]) == []


@pytest.mark.parametrize("options, message", [
    (("--checkpoint", "best"), "holds the final checkpoint, not best; predict with --checkpoint final, or export the best checkpoint"),
    (("-f", "0", "-f", "3"), "holds fold(s) 0, 1, not 3; choose present folds with -f, or export those folds"),
])
def test_predict_names_the_zip_when_it_lacks_the_checkpoint_or_fold(options: tuple[str, ...], message: str,
                                                                    model_zip: Path, tmp_path: Path) -> None:
    """The refusal named the temporary folder the zip was unpacked into (gone by then) and said to finish training."""
    code, text, output = _predict_with(model_zip, tmp_path, *options)
    assert code == 2 and f"{model_zip}: {message}" in text, text
    assert "autoseg-model-" not in text and not output.exists()
