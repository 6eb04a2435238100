"""Plan transfer and fine-tuning end to end from the CLI: a source model trained on Hippocampus cases
with two classes, a target of other cases with one merged class planned with the source's network and
patch, then trained from the source's weights (every tensor but the output heads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from autoseg.cli import app
from autoseg.dataset.imageio import read_image, write_image
from autoseg.errors import ModelFileError, TrainingError
from autoseg.evaluation.model_files import export_model
from autoseg.networks import create_network
from autoseg.training.pretrained import load_pretrained, read_pretrained
from autoseg.utils.weights_file import load_weights
from cli_helpers import TRAIN_SETTINGS, autoseg, autoseg_fails, set_options
from conftest import make_hippocampus_subset
from preprocessing_helpers import make_configuration, make_plans
from training_helpers import TINY_TOPOLOGY

SOURCE, TARGET = "Dataset993_Source", "Dataset994_Target"
SOURCE_SPACING = [1.5, 1.5, 1.5]  # the target's own spacing is Hippocampus' 1 mm
PATCH = [16, 16, 16]
CHECKPOINT = "checkpoint_final.safetensors"


def source_model(roots: dict[str, Path]) -> Path:
    """A tiny 2-class U-Net trained 2 iterations on 5 cases at 1.5 mm (hand-written plan)."""
    make_hippocampus_subset(roots["raw"], [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6, 8)], SOURCE)
    configuration = make_configuration(SOURCE_SPACING, patch_size=PATCH)
    configuration.update(network={"name": "unet", "topology": TINY_TOPOLOGY, "options": {}}, predicted_seconds_per_iteration=0.05)
    plans = {**make_plans({"3d_fullres": configuration}), "dataset_name": SOURCE}
    (roots["preprocessed"] / SOURCE).mkdir(parents=True)
    (roots["preprocessed"] / SOURCE / "autosegPlans.json").write_text(json.dumps(plans))
    autoseg("preprocess", SOURCE)
    autoseg("train", SOURCE, "3d_fullres", 0, "--epochs", 1, *set_options(TRAIN_SETTINGS), "--workers", 0)
    return roots["results"] / SOURCE / "unet__autosegPlans__3d_fullres"


def one_class_target(roots: dict[str, Path]) -> Path:
    """Other cases, Anterior and Posterior merged into one class (so the output heads differ)."""
    raw = make_hippocampus_subset(roots["raw"], [f"hippocampus_{i:03d}" for i in (11, 14, 15, 17, 19)], TARGET)
    description = json.loads((raw / "dataset.json").read_text())
    description["labels"] = {"background": 0, "hippocampus": 1}
    (raw / "dataset.json").write_text(json.dumps(description))
    for path in (raw / "labelsTr").glob("*.nii.gz"):
        labels, geometry = read_image(path)
        write_image((labels > 0).astype(np.uint8), geometry, path)
    return raw


def test_transferred_plan_and_pretrained_fine_tuning_from_the_cli(roots: dict[str, Path]) -> None:
    source = source_model(roots)
    one_class_target(roots)
    # a budget at which the target keeps its own 1 mm spacing (a 1-minute budget may choose a coarser one)
    autoseg("plan", TARGET, "-c", "3d_fullres", "--budget", "1h", "--device", "cpu", "--transfer-plans-from", source)
    plans = json.loads((roots["preprocessed"] / TARGET / "autosegPlans.json").read_text())
    config, donor = plans["configurations"]["3d_fullres"], json.loads((source / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert config["network"] == donor["network"] and config["patch_size"] == PATCH and config["batch_size"] == donor["batch_size"]
    assert config["spacing"] == [1.0, 1.0, 1.0] and config["spacing"] != donor["spacing"]  # the target's own
    assert plans["labels"] == {"background": 0, "hippocampus": 1} and plans["dataset_name"] == TARGET
    assert plans["transferred_from"]["plans"] == str(source / "plans.json") and plans["transferred_from"]["dataset_name"] == SOURCE
    assert plans["foreground_intensity_properties_per_channel"]["0"]["mean"] > 0  # from the target's fingerprint
    # Was: a model zip (which --pretrained-weights takes) was read as a broken JSON plans file ("re-run autoseg plan").
    zip_path = export_model(source, roots["raw"].parent / "source.zip", folds=[0])
    autoseg("plan", TARGET, "-c", "3d_fullres", "--gpu-memory", "8", "--plans-name", "fromzip", "--transfer-plans-from", zip_path)
    zipped = json.loads((roots["preprocessed"] / TARGET / "fromzip.json").read_text())
    assert zipped["configurations"]["3d_fullres"]["network"] == config["network"]
    assert zipped["transferred_from"]["plans"] == f"{zip_path}:{source.name}/plans.json"
    (roots["raw"].parent / "cut.zip").write_bytes(zip_path.read_bytes()[:200])
    result = CliRunner().invoke(app, ["plan", TARGET, "-c", "3d_fullres", "--gpu-memory", "8", "--plans-name", "cut",
                                      "--transfer-plans-from", str(roots["raw"].parent / "cut.zip")])
    assert result.exit_code == 2 and "cut.zip: refusing to import: not a zip file, or a truncated one" in result.output

    autoseg("preprocess", TARGET)
    output = autoseg("train", TARGET, "3d_fullres", 0, "--epochs", 1, *set_options(TRAIN_SETTINGS), "--workers", 0,
                     "--pretrained-weights", source)
    source_weights = load_weights(source / "fold_0" / CHECKPOINT, TrainingError)["network_weights"]
    heads = [k for k, v in source_weights.items() if v.ndim in (1, 5) and v.shape[0] == 3]  # 3 outputs: the heads
    assert heads and f"pretrained weights from {source / 'fold_0' / CHECKPOINT}: {len(source_weights) - len(heads)} tensors loaded" in output
    assert f"  not loaded (output heads, other number of classes): {', '.join(heads)}" in output
    assert "trained 2 iterations in 1 epochs" in output


def write_model_description(model: Path) -> None:
    """The plans.json and dataset.json a model folder of Dataset999_Test (one channel, three classes) holds."""
    plans = make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)})
    (model / "plans.json").write_text(json.dumps(plans))
    (model / "dataset.json").write_text(json.dumps({"channel_names": plans["channel_names"], "labels": plans["labels"],
                                                    "numTraining": 2, "file_ending": ".nii.gz"}))


def test_pretrained_loading_keeps_heads_fresh_and_refuses_other_topologies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_network("unet", TINY_TOPOLOGY, 1, 3)
    model = tmp_path / "Dataset999_Test" / "unet__autosegPlans__3d_fullres"  # as training names it: export-model takes no other
    path = model / "fold_0" / CHECKPOINT
    from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
    from autoseg.utils.weights_file import save_weights

    save_weights(path, {"network_weights": source.state_dict(), "metadata": {"network": "unet", "format_version": CHECKPOINT_FORMAT_VERSION}})
    target = create_network("unet", TINY_TOPOLOGY, 1, 2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_pretrained(target, model, "unet", log=lambda _: None)  # a model folder: its first fold
    assert report.heads and report.missing == [] and report.unused == []
    for name, tensor in target.state_dict().items():
        expected = fresh[name] if name in report.heads else source.state_dict()[name]
        assert torch.equal(tensor, expected), name
    write_model_description(model)
    zip_path = export_model(model, tmp_path / "model.zip", folds=[0])  # an export-model zip: its first fold
    again = create_network("unet", TINY_TOPOLOGY, 1, 2)
    assert load_pretrained(again, zip_path, "unet", log=lambda _: None).loaded == report.loaded
    renamed = zip_path.rename(tmp_path / "model.bin")  # was read as a safetensors file: 'not a readable safetensors file'
    assert load_pretrained(again, renamed, "unet", log=lambda _: None).loaded == report.loaded
    assert all(torch.equal(again.state_dict()[k], target.state_dict()[k]) for k in report.loaded)
    (tmp_path / "broken.zip").write_bytes(b"PK not a zip")
    with pytest.raises(TrainingError, match=r"broken.zip: not a readable zip \(.*\); give a zip written by `autoseg export-model`"):
        load_pretrained(again, tmp_path / "broken.zip", "unet")
    wider = create_network("unet", {**TINY_TOPOLOGY, "features_per_stage": [16, 32, 64]}, 1, 2)
    with pytest.raises(TrainingError, match=r"does not fit this network: \d+ tensor\(s\) have other shapes .*--transfer-plans-from SOURCE_PLANS"):
        load_pretrained(wider, path, "unet")
    with pytest.raises(TrainingError, match="was trained as network 'unet', this run trains 'resenc'; add --network unet"):
        load_pretrained(target, path, "resenc")


def test_pretrained_weights_of_another_channel_count_are_refused_as_such(tmp_path: Path) -> None:
    """Was: 'plan this dataset with --transfer-plans-from', which keeps the target's channels: no way out."""
    path = tmp_path / CHECKPOINT
    from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
    from autoseg.utils.weights_file import save_weights

    metadata = {"network": "unet", "format_version": CHECKPOINT_FORMAT_VERSION}
    save_weights(path, {"network_weights": create_network("unet", TINY_TOPOLOGY, 1, 3).state_dict(), "metadata": metadata})
    with pytest.raises(TrainingError, match=r"the pretrained model takes 1 input channel\(s\), this network 2 \(the dataset's "
                                            r"channel_names\); pretrained weights need the same input channels"):
        load_pretrained(create_network("unet", TINY_TOPOLOGY, 2, 3), path, "unet")


def test_a_model_zip_whose_weights_were_altered_after_export_is_refused(tmp_path: Path) -> None:
    """Only the zip's own CRCs were checked: weights changed after export (the manifest's sha256 no longer theirs, the
    zip rewritten) were fine-tuned from, where import-model and --transfer-plans-from refuse the zip."""
    import zipfile

    from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
    from autoseg.utils.weights_file import save_weights, weights_from_bytes, weights_to_bytes

    model = tmp_path / "Dataset999_Test" / "unet__autosegPlans__3d_fullres"
    metadata = {"network": "unet", "format_version": CHECKPOINT_FORMAT_VERSION}
    save_weights(model / "fold_0" / CHECKPOINT, {"network_weights": create_network("unet", TINY_TOPOLOGY, 1, 3).state_dict(),
                                                 "metadata": metadata})
    write_model_description(model)
    exported = export_model(model, tmp_path / "model.zip", folds=[0])
    member = f"{model.name}/fold_0/{CHECKPOINT}"
    with zipfile.ZipFile(exported) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    tree = weights_from_bytes(members[member], member, TrainingError)
    tree["network_weights"] = {name: torch.full_like(tensor, 7) for name, tensor in tree["network_weights"].items()}
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(altered, "w") as archive:
        for name, data in {**members, member: weights_to_bytes(tree)}.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError) as info:
        load_pretrained(create_network("unet", TINY_TOPOLOGY, 1, 3), altered, "unet")
    assert str(info.value) == (f"{altered}: refusing to import: member '{member}' does not match its sha256 in "
                               "manifest.json; the file was altered or damaged")
    assert load_pretrained(create_network("unet", TINY_TOPOLOGY, 1, 3), exported, "unet", log=lambda _: None).loaded


def test_a_zip_of_several_models_is_refused_naming_them(tmp_path: Path) -> None:
    """The weights of the model whose name sorts first were taken without a word (a cascade zip's 3d_cascade_fullres,
    then refused as of other input channels, though its 3d_lowres would have fitted)."""
    from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
    from autoseg.utils.weights_file import save_weights

    folders = [tmp_path / "Dataset001_X" / f"unet__autosegPlans__{c}" for c in ("3d_lowres", "3d_fullres")]
    for folder in folders:
        metadata = {"network": "unet", "format_version": CHECKPOINT_FORMAT_VERSION}
        save_weights(folder / "fold_0" / CHECKPOINT, {"network_weights": create_network("unet", TINY_TOPOLOGY, 1, 3).state_dict(),
                                                      "metadata": metadata})
        (folder / "plans.json").write_text("{}"), (folder / "dataset.json").write_text("{}")
    zip_path = export_model(folders, tmp_path / "model.zip", folds=[0])
    with pytest.raises(TrainingError) as info:
        load_pretrained(create_network("unet", TINY_TOPOLOGY, 1, 3), zip_path, "unet")
    assert str(info.value) == (
        f"{zip_path}: holds 2 models (unet__autosegPlans__3d_fullres, unet__autosegPlans__3d_lowres); give one: install "
        "the zip with autoseg import-model and give that model's folder, or export that model alone"
    )


@pytest.mark.parametrize("save, kind", [
    (torch.save, "a PyTorch pickle (torch.save's zip format, as nnU-Net's checkpoint_final.pth)"),
    (lambda tree, path: torch.save(tree, path, _use_new_zipfile_serialization=False),
     "a pickle (torch.save's legacy format, or pickle.dump)"),
])
def test_a_pickled_checkpoint_such_as_nnunets_is_named_as_a_pickle(save, kind: str, tmp_path: Path) -> None:
    """nnU-Net's checkpoint_final.pth was refused as 'not a readable safetensors file (... header too large)'."""
    path = tmp_path / "checkpoint_final.pth"
    save({"network_weights": create_network("unet", TINY_TOPOLOGY, 1, 3).state_dict(), "trainer_name": "nnUNetTrainer"}, path)
    folder = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"  # an nnU-Net model folder: was 'holds no fold_<k>/...'
    (folder / "fold_0").mkdir(parents=True)
    path = path.rename(folder / "fold_0" / path.name)
    with pytest.raises(TrainingError) as info:
        load_pretrained(create_network("unet", TINY_TOPOLOGY, 1, 3), folder, "unet")
    assert str(info.value).startswith(f"{path}: is {kind}, not an autoseg checkpoint;")
    with pytest.raises(TrainingError) as info:
        load_pretrained(create_network("unet", TINY_TOPOLOGY, 1, 3), path, "unet")
    assert str(info.value) == (
        f"{path}: is {kind}, not an autoseg checkpoint; --pretrained-weights reads no pickles (unpickling can run code) "
        "and nnU-Net's weights do not fit autoseg's networks (other tensor names): give an autoseg model folder, its "
        "fold_<k>/checkpoint_final.safetensors or an export-model zip, or train the source model with autoseg"
    )


def test_a_checkpoint_whose_header_length_starts_as_a_pickle_does_is_read(tmp_path: Path) -> None:
    """A safetensors header 640 bytes long starts the file with the bytes of pickle protocol 2 (0x80 0x02)."""
    from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
    from autoseg.utils.weights_file import save_weights

    path = tmp_path / CHECKPOINT
    for padding in range(640):
        metadata = {"network": "unet", "format_version": CHECKPOINT_FORMAT_VERSION, "note": "x" * padding}
        save_weights(path, {"network_weights": {"w": torch.ones(1)}, "metadata": metadata})
        if path.read_bytes()[:2] == b"\x80\x02":
            break
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert torch.equal(read_pretrained(path)[0]["w"], torch.ones(1))


@pytest.mark.parametrize("spoil, problem", [
    (lambda t: t.to(torch.int32), "holds torch.int32 values, the network torch.float32"),
    (lambda t: t.bool(), "holds torch.bool values, the network torch.float32"),
    (lambda t: t * float("nan"), "holds NaN or infinite values"),
])
def test_pretrained_weights_of_integer_or_non_finite_values_are_refused(spoil, problem: str, tmp_path: Path) -> None:
    """Integer or boolean weights were cast to 0/1 floats without a word, and NaN weights (a diverged source) were
    loaded, training then stopping as diverged with the advice to lower the learning rate."""
    from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
    from autoseg.utils.weights_file import save_weights

    weights = {k: spoil(v) if v.is_floating_point() else v for k, v in create_network("unet", TINY_TOPOLOGY, 1, 3).state_dict().items()}
    path = tmp_path / CHECKPOINT
    save_weights(path, {"network_weights": weights, "metadata": {"network": "unet", "format_version": CHECKPOINT_FORMAT_VERSION}})
    target = create_network("unet", TINY_TOPOLOGY, 1, 3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    first = next(k for k, v in weights.items() if v.dtype != torch.int64)
    with pytest.raises(TrainingError) as info:
        load_pretrained(target, path, "unet")
    message = str(info.value)
    assert message.startswith(f"{path}: ") and f"({first} {problem};" in message
    assert message.endswith("fine-tune from another checkpoint of it (its checkpoint_best, or an earlier run), or train "
                            "without --pretrained-weights")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing loaded


def test_a_source_plan_of_another_channel_count_is_refused_at_plan_time(tmp_path: Path) -> None:
    """Was: planned without a word; only train --pretrained-weights refused the weights, after preprocessing."""
    from autoseg.errors import PlanError
    from autoseg.planning.transfer import read_source_plans, transfer_plans

    source = {**make_plans({"3d_fullres": make_configuration(SOURCE_SPACING, patch_size=PATCH)}), "dataset_name": "Dataset905_BraTS",
              "channel_names": {"0": "FLAIR", "1": "T1w", "2": "T1gd", "3": "T2w"}}
    source["configurations"]["3d_fullres"]["normalization"] *= 4
    (tmp_path / "plans.json").write_text(json.dumps(source))
    target = {**make_plans({"3d_fullres": make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)}), "dataset_name": TARGET}
    with pytest.raises(PlanError, match=rf"plans.json: its dataset Dataset905_BraTS has 4 input channel\(s\) \(0: FLAIR, 1: T1w, "
                                        rf"2: T1gd, 3: T2w\), {TARGET} has 1 \(0: MRI\); pretrained weights need the same input channels"):
        transfer_plans(target, *read_source_plans(tmp_path))
    source["channel_names"] = {"0": "T2"}  # the same count under another name transfers (the user's call)
    source["configurations"]["3d_fullres"]["normalization"] = source["configurations"]["3d_fullres"]["normalization"][:1]
    (tmp_path / "plans.json").write_text(json.dumps(source))
    assert transfer_plans(target, *read_source_plans(tmp_path))["transferred_from"]["dataset_name"] == "Dataset905_BraTS"


def test_plan_refuses_a_source_of_another_channel_count_before_fingerprinting_or_timing(
        roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: refused only after fingerprinting and the ~20 s timing probe."""
    import autoseg.fingerprint.extract as extract
    import autoseg.planning.compute_budget as compute_budget

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("fingerprinting or the timing probe ran before the channel check")

    monkeypatch.setattr(extract, "extract_fingerprint", reached)
    monkeypatch.setattr(compute_budget, "measure_timing", reached)
    one_class_target(roots)
    source = {**make_plans({"3d_fullres": make_configuration(SOURCE_SPACING, patch_size=PATCH)}), "dataset_name": "Dataset905_BraTS",
              "channel_names": {"0": "FLAIR", "1": "T1w"}}
    source["configurations"]["3d_fullres"]["normalization"] *= 2
    (tmp_path / "plans.json").write_text(json.dumps(source))
    output = autoseg_fails("plan", TARGET, "--device", "cpu", "--transfer-plans-from", tmp_path)
    assert f"its dataset Dataset905_BraTS has 2 input channel(s) (0: FLAIR, 1: T1w), {TARGET} has 1 (0: MRI)" in " ".join(output.split())


def test_a_cascade_stage_fed_other_labels_is_not_transferred(tmp_path: Path) -> None:
    """Was: transferred, and train --pretrained-weights refused its stem as "another number of input channels
    (the dataset's channel_names)": the stage's input holds the previous stage's one-hot labels."""
    from autoseg.errors import PlanError
    from autoseg.planning.transfer import read_source_plans, transfer_plans

    def cascade_plans(labels: dict) -> dict:
        fullres = make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)
        lowres = {**make_configuration([2.0, 2.0, 2.0], patch_size=PATCH, data_identifier="autosegPlans_3d_lowres"),
                  "next_stage": "3d_cascade_fullres"}
        return make_plans({"3d_fullres": fullres, "3d_lowres": lowres, "3d_cascade_fullres": {**fullres, "previous_stage": "3d_lowres"}},
                          labels=labels)

    (tmp_path / "plans.json").write_text(json.dumps(cascade_plans({"background": 0, "Anterior": 1, "Posterior": 2})))
    target = cascade_plans({"background": 0, "hippocampus": 1})
    plans = transfer_plans(target, *read_source_plans(tmp_path))
    assert sorted(plans["configurations"]) == ["3d_fullres", "3d_lowres"] and plans["configurations"]["3d_lowres"]["next_stage"] is None
    assert any(note.startswith("3d_cascade_fullres: not transferred from ") and "previous stage's 2 foreground label(s) there, 1 here"
               in note for note in plans["notes"])
    same = transfer_plans(cascade_plans({"background": 0, "a": 1, "b": 2}), *read_source_plans(tmp_path))
    assert "3d_cascade_fullres" in same["configurations"]


def test_a_configuration_the_source_lacks_is_noted_as_not_transferred(tmp_path: Path) -> None:
    """A 3D target transferred from a 2D-only source lost 3d_fullres without a word and kept the target's
    notes on its recipe ('3d_fullres: ... patch [12, 16, 12]: 1025 iterations') for a configuration it no
    longer held."""
    from autoseg.planning.transfer import read_source_plans, transfer_plans

    source = make_plans({"2d": make_configuration([1.0, 1.0, 1.0], patch_size=[16, 16], spatial_dims=2)})
    (tmp_path / "plans.json").write_text(json.dumps(source))
    target = make_plans({"2d": make_configuration([1.0, 1.0, 1.0], patch_size=[24, 24], spatial_dims=2),
                         "3d_fullres": make_configuration([1.0, 1.0, 1.0], patch_size=PATCH)})
    target["notes"] = ["3d_fullres: planned at 2x2x2 mm instead of 1x1x1 mm", "2d: planned at 1.41x1.41 mm instead of 1x1 mm"]
    plans = transfer_plans(target, *read_source_plans(tmp_path))
    assert sorted(plans["configurations"]) == ["2d"]
    assert plans["notes"] == [f"2d: transferred from {tmp_path / 'plans.json'}: its network 'unet', patch [16, 16] and "
                              "batch 2, at this dataset's spacing 1x1 mm",
                              f"3d_fullres: not transferred: {tmp_path / 'plans.json'} has no 3d_fullres to start it from; "
                              "plan it without --transfer-plans-from"]


def test_notes_on_a_transferred_configuration_describe_what_was_written(tmp_path: Path) -> None:
    """The target's own notes on a transferred configuration stayed: the plan held the source's patch [16, 16]
    and a note still said '2d: ... (patch [24, 24]: 1458 iterations)'; notes on no configuration stay."""
    from autoseg.planning.transfer import read_source_plans, transfer_plans

    (tmp_path / "plans.json").write_text(json.dumps(make_plans({"2d": make_configuration([1.0, 1.0, 1.0], patch_size=[16, 16], spatial_dims=2)})))
    target = make_plans({"2d": {**make_configuration([1.0, 0.5, 0.5], patch_size=[24, 24], spatial_dims=2), "num_iterations": 1458}})
    target["notes"] = ["2d: not coarser than 0.5x0.5 mm ... (patch [24, 24]: 1458 iterations at the reference speed)",
                       "mirroring: every axis"]
    plans = transfer_plans(target, *read_source_plans(tmp_path))
    assert plans["notes"] == ["mirroring: every axis",
                              f"2d: transferred from {tmp_path / 'plans.json'}: its network 'unet', patch [16, 16] and "
                              "batch 2, at this dataset's spacing 0.5x0.5 mm; 1458 iterations"]


def test_cli_refuses_pretrained_weights_with_continue(roots: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "4", "3d_fullres", "0", "--continue", "--pretrained-weights", str(tmp_path)])
    assert result.exit_code == 2
    assert "--pretrained-weights starts a fold, --continue resumes one from its own checkpoint; drop one of them" in result.output


@pytest.mark.parametrize(("asked", "plannable"), [(["-c", "3d_fullres"], "3d_fullres"), ([], "2d")])
def test_plan_refuses_a_source_with_no_shared_configuration_before_timing(
        roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: list[str], plannable: str) -> None:
    """Was: refused only after the timing probe (and fingerprinting, where -c already told) planned the target.
    A source of 2d alone meets -c 3d_fullres before fingerprinting; a 3D source meets a 2D dataset (a single
    slice per case) once its fingerprint is read, before timing."""
    import autoseg.fingerprint.extract as extract
    import autoseg.planning.compute_budget as compute_budget

    def reached(*args: object, **kwargs: object) -> None:
        raise AssertionError("the timing probe ran before the configuration check")

    monkeypatch.setattr(compute_budget, "measure_timing", reached)
    if asked:
        monkeypatch.setattr(extract, "extract_fingerprint", reached)
    one_class_target(roots)
    fingerprint = roots["preprocessed"] / TARGET / "fingerprint.json"
    if not asked:  # the target's cases as single slices: a 2D dataset, told by its fingerprint
        autoseg("fingerprint", TARGET)
        written = json.loads(fingerprint.read_text())
        written["shapes_after_crop"] = [[1, *shape[1:]] for shape in written["shapes_after_crop"]]
        fingerprint.write_text(json.dumps(written))
    theirs = "2d" if asked else "3d_fullres"
    dims = 2 if asked else 3
    source = {**make_plans({theirs: make_configuration(SOURCE_SPACING, patch_size=PATCH[:dims], spatial_dims=dims)}),
              "dataset_name": SOURCE}
    (tmp_path / "plans.json").write_text(json.dumps(source))
    output = " ".join(autoseg_fails("plan", TARGET, "--device", "cpu", *asked, "--transfer-plans-from", tmp_path).split())
    assert f"plans.json: has configurations {theirs}, the target can plan only {plannable}; none in common to transfer" in output
    assert not (roots["preprocessed"] / TARGET / "autosegPlans.json").exists()
