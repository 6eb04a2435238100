"""Every registered family x every dimensionality it supports, through every stage that builds it.

Parametrised from the registry: a new family gets all of it by registering. Each case plans a real
Hippocampus subset with the family (3D: ``3d_fullres``; 2D: the ``2d`` configuration of the same
cases), then, at tiny widths on the plan's stages, kernels and strides: forward and backward at 2x
and 3x the total stride, the planner's timing probe, one iteration of the real training step on a
real patch, export and import of the model file, and sliding-window prediction of a real case with
the imported model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.dataset.imageio import read_image
from autoseg.evaluation.model_files import export_model, import_model
from autoseg.inference.model import load_model
from autoseg.utils.checkpoint_format import CHECKPOINT_FORMAT_VERSION
from autoseg.inference.sliding_window import sliding_window_predict
from autoseg.networks import Topology, create_network, get_network_spec, list_networks
from autoseg.planning import compute_budget
from autoseg.planning import constants as C
from autoseg.planning.compute_budget import TimingModel, measure_timing
from autoseg.planning.planner import build_plans
from autoseg.training.config import resolve_config
from autoseg.training.steps import LabelSpec, WithAux, build_step
from autoseg.training.model_setup import build_optimizer

from conftest import HIPPOCAMPUS, make_hippocampus_subset, small_timing_probe

DATASET = "Dataset997_Matrix"
CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
CONFIGURATION = {2: "2d", 3: "3d_fullres"}
N_OUTPUTS = 3  # background, anterior, posterior
# Tiny widths on the plan's stages (multiples of 8 for the GroupNorm families).
TINY_FEATURES = (8, 16)
MATRIX = [(name, dims) for name in list_networks() for dims in get_network_spec(name).constraints.spatial_dims]


def _fake_timing(dims: int, width: int, mixed_precision: str = "auto") -> TimingModel:
    return TimingModel("fake", 0.01, 0.001)


@pytest.fixture(scope="module")
def hippocampus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Fingerprint of real cases, one z-scored real image (C, *spatial) and its labels, a results root."""
    from autoseg.fingerprint.extract import extract_fingerprint
    from autoseg.paths import resolve_dataset

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("matrix")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AUTOSEG_RAW", str(base / "raw"))
        env.setenv("AUTOSEG_PREPROCESSED", str(base / "preprocessed"))
        make_hippocampus_subset(base / "raw", CASES, DATASET)
        fingerprint = extract_fingerprint(resolve_dataset(DATASET), 1)
    image, _ = read_image(HIPPOCAMPUS / "imagesTr" / f"{CASES[0]}_0000.nii.gz")
    labels, _ = read_image(HIPPOCAMPUS / "labelsTr" / f"{CASES[0]}.nii.gz")
    image = (image - image.mean()) / image.std()
    return {
        "fingerprint": fingerprint, "base": base, "dataset_json": HIPPOCAMPUS / "dataset.json",
        "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
        "labels": torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))[None],
        "plans": {},
    }


def _plan(hippocampus: dict, name: str, dims: int) -> tuple[dict, Topology]:
    """The family's own plan of the real cases (memoised), and its topology at tiny widths."""
    key = (name, dims)
    if key not in hippocampus["plans"]:
        hippocampus["plans"][key] = build_plans(
            hippocampus["fingerprint"], network=name, memory_budget_bytes=2 * 2**30, device="cpu",
            configs=[CONFIGURATION[dims]], timing_factory=_fake_timing, plans_name="matrixPlans",
        )
    plans = hippocampus["plans"][key]
    configuration = plans["configurations"][CONFIGURATION[dims]]
    topology = dict(configuration["network"]["topology"])
    assert configuration["network"]["name"] == name and topology["spatial_dims"] == dims
    n = len(topology["strides"])
    topology["features_per_stage"] = [TINY_FEATURES[min(i, len(TINY_FEATURES) - 1)] for i in range(n)]
    topology["extra"] = {"patch_size": configuration["patch_size"]}
    return plans, Topology.from_dict(topology)


def _real_patch(hippocampus: dict, size: list[int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` copies of the real image and labels, zero-padded / cropped to ``size`` (2D: middle slice)."""
    image, labels = hippocampus["image"], hippocampus["labels"]
    if len(size) == 2:
        middle = image.shape[1] // 2
        image, labels = image[:, middle], labels[:, middle]
    out_image, out_labels = torch.zeros(1, *size), torch.zeros(1, *size, dtype=torch.long)
    region = tuple(slice(0, min(s, t)) for s, t in zip(image.shape[1:], size))
    out_image[(slice(None), *region)] = image[(slice(None), *region)]
    out_labels[(slice(None), *region)] = labels[(slice(None), *region)]
    return out_image[None].repeat(batch, *[1] * (len(size) + 1)), out_labels[None].repeat(batch, *[1] * (len(size) + 1))


@pytest.mark.parametrize(("name", "dims"), MATRIX)
def test_forward_and_backward_at_two_and_three_times_the_total_stride(hippocampus, name, dims):
    _, topology = _plan(hippocampus, name, dims)
    torch.manual_seed(0)
    network = create_network(name, topology, 1, N_OUTPUTS, deep_supervision=True)
    for multiple in (2, 3):
        size = [multiple * s for s in topology.size_multiple]
        x = torch.randn(2, 1, *size)
        outputs, aux = WithAux(network.train())(x)
        assert tuple(outputs[0].shape) == (2, N_OUTPUTS, *size)
        loss = sum(o.square().mean() for o in outputs) + sum(a.float().square().mean() for a in aux.values())
        network.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in network.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        with torch.no_grad():
            assert tuple(network.eval()(x).shape) == (2, N_OUTPUTS, *size)


@pytest.mark.parametrize(("name", "dims"), MATRIX)
def test_the_planned_network_builds_on_the_meta_device(hippocampus, name, dims):
    """``train`` refuses bad network options by building the shapes on the meta device before it writes
    anything (model_setup.check_network_builds); a builder that needed real values there would skip
    that check, so every family must build there, at its planned (full) widths."""
    plans, _ = _plan(hippocampus, name, dims)
    configuration = plans["configurations"][CONFIGURATION[dims]]
    topology = {**configuration["network"]["topology"], "extra": {"patch_size": configuration["patch_size"]}}
    with torch.device("meta"):
        options = {"deep_supervision": True, **configuration["network"].get("options", {})}
        network = create_network(name, topology, 1, N_OUTPUTS, **options)
    assert {p.device.type for p in network.parameters()} == {"meta"}


@pytest.mark.parametrize(("name", "dims"), MATRIX)
def test_planner_timing_probe(monkeypatch, name, dims):
    small_timing_probe(monkeypatch)  # every family plans at least two stages for it (FC-DenseNet ignores the width)
    monkeypatch.setattr(C, "TIMING_PROBE_WIDTH", 8)
    monkeypatch.setattr(C, "TIMING_WARMUP_STEPS", 0)
    monkeypatch.setattr(C, "TIMING_MEASURED_STEPS", 1)
    spec = get_network_spec(name)
    timing = measure_timing(name, spec.constraints, dims, 1, N_OUTPUTS, width=8, device=torch.device("cpu"))
    assert timing.seconds_per_gflop > 0 and timing.device == compute_budget.device_name(torch.device("cpu"))


@pytest.mark.parametrize(("name", "dims"), MATRIX)
def test_training_steps_then_model_file_round_trip_and_sliding_window(hippocampus, tmp_path, name, dims):
    plans, topology = _plan(hippocampus, name, dims)
    configuration_name = CONFIGURATION[dims]
    patch = list(plans["configurations"][configuration_name]["patch_size"])
    torch.manual_seed(0)
    options = {"deep_supervision": True}
    network = create_network(name, topology, 1, N_OUTPUTS, **options)
    config = resolve_config(name, ["mixed_precision=off"])
    labels = LabelSpec(N_OUTPUTS, None, None)
    step = build_step(
        WithAux(network), network, name, build_optimizer(network.parameters(), config["optimizer"]), labels, config,
        torch.device("cpu"), None, wrap=lambda module: module, in_channels=1,
    )
    data, target = _real_patch(hippocampus, patch, batch=2)
    before = [p.detach().clone() for p in network.parameters()]
    loss, logits = step.train(data, target)
    assert np.isfinite(loss) and tuple(logits.shape) == (2, N_OUTPUTS, *patch)
    assert any(not torch.equal(b, p) for b, p in zip(before, network.parameters()))

    # The model file: a trained folder exported to a zip and imported elsewhere rebuilds the same network.
    folder = tmp_path / "results" / DATASET / f"{name}__matrixPlans__{configuration_name}"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    shutil.copy(hippocampus["dataset_json"], folder / "dataset.json")
    metadata = {
        "format_version": CHECKPOINT_FORMAT_VERSION, "network": name, "network_options": options,
        "topology": topology.to_dict(), "in_channels": 1, "num_outputs": N_OUTPUTS, "patch_size": patch,
        "mirror_axes": [],
    }
    torch.save({"network_weights": network.state_dict(), "metadata": metadata}, folder / "fold_0" / "checkpoint_final.pt")
    zip_path = export_model(folder, tmp_path / "model.zip", folds=[0])
    [imported] = import_model(zip_path, tmp_path / "imported")
    model = load_model(imported, folds=[0], device="cpu")

    # Two tiles overlapping along the first axis: the blending of tiles at the plan's patch. (Tiling over
    # every axis is tested on its own; here each tile is a forward pass at the family's full design width.)
    image = _real_patch(hippocampus, [patch[0] + 5, *patch[1:]], batch=1)[0][0]
    network.eval()
    expected = sliding_window_predict(network, image, patch, batch_tiles=2)
    predicted = sliding_window_predict(model.networks, image, model.patch_size, batch_tiles=2)
    assert tuple(predicted.shape) == (N_OUTPUTS, *image.shape[1:])
    torch.testing.assert_close(predicted.sum(0), torch.ones(image.shape[1:]))
    torch.testing.assert_close(predicted, expected)
