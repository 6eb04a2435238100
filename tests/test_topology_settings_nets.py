"""What a hand-edited plan's topology asks of every family in the registry: block counts the family does not
read are refused with one message where the network is built; block counts it reads change the network."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec, list_networks
from autoseg.networks.registry import BLOCK_SETTINGS
from autoseg.planning.topology import plan_topology

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
