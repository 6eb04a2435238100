"""SegNet: shapes (isotropic, anisotropic, odd strides), unpooling to the argmax positions, no skips, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.networks import Topology, create_network

from family_helpers import ODD_STRIDES_3D, TINY_3D, assert_every_parameter_learns, assert_export_matches, assert_full_and_half_resolution, n_params

torch.set_num_threads(1)

TOPOLOGIES = {
    "2d": Topology(2, [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]),
    "3d": TINY_3D,
    "3d_odd": ODD_STRIDES_3D,
}


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
@pytest.mark.parametrize("multiple", [2, 3])
def test_outputs_at_two_and_three_times_the_total_stride(topo: str, multiple: int) -> None:
    topology = TOPOLOGIES[topo]
    assert_full_and_half_resolution("segnet", topology, multiple, topology.strides[1])


def test_unpooling_puts_each_value_back_at_its_argmax() -> None:
    model = create_network("segnet", TOPOLOGIES["2d"], 1, 3)
    pool, unpool = model.pools[0], model.unpools[0]
    x = torch.tensor([[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 9.0, 8.0], [0.0, 0.0, 1.0, 7.0], [6.0, 2.0, 3.0, 3.0]]]])
    pooled, indices = pool(x)
    torch.testing.assert_close(pooled, torch.tensor([[[[5.0, 9.0], [6.0, 7.0]]]]))
    expected = torch.tensor([[[[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 7.0], [6.0, 0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(unpool(pooled, indices), expected)
    torch.testing.assert_close(unpool(pooled, indices), torch.nn.MaxUnpool2d(2)(pooled, indices))


def test_anisotropic_unpooling_follows_the_plan_stride() -> None:
    model = create_network("segnet", TOPOLOGIES["3d_odd"], 1, 3)
    x = torch.randn(1, 1, 2, 6, 4)
    pooled, indices = model.pools[0](x)  # stride (1, 3, 2)
    assert pooled.shape == (1, 1, 2, 2, 2)
    restored = model.unpools[0](pooled, indices)
    assert int(restored.count_nonzero()) == pooled.numel()
    torch.testing.assert_close(restored[restored != 0], x[restored != 0])


def test_decoder_takes_no_skip_features() -> None:
    model = create_network("segnet", Topology(2, [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]), 1, 3)
    # Each decoder level reads only the width of its own stage, mirrored from the encoder.
    assert [block[0][0].in_channels for block in model.decoder] == [4, 8, 16]
    assert [block[-1][0].out_channels for block in model.decoder] == [4, 4, 8]


def test_every_parameter_learns_and_counts_are_sane() -> None:
    assert_every_parameter_learns("segnet", TOPOLOGIES["3d_odd"])
    # SegNet's VGG16 widths in 2D: 64..512 over 5 stages; the paper reports 29.5M parameters with
    # BatchNorm and 13 classes, which the same layers here reproduce within 1%.
    topology = Topology(2, [64, 128, 256, 512, 512], [[3, 3]] * 5, [[1, 1]] + [[2, 2]] * 4)
    count = n_params(create_network("segnet", topology, 3, 13, deep_supervision=False))
    assert abs(count - 29.5e6) / 29.5e6 < 0.01, count


def test_export_matches_eager(tmp_path) -> None:
    assert_export_matches("segnet", TOPOLOGIES["3d_odd"], tmp_path)
