"""Swin-UNet: shapes at multiples of its patch x window size, the paper's parameter count, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.planning.topology import divisible_patch, plan_topology

from family_helpers import assert_every_parameter_learns, assert_export_matches, n_params, output_shapes

torch.set_num_threads(1)

# patch 4, then 2 merges; windows of 2 -> inputs must be multiples of 4 x 2 x 2 x 2 = 32
SMALL = Topology(2, [8, 8, 16, 32], [[3, 3]] * 4, [[1, 1], [4, 4], [2, 2], [2, 2]], window_sizes=[[1, 1]] + [[2, 2]] * 3)
ANISO = Topology(2, [8, 8, 16], [[3, 3]] * 3, [[1, 1], [4, 1], [2, 2]], window_sizes=[[1, 1], [2, 3], [2, 3]])


@pytest.mark.parametrize("multiple", [1, 2, 3])
def test_outputs_at_multiples_of_patch_times_window(multiple: int) -> None:
    assert SMALL.size_multiple == [32, 32]
    shape = (32 * multiple, 32 * multiple)
    train, evaluated = output_shapes("swinunet", SMALL, multiple)
    # full resolution after the 4x expansion, then decoder stages at 1/4 and 1/8
    quarter = tuple(s // 4 for s in shape)
    assert train == [(2, 3, *shape), (2, 3, *quarter), (2, 3, *(q // 2 for q in quarter))]
    assert evaluated == (2, 3, *shape)


def test_anisotropic_embedding_and_windows() -> None:
    assert ANISO.size_multiple == [16, 6]
    train, evaluated = output_shapes("swinunet", ANISO, 2)
    assert train[0] == (2, 3, 32, 12) and train[1] == (2, 3, 8, 12) and evaluated == (2, 3, 32, 12)


def test_paper_configuration_has_the_papers_parameter_count() -> None:
    # Swin-T widths (96 .. 768), heads 3/6/12/24, window 7, 224 x 224 input, 9 Synapse classes: 27.17M.
    topology = Topology(2, [96, 96, 192, 384, 768], [[3, 3]] * 5, [[1, 1], [4, 4], [2, 2], [2, 2], [2, 2]],
                        window_sizes=[[1, 1]] + [[7, 7]] * 4)
    model = create_network("swinunet", topology, 3, 9, deep_supervision=False)
    assert topology.size_multiple == [224, 224]
    assert abs(n_params(model) - 27.17e6) / 27.17e6 < 0.005
    assert [stage[0].attn.heads for stage in model.encoder] == [3, 6, 12, 24]
    assert [stage[1].shifted for stage in model.encoder] == [True] * 4


def test_planner_chooses_patch_embedding_and_windows() -> None:
    constraints = get_network_spec("swinunet").constraints
    topology = plan_topology([512, 512], [1.0, 1.0], constraints)
    assert topology.strides == [[1, 1], [4, 4], [2, 2], [2, 2], [2, 2]]
    assert topology.window_sizes == [[1, 1]] + [[7, 7]] * 4
    assert divisible_patch([512, 512], topology) == [672, 672]  # multiples of 4 x 8 x 7 = 224
    small = plan_topology([96, 96], [1.0, 1.0], constraints)  # 24, 12, 6: the deepest stage is one window
    assert small.n_stages == 4 and small.window_sizes[-1] == [6, 6] and divisible_patch([96, 96], small) == [96, 96]


def test_errors_are_clear() -> None:
    with pytest.raises(NetworkError, match="supports 2D inputs only"):
        create_network("swinunet", Topology(3, [8, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [4, 4, 4]]), 1, 2)
    with pytest.raises(NetworkError, match="no window_sizes; plan it with `autoseg plan --network swinunet`"):
        create_network("swinunet", Topology(2, [8, 8], [[3, 3]] * 2, [[1, 1], [4, 4]]), 1, 2)
    with pytest.raises(NetworkError, match=r"input shape \(48, 48\) is not divisible by the network's total stride x attention window \(32, 32\)"):
        SMALL.check_input_shape([48, 48])


def test_every_parameter_learns_and_export_matches(tmp_path) -> None:
    assert_every_parameter_learns("swinunet", SMALL)
    assert_export_matches("swinunet", SMALL, tmp_path)
