"""FC-DenseNet 56/67/103: stage widths by the paper's formula, the planner's view of them, shapes, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.fcdensenet import VARIANTS
from autoseg.planning.topology import plan_topology

from family_helpers import assert_every_parameter_learns, assert_export_matches, assert_full_and_half_resolution, n_params

torch.set_num_threads(1)

SIX_STAGES_2D = Topology(2, [1] * 6, [[3, 3]] * 6, [[1, 1]] + [[2, 2]] * 5)
TOPOLOGIES = {
    "2d": Topology(2, [1] * 3, [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]),
    "3d_aniso": Topology(3, [1] * 3, [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
}


def paper_widths(down: list[int], bottleneck: int, growth: int) -> list[int]:
    """Jegou et al. §3: a block of n layers adds n x growth maps to its input; 48 after the stem."""
    widths = [48 + growth * sum(down[: i + 1]) for i in range(len(down))]
    return widths + [growth * bottleneck]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_stage_widths_follow_the_paper(variant: str) -> None:
    spec = VARIANTS[variant]
    model = create_network("fcdensenet", SIX_STAGES_2D, 3, 11, variant=variant)
    widths = [block.out_channels for block in model.down_blocks] + [model.bottleneck.out_channels]
    assert widths == paper_widths(list(spec.down), spec.bottleneck, spec.growth)
    if variant == "103":  # the numbers of Jegou et al. Fig. 1
        assert widths == [112, 192, 304, 464, 656, 240]
    # The way up: transposed conv of the new maps only, concatenated with the skip.
    assert model.transitions_up[0].in_channels == spec.bottleneck * spec.growth
    assert model.up_blocks[0].layers[0][0].num_features == spec.bottleneck * spec.growth + widths[4]
    # The last block keeps its input: the skip, the upsampled new maps of the block below, its own.
    assert model.head.in_channels == widths[0] + (spec.down[1] + spec.down[0]) * spec.growth


@pytest.mark.parametrize(("variant", "paper"), [("56", 1.5e6), ("67", 3.5e6), ("103", 9.4e6)])
def test_parameter_counts_match_the_paper(variant: str, paper: float) -> None:
    count = n_params(create_network("fcdensenet", SIX_STAGES_2D, 3, 11, deep_supervision=False, variant=variant))
    assert abs(count - paper) / paper < 0.1, count  # the paper rounds to 0.1M


def test_the_planner_knows_the_real_widths() -> None:
    constraints = get_network_spec("fcdensenet").constraints
    topology = plan_topology([40, 56, 40], [1.0, 1.0, 1.0], constraints)
    assert topology.n_stages == 4
    model = create_network("fcdensenet", topology, 1, 3)
    built = [block.out_channels for block in model.down_blocks] + [model.bottleneck.out_channels]
    assert topology.features_per_stage == built == [96, 144, 192, 48]  # FC-DenseNet56: k = 12, 4 layers
    assert constraints.fixed_width


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
@pytest.mark.parametrize("multiple", [2, 3])
def test_outputs_at_two_and_three_times_the_total_stride(topo: str, multiple: int) -> None:
    topology = TOPOLOGIES[topo]
    assert_full_and_half_resolution("fcdensenet", topology, multiple, topology.strides[1])


def test_bad_variant_and_too_many_stages_are_clear() -> None:
    with pytest.raises(NetworkError, match=r"unknown variant '42'; choose one of 56, 67, 103"):
        create_network("fcdensenet", TOPOLOGIES["2d"], 1, 3, variant="42")
    seven = Topology(2, [1] * 7, [[3, 3]] * 7, [[1, 1]] + [[2, 2]] * 6)
    with pytest.raises(NetworkError, match=r"7 stages, the design takes 2 to 6; re-plan"):
        create_network("fcdensenet", seven, 1, 3)


def test_every_parameter_learns_and_export_matches(tmp_path) -> None:
    assert_every_parameter_learns("fcdensenet", TOPOLOGIES["3d_aniso"])
    assert_export_matches("fcdensenet", TOPOLOGIES["3d_aniso"], tmp_path)
