"""Memory model and timing, measured on tiny networks; the planner end to end on real data."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from autoseg.errors import PlanError
from autoseg.networks import Topology, create_network
from autoseg.planning import compute_budget
from autoseg.planning.compute_budget import measure_timing, training_gflop
from autoseg.utils import cpu_load
from autoseg.planning.memory import calibrate_memory, parameter_bytes, saved_activation_bytes
from autoseg.planning.planner import plan_dataset
from autoseg.planning.plans import load_plans
from autoseg.networks import get_network_spec

# The planner's timing probe and the threads it times with: alone (tests/parallel_runs.py).
pytestmark = pytest.mark.exclusive

DATA = "/work/shared/data/Dataset004_Hippocampus"


def test_saved_bytes_counts_each_storage_once_and_skips_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU())
    # conv saves its input (64 floats; the weight is a parameter), ReLU its output (2 x 64 floats)
    assert saved_activation_bytes(net, torch.zeros(1, 1, 4, 4, 4)) == 64 * 4 + 128 * 4
    inplace = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.ReLU(inplace=True), nn.ReLU(inplace=True))
    # both in-place ReLUs save the conv output's storage: counted once
    assert saved_activation_bytes(inplace, torch.zeros(1, 1, 4, 4, 4)) == 64 * 4 + 128 * 4


TINY = {
    "unet3d": ("unet", Topology(3, [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])),
    "resenc3d": ("resenc", Topology(3, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]])),
    "vnet3d": ("vnet", Topology(3, [16, 32], [[5, 5, 5]] * 2, [[1, 1, 1], [2, 2, 2]])),
    "unet2d": ("unet", Topology(2, [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]])),
}
SIZES = {3: ([12, 20, 28], [20, 12, 36]), 2: ([40, 24], [52, 100])}


@pytest.mark.parametrize("case", sorted(TINY))
def test_memory_prediction_within_10_percent_of_measurement(case, tmp_path):
    name, topology = TINY[case]
    model = calibrate_memory(name, topology, in_channels=2, n_classes=3, cache_dir=tmp_path)
    torch.manual_seed(0)
    net = create_network(name, topology, 2, 3).train()
    for patch in SIZES[topology.spatial_dims]:  # not the calibration sizes (2x, 3x total stride)
        batch = 2
        measured = saved_activation_bytes(net, torch.randn(batch, 2, *patch)) + 3 * parameter_bytes(net)
        assert model.predict(patch, batch) == pytest.approx(measured, rel=0.10)
    # cached: a second calibration reads the JSON file instead of measuring
    assert len(list(tmp_path.glob("memory_*.json"))) == 1
    assert calibrate_memory(name, topology, 2, 3, cache_dir=tmp_path) == model


def test_memory_model_batch_capacity():
    name, topology = TINY["unet3d"]
    model = calibrate_memory(name, topology, 1, 2)
    per_sample = model.activation_bytes([16, 16, 16])
    budget = model.static_bytes + 3.5 * per_sample
    assert model.max_batch([16, 16, 16], budget) == 3
    assert model.predict([16, 16, 16], 3) <= budget < model.predict([16, 16, 16], 4)


def test_training_gflop_counts_conv_layers_by_hand():
    topology = Topology(2, [2, 4], [[3, 3]] * 2, [[1, 1], [2, 2]])
    # MACs at 8x8, batch 1, 3 classes: encoder 1152 + 2304 (full res) + 1152 + 2304 (half res),
    # transposed conv 512, decoder 4608 + 2304, head 384 -> 14720; x2 FLOP/MAC, x3 fwd+bwd
    assert training_gflop("unet", topology, 1, 3, [8, 8], 1) == pytest.approx(14720 * 6 / 1e9)
    assert training_gflop("unet", topology, 1, 3, [16, 8], 2) == pytest.approx(4 * 14720 * 6 / 1e9)


class _HeadOnly(nn.Module):
    """A 1x1 conv head; subclasses put one operation of interest before it."""

    def __init__(self, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(in_channels, n_classes, 1)


class _GlobalAttention(_HeadOnly):
    """Self-attention over all pixels (one head, the channels as features), then the head."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = x.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1 head, L, C)
        attended = nn.functional.scaled_dot_product_attention(tokens, tokens, tokens)
        return [self.head(attended.squeeze(1).transpose(1, 2).reshape(x.shape))]


class _ReadsValues(_HeadOnly):
    """The head after reading a value: no meta kernel for ``.item()``."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.head(x * float(x.abs().max().item() >= 0))]


def _register_toy(monkeypatch, name: str, module: type[_HeadOnly]) -> None:
    from autoseg.networks import registry

    def build(topology, in_channels, n_classes, *, deep_supervision=True):
        return module(in_channels, n_classes)

    spec = registry.NetworkSpec(name, build, registry.TopologyConstraints(), "test", "test")
    monkeypatch.setitem(registry._REGISTRY, name, spec)


FLOP_TOPOLOGY = Topology(2, [2, 4], [[3, 3]] * 2, [[1, 1], [2, 2]])


def test_training_gflop_counts_attention_at_the_real_patch(monkeypatch):
    _register_toy(monkeypatch, "attention_probe", _GlobalAttention)
    # L tokens of 2 features: Q K^T and A V cost 2 x 2 L^2 FLOPs each, the 2->3 head 2 x 6 L; x3 fwd+bwd.
    for patch, batch in (([8, 8], 1), ([16, 8], 2)):
        tokens = patch[0] * patch[1]
        expected = batch * (8 * tokens**2 + 12 * tokens) * 3 / 1e9
        assert training_gflop("attention_probe", FLOP_TOPOLOGY, 2, 3, patch, batch) == pytest.approx(expected)


def test_training_gflop_falls_back_to_a_scaled_cpu_probe_without_meta_kernels(monkeypatch):
    _register_toy(monkeypatch, "reads_values", _ReadsValues)
    # 2 x 6 FLOPs per pixel (2->3 1x1 conv), x3 fwd+bwd, 2 x 16 x 8 pixels.
    assert training_gflop("reads_values", FLOP_TOPOLOGY, 2, 3, [16, 8], 2) == pytest.approx(2 * 128 * 12 * 3 / 1e9)


def test_measured_timing_is_cached_and_predicts_more_for_more_work(tmp_path, monkeypatch):
    spec = get_network_spec("unet")
    timing = measure_timing("unet", spec.constraints, 2, 1, 2, width=4, device=torch.device("cpu"), cache_dir=tmp_path)
    assert timing.device.startswith("cpu") and timing.seconds_per_gflop > 0 and timing.seconds_intercept >= 0
    assert timing.predict(10.0) > timing.predict(1.0)

    def no_timing(*args, **kwargs):
        raise AssertionError("cached timing was measured again")

    monkeypatch.setattr(compute_budget, "_time_steps", no_timing)
    again = measure_timing("unet", spec.constraints, 2, 1, 2, width=4, device=torch.device("cpu"), cache_dir=tmp_path)
    assert again == timing


@pytest.mark.parametrize(
    ("dims", "mixed_precision", "step_layout"),
    [(3, "off", torch.channels_last_3d), (3, "bf16", torch.contiguous_format), (2, "off", torch.contiguous_format)],
)
def test_probe_times_training_in_the_layout_training_uses(dims, mixed_precision, step_layout, tmp_path, monkeypatch):
    """Training steps in the format ``channels_last: auto`` picks (channels-last only for 3D in float32
    on CPU), forward passes contiguous as prediction runs them; the layout is part of the cache key."""
    seen = {}

    def recorder(kind):
        def timed(network, inputs, device, mixed_precision):
            weight = next(w for w in network.parameters() if w.dim() == dims + 2)  # 2 input channels: layouts differ
            layouts = (torch.channels_last_3d if dims == 3 else torch.channels_last, torch.contiguous_format)
            seen[kind] = next(f for f in layouts if inputs.is_contiguous(memory_format=f) and weight.is_contiguous(memory_format=f))
            return compute_budget.StepTime(1.0, 1.0)
        return timed

    monkeypatch.setattr(compute_budget, "_time_steps", recorder("step"))
    monkeypatch.setattr(compute_budget, "_time_forward", recorder("forward"))
    spec = get_network_spec("unet")
    measure_timing("unet", spec.constraints, dims, 2, 2, width=4, device=torch.device("cpu"), cache_dir=tmp_path,
                   mixed_precision=mixed_precision)
    assert seen == {"step": step_layout, "forward": torch.contiguous_format}
    [cached] = [json.loads(f.read_text()) for f in tmp_path.glob("timing_*.json")]
    assert (cached["key"].get("layout") == "channels_last") == (step_layout is not torch.contiguous_format)


@pytest.fixture()
def hippocampus(tmp_path, monkeypatch):
    """Eight real Dataset004 cases in a raw root under tmp_path."""
    raw = tmp_path / "raw" / "Dataset004_Hippocampus"
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    cases = sorted(n for n in os.listdir(f"{DATA}/labelsTr") if n.endswith(".nii.gz"))[:8]
    for case in cases:
        stem = case[: -len(".nii.gz")]
        shutil.copy(f"{DATA}/labelsTr/{case}", raw / "labelsTr" / case)
        shutil.copy(f"{DATA}/imagesTr/{stem}_0000.nii.gz", raw / "imagesTr" / f"{stem}_0000.nii.gz")
    description = json.loads(open(f"{DATA}/dataset.json").read())
    description["numTraining"] = len(cases)
    (raw / "dataset.json").write_text(json.dumps(description))
    monkeypatch.setenv("AUTOSEG_RAW", str(tmp_path / "raw"))
    monkeypatch.setenv("AUTOSEG_PREPROCESSED", str(tmp_path / "preprocessed"))
    monkeypatch.setattr(cpu_load, "idle_cores", lambda: None)  # unknown load: torch's threads, as on a quiet machine
    return tmp_path / "preprocessed" / "Dataset004_Hippocampus"


def test_plan_dataset_on_real_hippocampus(hippocampus):
    plans, table = plan_dataset("Dataset004", device="cpu", num_workers=1)  # default CPU budget: 12 h
    assert (hippocampus / "fingerprint.json").is_file()
    assert load_plans(hippocampus / "autosegPlans.json") == json.loads(json.dumps(plans))
    full = plans["configurations"]["3d_fullres"]
    assert all(p >= m for p, m in zip(full["patch_size"], full["median_shape"]))
    assert full["batch_size"] >= 2
    assert full["normalization"][0]["scheme"] == "zscore"
    assert full["spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert full["predicted_total_seconds"] <= 12 * 3600
    assert plans["budget"]["device"] == "cpu" and plans["budget"]["seconds"] == 12 * 3600
    assert "3d_fullres" in table and "x".join(map(str, full["patch_size"])) in table
    # re-planning reads the cached calibrations and timings: the same plan, nothing rewritten
    again, _ = plan_dataset("Dataset004", device="cpu")
    assert again == plans
    with pytest.raises(PlanError, match="a different plan with this name exists"):
        plan_dataset("Dataset004", budget_seconds=600, device="cpu")
    other, _ = plan_dataset("Dataset004", budget_seconds=600, device="cpu", plans_name="quick")
    assert (hippocampus / "quick.json").is_file()
    assert other["configurations"]["3d_fullres"]["data_identifier"] == "quick_3d_fullres"
    assert np.prod(other["configurations"]["3d_fullres"]["patch_size"]) > 0


def test_plan_times_with_the_threads_training_will_start_with(hippocampus, monkeypatch):
    """One of two cores busy: the probe runs on one math thread (what `math_threads: auto` trains with),
    not two threads waiting for each other, which timed 2x slower per thread and flipped the demo's
    recipe; torch's count is given back afterwards."""
    from autoseg.planning import compute_budget as T

    seen = []

    def timing(*args, **kwargs):  # 0.03 s per GFLOP on one thread, half that on two
        seen.append(torch.get_num_threads())
        rate = 0.03 / torch.get_num_threads()
        return T.TimingModel("fake", 0.0, rate, rate, rate, rate)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(T, "measure_timing", timing)
        monkeypatch.setattr(cpu_load, "available_cores", lambda: 2)
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: 1.0)
        plans, table = plan_dataset("Dataset004", budget_seconds=600, device="cpu", num_workers=1)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
        assert plans["budget"]["device_name"] == "cpu x1 threads" and "cpu x1 threads" in table
        assert any("timed with 1 of 2 math threads (1.0 of 2 CPUs idle" in note for note in plans["notes"])
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: 2.0)
        seen.clear()
        quiet, _ = plan_dataset("Dataset004", budget_seconds=600, device="cpu", plans_name="quiet")
        assert set(seen) == {2} and not any("timed with" in note for note in quiet["notes"])
        # the same speed per thread: the same recipe, half the iterations on the one thread
        keys = ("spacing", "patch_size", "batch_size", "network", "width", "validation_tta")
        loaded, calm = plans["configurations"]["3d_fullres"], quiet["configurations"]["3d_fullres"]
        assert {k: loaded[k] for k in keys} == {k: calm[k] for k in keys}
        assert loaded["num_iterations"] < 0.75 * calm["num_iterations"]
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA to compare with max_memory_allocated")
def test_memory_prediction_against_cuda_allocator():
    name, topology = TINY["unet3d"]
    model = calibrate_memory(name, topology, 1, 3)
    device = torch.device("cuda")
    net = create_network(name, topology, 1, 3).to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    patch, batch = [24, 64, 64], 2
    x = torch.randn(batch, 1, *patch, device=device)
    for _ in range(2):  # the second step holds the momentum buffers
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats(device)
        outputs = net(x)
        sum(o.float().mean() for o in outputs).backward()
        optimizer.step()
    peak = torch.cuda.max_memory_allocated(device) - x.numel() * 4
    assert model.predict(patch, batch) == pytest.approx(peak, rel=0.35)


@pytest.mark.parametrize("unused_layer", [False, True])
def test_timing_probe_sgd_step_matches_torch_optim_sgd(unused_layer):
    """The probe's hand-written update (which avoids torch.optim's TorchDynamo import) is training's SGD;
    parameters without a gradient (ConResNet's residual heads in the probe crashed planning) are skipped."""
    torch.manual_seed(0)
    by_hand, reference = (nn.ModuleList([nn.Linear(4, 3), nn.Linear(4, 2)]) for _ in range(2))
    reference.load_state_dict(by_hand.state_dict())
    before = [p.detach().clone() for p in by_hand[1].parameters()]
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.99, nesterov=True)
    parameters = list(by_hand.parameters())
    buffers = [torch.zeros_like(p) for p in parameters]
    x = torch.randn(5, 4)
    for _ in range(3):
        for net in (by_hand, reference):
            net.zero_grad(set_to_none=True)
            loss = net[0](x).square().mean()
            if not unused_layer:
                loss = loss + net[1](x).square().mean()
            loss.backward()
        with torch.no_grad():
            compute_budget._sgd_step(parameters, buffers, lr=0.1, momentum=0.99)
        optimizer.step()
    for mine, theirs in zip(by_hand.parameters(), reference.parameters()):
        torch.testing.assert_close(mine, theirs)
    if unused_layer:
        for mine, unchanged in zip(by_hand[1].parameters(), before):
            torch.testing.assert_close(mine, unchanged)
