"""Every family planned on real fingerprints (Hippocampus in 3D, EM membranes in 2D): the planned patch is a
multiple of what the network can take, and the network builds and runs at exactly that shape."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from autoseg.fingerprint.extract import extract_fingerprint
from autoseg.networks import Topology, create_network, get_network_spec, list_networks
from autoseg.paths import resolve_dataset
from autoseg.planning import constants as C
from autoseg.planning.planner import build_plans

from conftest import SHARED_DATA
from test_planning import fake_timing

torch.set_num_threads(1)
DATASETS = {3: ("Dataset004_Hippocampus", ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]),
            2: ("Dataset907_EMMembrane", ["em_00", "em_01"])}
CONFIG = {3: "3d_fullres", 2: "2d"}


def _copy_subset(source: Path, target: Path, cases: list[str]) -> None:
    for folder in ("imagesTr", "labelsTr"):
        (target / folder).mkdir(parents=True)
        for path in (source / folder).iterdir():
            if any(path.name.startswith(f"{case}.") or path.name.startswith(f"{case}_0") for case in cases):
                shutil.copy(path, target / folder)
    description = json.loads((source / "dataset.json").read_text())
    description["numTraining"] = len(cases)
    (target / "dataset.json").write_text(json.dumps(description))


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """Real fingerprints of a few real cases of each dataset (extracted once per module)."""
    base = tmp_path_factory.mktemp("families")
    saved = {var: os.environ.get(var) for var in ("AUTOSEG_RAW", "AUTOSEG_PREPROCESSED", "AUTOSEG_RESULTS")}
    for var, sub in zip(saved, ("raw", "preprocessed", "results")):
        (base / sub).mkdir()
        os.environ[var] = str(base / sub)
    result = {}
    for dims, (name, cases) in DATASETS.items():
        target = base / "raw" / name.replace(name.split("_")[0], f"Dataset99{dims}")
        _copy_subset(SHARED_DATA / name, target, cases)
        result[dims] = extract_fingerprint(resolve_dataset(target.name.split("_")[0]), num_workers=1)
    yield result
    for var, value in saved.items():
        os.environ.pop(var) if value is None else os.environ.__setitem__(var, value)


# The families with patch-embedding, window or derived-width constraints (the convolutional six are
# planned in test_planning.py).
FAMILIES = ("fcn", "segnet", "fcdensenet", "swinunet", "nnformer")
FAMILY_DIMS = [(name, dims) for name in FAMILIES for dims in (2, 3) if dims in get_network_spec(name).constraints.spatial_dims]


@pytest.mark.parametrize(("network", "dims"), FAMILY_DIMS)
def test_plan_gives_a_shape_the_network_takes(fingerprints: dict[int, dict], network: str, dims: int) -> None:
    plans = build_plans(fingerprints[dims], network=network, memory_budget_bytes=8 * 2**30 * C.GPU_MEMORY_USABLE_FRACTION,
                        timing_factory=fake_timing, configs=[CONFIG[dims]])
    plan = plans["configurations"][CONFIG[dims]]
    topology = Topology.from_dict(plan["network"]["topology"])
    patch = plan["patch_size"]
    assert all(p % m == 0 for p, m in zip(patch, topology.size_multiple)), (patch, topology.size_multiple)
    constraints = get_network_spec(network).constraints
    if constraints.window_size is not None:
        assert topology.window_sizes is not None and all(max(w) <= constraints.window_size for w in topology.window_sizes)
    n_classes = 3 if dims == 3 else 2
    with torch.device("meta"):
        model = create_network(network, topology, len(fingerprints[dims]["channel_names"]), n_classes).train()
        outputs = model(torch.zeros(plan["batch_size"], len(fingerprints[dims]["channel_names"]), *patch))
    assert tuple(outputs[0].shape) == (plan["batch_size"], n_classes, *patch)
    model.eval()
    with torch.device("meta"), torch.no_grad():
        assert tuple(model(torch.zeros(1, len(fingerprints[dims]["channel_names"]), *patch)).shape) == (1, n_classes, *patch)


@pytest.mark.parametrize("network", ["unet", "resenc", "segresnet", "vnet", "conresnet", "vox2vox", *FAMILIES])
def test_a_short_budget_on_small_images_plans_every_family(network: str) -> None:
    """The budget search shrinks patches down to ones that no longer pool; a family with prescribed
    stage widths (FC-DenseNet) once failed there ("the topology has 1 stages") instead of skipping them."""
    from test_planning import fingerprint

    small = fingerprint([[1.0, 1.0, 1.0]] * 10, [[24, 32, 32]] * 10)
    dims = get_network_spec(network).constraints.spatial_dims
    configs = [c for c, d in (("2d", 2), ("3d_fullres", 3)) if d in dims]
    plans = build_plans(small, network=network, memory_budget_bytes=8 * 2**30 * C.GPU_MEMORY_USABLE_FRACTION,
                        budget_seconds=30.0, timing_factory=fake_timing, configs=configs)
    for name in configs:
        assert Topology.from_dict(plans["configurations"][name]["network"]["topology"]).n_stages >= 2


@pytest.mark.parametrize("network", [name for name in list_networks() if get_network_spec(name).constraints.window_size is not None])
def test_attention_windows_keep_the_patch_near_small_images(network: str) -> None:
    """Was: Swin-UNet's windows of 7 tiled a 48x64 image with a 48x112 patch (75% padding along x), where every
    other family plans 48x64; a window that rounds the patch past WINDOW_ROUNDING_MAX_RATIO is now shrunk."""
    from test_planning import fingerprint

    spec = get_network_spec(network)
    dims = max(spec.constraints.spatial_dims)
    shape = [1, 48, 64] if dims == 2 else [24, 48, 64]
    small = fingerprint([[1.0, 1.0, 1.0]] * 6, [shape] * 6)
    plans = build_plans(small, network=network, memory_budget_bytes=8 * 2**30 * C.GPU_MEMORY_USABLE_FRACTION,
                        timing_factory=fake_timing, configs=[CONFIG[dims]])
    plan = plans["configurations"][CONFIG[dims]]
    topology = Topology.from_dict(plan["network"]["topology"])
    assert all(p % m == 0 for p, m in zip(plan["patch_size"], topology.size_multiple))
    assert all(p <= s * C.WINDOW_ROUNDING_MAX_RATIO for p, s in zip(plan["patch_size"], shape[3 - dims:])), plan["patch_size"]


def test_conresnet_plan_keeps_the_two_slices_its_builder_needs() -> None:
    """Was: ACDC-sized images at 0.25 GB planned conresnet a [1, 32, 24] patch, which train then refused in
    check_slices ('has 1 slice along slice_axis 0'); the planner keeps the registry's min_slices now."""
    from test_planning import fingerprint

    acdc = fingerprint([[10.0, 1.5625, 1.5625]] * 20, [[9, 256, 216]] * 20)
    plans = build_plans(acdc, network="conresnet", memory_budget_bytes=0.25 * 2**30 * C.GPU_MEMORY_USABLE_FRACTION,
                        timing_factory=fake_timing, configs=["3d_fullres"])
    plan = plans["configurations"]["3d_fullres"]
    assert plan["patch_size"] == [2, 32, 24]
    topology = Topology.from_dict({**plan["network"]["topology"], "extra": {"patch_size": plan["patch_size"]}})
    with torch.device("meta"):  # the build-time checks train runs (check_slices) pass
        create_network("conresnet", topology, 1, 4)
