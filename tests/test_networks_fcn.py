"""FCN-8s: shapes (isotropic, anisotropic, odd strides), bilinear initialisation, fusion, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.fcn import BilinearUp, bilinear_kernel

from family_helpers import ODD_STRIDES_3D, TINY_3D, assert_every_parameter_learns, assert_export_matches, n_params, output_shapes

torch.set_num_threads(1)

TOPOLOGIES = {
    "2d": Topology(2, [4, 8, 16, 16], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]]),
    "3d": TINY_3D,
    "3d_odd": ODD_STRIDES_3D,
}


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
@pytest.mark.parametrize("multiple", [2, 3])
def test_outputs_at_two_and_three_times_the_total_stride(topo: str, multiple: int) -> None:
    topology = TOPOLOGIES[topo]
    shape = tuple(multiple * t for t in topology.total_stride)
    train, evaluated = output_shapes("fcn", topology, multiple)
    # full resolution, then the fused score one stage up, then the deepest score (fc7)
    deep = tuple(s // t for s, t in zip(shape, topology.total_stride))
    above = tuple(d * s for d, s in zip(deep, topology.strides[-1]))
    assert train == [(2, 3, *shape), (2, 3, *above), (2, 3, *deep)] and evaluated == (2, 3, *shape)


def test_bilinear_kernel_is_the_fcn_filter() -> None:
    torch.testing.assert_close(bilinear_kernel(4), torch.tensor([0.25, 0.75, 0.75, 0.25]))
    torch.testing.assert_close(bilinear_kernel(5), torch.tensor([1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]))


def test_upsampling_starts_as_bilinear_interpolation_per_channel() -> None:
    up = BilinearUp(2, 2, [2, 2])
    x = torch.randn(1, 2, 6, 5)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    # Away from the border (where the transposed conv sees zeros) it is exactly bilinear.
    torch.testing.assert_close(up(x)[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1])
    odd = BilinearUp(3, 1, [1, 3, 2])
    assert odd(torch.randn(1, 1, 2, 3, 4)).shape == (1, 1, 2, 9, 8)
    assert list(odd.up.kernel_size) == [1, 5, 4]


def test_skip_scores_start_at_zero_so_training_begins_as_fcn32s() -> None:
    model = create_network("fcn", TOPOLOGIES["2d"], 1, 3)
    assert [int(s.weight.count_nonzero()) for s in model.scores[:-1]] == [0, 0]
    assert int(model.scores[-1].weight.count_nonzero()) > 0
    assert model.scored == [1, 2, 3]  # the three deepest stages: pool3, pool4 and fc7 of FCN-8s


def test_fusion_is_an_addition_of_the_scores() -> None:
    model = create_network("fcn", TOPOLOGIES["3d"], 1, 3).eval()
    with torch.no_grad():
        for score in model.scores:  # non-zero skip scores, so that the sum is visible
            score.weight.normal_()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        f0 = model.stages[0](x)
        f1 = model.stages[1](f0)
        f2 = model.stages[2](f1)
        h = model.ups[1](model.scores[2](model.fc(f2))) + model.scores[1](f1)
        expected = model.ups[0](h) + model.scores[0](f0)  # 3 stages: stage 0 is full resolution
        torch.testing.assert_close(model(x), expected)


def test_every_parameter_learns_and_counts_are_sane() -> None:
    assert_every_parameter_learns("fcn", TOPOLOGIES["3d_odd"])
    # the planner's 3D default (32..256, 4 stages) stays a light network
    topology = Topology(3, [32, 64, 128, 256], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3, blocks_per_stage=[2, 2, 3, 3])
    assert 5e6 < n_params(create_network("fcn", topology, 1, 3)) < 12e6


def test_registry_and_export(tmp_path) -> None:
    assert get_network_spec("fcn").constraints.default_blocks_per_stage == (2, 2, 3, 3, 3)
    assert_export_matches("fcn", TOPOLOGIES["3d_odd"], tmp_path)
