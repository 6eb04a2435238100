"""What a hand-edited plan's topology asks of every family in the registry: block counts the family does not
read and a patch whose deepest stage is one voxel are refused with one message where the network is built;
block counts it reads change the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec, list_networks
from autoseg.networks.blocks import InstanceNorm
from autoseg.networks.registry import BLOCK_SETTINGS
from autoseg.planning.topology import plan_topology

from cli_helpers import autoseg_fails
from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

# A patch per dimensionality every family plans at least 3 stages for (the transformers' windows included).
PATCHES = {2: [64, 64], 3: [32, 32, 32]}
FAMILY_DIMS = [(name, dims) for name in list_networks() for dims in get_network_spec(name).constraints.spatial_dims]


def planned(name: str, dims: int) -> Topology:
    """The planner's topology of ``name`` at ``PATCHES[dims]`` (1 mm isotropic, the base width)."""
    return plan_topology(PATCHES[dims], [1.0] * dims, get_network_spec(name).constraints)


def n_parameters(name: str, topology: Topology, **changes: object) -> int:
    """Parameters of ``name`` built (shapes only, on the meta device) from ``topology`` with ``changes``."""
    edited = Topology.from_dict({**topology.to_dict(), **changes})
    with torch.device("meta"):
        return sum(p.numel() for p in create_network(name, edited, 1, 3).parameters())


@pytest.mark.parametrize("setting", BLOCK_SETTINGS)
@pytest.mark.parametrize(("name", "dims"), FAMILY_DIMS)
def test_a_block_count_changes_the_network_or_is_refused(name: str, dims: int, setting: str) -> None:
    """fcdensenet and vox2vox built the same network whatever blocks_per_stage said, and conresnet, fcn, segnet,
    fcdensenet and vox2vox whatever decoder_blocks_per_stage said: a hand edit did nothing in silence."""
    topology = planned(name, dims)
    n = topology.n_stages - (setting == "decoder_blocks_per_stage")
    if setting in get_network_spec(name).constraints.block_settings:
        assert n_parameters(name, topology, **{setting: [1] * n}) < n_parameters(name, topology, **{setting: [2] * n})
        return
    readers = [f for f in list_networks() if setting in get_network_spec(f).constraints.block_settings]
    with pytest.raises(NetworkError) as err:
        n_parameters(name, topology, **{setting: [2] * n})
    assert str(err.value) == (
        f"network {name!r} does not read the topology's {setting} {[2] * n} (its design fixes them), so it would "
        f"change nothing; remove {setting} from the plan's network.topology (or set it to null), or choose a "
        f"network that reads it: {', '.join(readers)}"
    )


def test_the_families_that_ignore_a_block_count() -> None:
    ignoring = {s: sorted(f for f in list_networks() if s not in get_network_spec(f).constraints.block_settings)
                for s in BLOCK_SETTINGS}
    assert ignoring == {"blocks_per_stage": ["fcdensenet", "vox2vox"],
                        "decoder_blocks_per_stage": ["conresnet", "fcdensenet", "fcn", "segnet", "vox2vox"]}


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("setting", BLOCK_SETTINGS)
def test_a_block_count_below_one_is_refused_when_the_plan_is_read(setting: str, value: int) -> None:
    """A 0 or -1 reached only the families that read the setting; the others took it in silence."""
    counts = [1, value] if setting == "blocks_per_stage" else [value]
    topology = {"spatial_dims": 2, "features_per_stage": [8, 16], "kernel_sizes": [[3, 3]] * 2,
                "strides": [[1, 1], [2, 2]], setting: counts}
    with pytest.raises(NetworkError) as err:
        Topology.from_dict(topology)
    assert str(err.value) == (
        f"topology: every entry of {setting} must be >= 1, got {counts}; fix the plan's network.topology.{setting} "
        "(or set it to null for the family's default)"
    )


@pytest.mark.parametrize(("name", "dims"), FAMILY_DIMS)
def test_a_patch_equal_to_the_total_stride_is_refused_where_instance_norm_needs_more(name: str, dims: int) -> None:
    """The deepest stage of such a patch is one voxel: torch's instance_norm raises in the first training step
    ("Expected more than 1 spatial element when training", on GPU) and on CPU the norm zeroed it. Families
    normalising otherwise (GroupNorm over several channels, LayerNorm) train there."""
    topology = planned(name, dims)
    constraints = get_network_spec(name).constraints
    with torch.device("meta"):
        built = create_network(name, topology, 1, 3)
    assert any(isinstance(m, InstanceNorm) for m in built.modules()) == constraints.instance_norm
    patch = topology.size_multiple
    at_patch = Topology.from_dict({**topology.to_dict(), "extra": {"patch_size": patch}})
    if not constraints.instance_norm:
        outputs = create_network(name, at_patch, 1, 3).train()(torch.randn(2, 1, *patch))
        assert all(torch.isfinite(o).all() and o.shape[2:] == tuple(patch) for o in outputs[:1])
        return
    larger = list(patch)
    larger[larger.index(max(larger))] *= 2
    with pytest.raises(NetworkError) as err:
        create_network(name, at_patch, 1, 3)
    assert str(err.value) == (
        f"network {name!r}: patch_size {patch} equals the total stride of the strides {topology.strides}, so the "
        f"deepest of its {topology.n_stages} stages is one voxel, which its instance norm cannot normalise; use a "
        f"larger patch (e.g. {larger}, --set patch_size=[...] or the plan's patch_size) or fewer stages (one entry "
        "less in every per-stage list of the plan's network.topology), or re-plan"
    )
    doubled = Topology.from_dict({**topology.to_dict(), "extra": {"patch_size": larger}})
    with torch.device("meta"):
        create_network(name, doubled, 1, 3)  # two voxels deep: built


def test_vnet_without_its_norm_takes_a_one_voxel_deepest_stage() -> None:
    topology = Topology(3, [16, 32], [[5, 5, 5]] * 2, [[1, 1, 1], [2, 2, 2]], extra={"patch_size": [2, 2, 2]})
    with pytest.raises(NetworkError, match="deepest of its 2 stages is one voxel"):
        create_network("vnet", topology, 1, 2)
    outputs = create_network("vnet", topology, 1, 2, norm=False).train()(torch.randn(2, 1, 2, 2, 2))
    assert outputs[0].shape == (2, 2, 2, 2, 2)


def test_train_refuses_a_hand_edited_patch_equal_to_the_total_stride(data_roots: dict[str, Path],  # noqa: F811
                                                                     results: Path) -> None:  # noqa: F811
    """Through the command line: one line, exit 2, before anything is written."""
    folder = data_roots["preprocessed"] / DATASET
    plans = json.loads((folder / "autosegPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [4, 4, 4]  # the tiny topology's total stride
    edited = folder / "autosegPlansOneVoxel.json"
    edited.write_text(json.dumps(plans))
    try:
        output = autoseg_fails("train", DATASET, "3d_fullres", "0", "--epochs", "1", "--plans-name", edited.stem)
    finally:
        edited.unlink()
    assert f"{edited}: configuration 3d_fullres: network 'unet': patch_size [4, 4, 4] equals the total stride of the strides [[1, 1, 1], [2, 2, 2], " \
           "[2, 2, 2]], so the deepest of its 3 stages is one voxel" in output
    assert len(output.strip().splitlines()) == 1
    assert not results.exists() or not any(results.rglob("*"))
