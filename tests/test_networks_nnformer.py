"""nnFormer: deep-supervision shapes, anisotropic stem, skip attention, global bottleneck, paper size, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.nnformer import stem_strides

from family_helpers import assert_every_parameter_learns, assert_export_matches, assert_full_and_half_resolution, n_params

torch.set_num_threads(1)

SMALL = Topology(3, [8, 8, 16, 32], [[3, 3, 3]] * 4, [[1, 1, 1], [4, 4, 4], [2, 2, 2], [2, 2, 2]],
                 window_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]])
ANISO = Topology(3, [8, 8, 16, 32], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 4, 4], [2, 2, 2], [2, 2, 2]],
                 window_sizes=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]])


@pytest.mark.parametrize("topo", ["small", "aniso"])
@pytest.mark.parametrize("multiple", [2, 3])
def test_deep_supervision_outputs_at_full_and_half_resolution(topo: str, multiple: int) -> None:
    topology = SMALL if topo == "small" else ANISO
    assert_full_and_half_resolution("nnformer", topology, multiple, topology.strides[2])


def test_local_windows_then_global_bottleneck_and_skip_attention() -> None:
    model = create_network("nnformer", SMALL, 1, 3)
    assert [stage[0].window for stage in model.encoder] == [[2, 2, 2], [2, 2, 2], None]
    assert [block.shifted for block in model.encoder[0]] == [False, True]
    assert all(stage[0].attn.cross and not stage[1].attn.cross for stage in model.decoder)


def test_skip_attention_reads_keys_and_values_from_the_skip() -> None:
    torch.manual_seed(0)
    model = create_network("nnformer", SMALL, 1, 3)
    block = model.decoder[-1][0].eval()  # stage 1: 8 channels, windows of 2
    up, skip = torch.randn(1, 4, 4, 4, 8), torch.randn(1, 4, 4, 4, 8)
    with torch.no_grad():
        out = block(up, skip)
        # the residual is up + skip; keys and values come only from the skip
        context = block.norm_context(skip)
        windows = lambda t: t.reshape(1, 2, 2, 2, 2, 2, 2, 8).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(1, 8, 8, 8)  # noqa: E731
        attended = block.attn(windows(block.norm1(up)), windows(context))
        back = attended.reshape(1, 2, 2, 2, 2, 2, 2, 8).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(1, 4, 4, 4, 8)
        x = up + skip + back
        torch.testing.assert_close(out, x + block.mlp(block.norm2(x)))


def test_paper_configuration_parameter_count() -> None:
    # Synapse: embedding 192, heads 6/12/24/48, stem stride (2, 4, 4), windows 4: 150.5M in the paper.
    topology = Topology(3, [192, 192, 384, 768, 1536], [[3, 3, 3]] * 5, [[1, 1, 1], [2, 4, 4]] + [[2, 2, 2]] * 3,
                        window_sizes=[[1, 1, 1]] + [[4, 4, 4]] * 3 + [[1, 1, 1]])
    model = create_network("nnformer", topology, 1, 14, deep_supervision=False)
    assert [stage[0].attn.heads for stage in model.encoder] == [6, 12, 24, 48]
    assert abs(n_params(model) - 150.5e6) / 150.5e6 < 0.02


def test_registry_and_errors() -> None:
    constraints = get_network_spec("nnformer").constraints
    assert constraints.spatial_dims == (3,) and constraints.global_last_stage and constraints.stem_stride == 4
    assert stem_strides([1, 2, 4]) == ([1, 2, 2], [1, 1, 2])
    with pytest.raises(NetworkError, match=r"stem stride \[3, 4, 4\] must be 1, 2 or 4 per axis"):
        stem_strides([3, 4, 4])
    with pytest.raises(NetworkError, match="supports 3D inputs only"):
        create_network("nnformer", Topology(2, [8, 8], [[3, 3]] * 2, [[1, 1], [4, 4]]), 1, 2)


def test_every_parameter_learns_and_export_matches(tmp_path) -> None:
    assert_every_parameter_learns("nnformer", ANISO)
    assert_export_matches("nnformer", SMALL, tmp_path)
