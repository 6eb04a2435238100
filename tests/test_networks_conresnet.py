"""ConResNet: shapes, slice axis, residual outputs, gradients, paper parameter count, errors, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.conresnet import WS_EPS, WSConv3d, decoder_stages, slice_difference
from autoseg.networks.export import check_export, trace_for_inference

torch.set_num_threads(1)

TOPOLOGIES = {
    # The paper's layout in miniature: the last stage does not downsample (dilated instead).
    "3d": Topology(3, [8, 16, 16, 16], [[3, 3, 3]] * 4, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 1, 1]]),
    "3d_aniso": Topology(3, [8, 16, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
}
INPUT_SHAPES = {"3d": (8, 12, 8), "3d_aniso": (4, 8, 12)}
# reference.md §2.3: about 19M parameters.
PAPER_PARAMS = 19e6


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def downsampled(shape: tuple[int, ...], *strides: list[int]) -> tuple[int, ...]:
    for stride in strides:
        shape = tuple(s // d for s, d in zip(shape, stride))
    return shape


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_output_shapes_and_residual_outputs(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    x = torch.randn(2, 2, *shape)
    model = create_network("conresnet", topology, 2, 3).train()
    outputs = model(x)
    assert isinstance(outputs, list) and [tuple(o.shape) for o in outputs] == [(2, 3, *shape)]
    logits, aux = model.forward_with_aux(x)
    # One residual output per decoder scale (skip stages 0 and 1), full resolution first.
    assert sorted(aux) == ["residual_0", "residual_1"]
    assert aux["residual_0"].shape == (2, 3, *shape)
    assert aux["residual_1"].shape == (2, 3, *downsampled(shape, topology.strides[1]))
    model.eval()
    assert model(x).shape == (2, 3, *shape)
    assert model.forward_with_aux(x)[1] == {}


def test_decoder_joins_at_every_downsampled_resolution() -> None:
    assert decoder_stages([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 1, 1]]) == [0, 1, 2]  # paper
    assert decoder_stages([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]) == [0, 1, 2, 3]
    assert decoder_stages([[1, 1, 1], [1, 2, 2], [1, 1, 1]]) == [0]


def test_paper_configuration_parameter_count() -> None:
    topology = Topology(3, [32, 64, 128, 256, 256], [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 3 + [[1, 1, 1]])
    model = create_network("conresnet", topology, 4, 3)
    assert abs(n_params(model) - PAPER_PARAMS) / PAPER_PARAMS < 0.05
    # Three context residual modules at 1/4, 1/2, 1/1 with widths 128->64, 64->32, 32->32.
    widths = [(m.seg_conv[2].in_channels, m.seg_conv[2].out_channels) for m in model.levels]
    assert widths == [(128, 64), (64, 32), (32, 32)]
    assert [b.body[0][2].dilation for b in model.stages[4]] == [(2, 2, 2)] * 2


def test_slice_difference_is_the_xor_of_adjacent_slices() -> None:
    mask = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]).view(1, 1, 5, 1, 1)
    assert slice_difference(mask, 2).flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    values = torch.tensor([[1.0, 4.0, 2.0]])
    assert slice_difference(values, 1).tolist() == [[0.0, 3.0, 2.0]]


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_residual_decoder_starts_from_the_chosen_slice_axis(slice_axis: int) -> None:
    """An image constant along the slice axis has no inter-slice residual; along other axes it has."""
    model = create_network("conresnet", TOPOLOGIES["3d"], 1, 2, slice_axis=slice_axis).eval()
    seen: list[torch.Tensor] = []
    model.levels[0].res_project.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0]))
    shape = [1, 1, 8, 8, 8]
    shape[2 + slice_axis] = 1
    x = torch.randn(shape).expand(1, 1, 8, 8, 8).contiguous()
    model(x)
    assert seen[0].abs().max() == 0
    other = (slice_axis + 1) % 3
    model.slice_dim = model.levels[0].slice_dim = 2 + other
    model(x)
    assert seen[1].abs().max() > 0


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_every_parameter_gets_a_finite_gradient(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    model = create_network("conresnet", topology, 2, 3, slice_axis=1).train()
    logits, aux = model.forward_with_aux(torch.randn(2, 2, *shape))
    sum((o * torch.randn_like(o)).mean() for o in [*logits, *aux.values()]).backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []


def test_weight_standardisation_ignores_filter_offset_and_scale() -> None:
    conv = WSConv3d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(1, 2, 4, 4, 4)
    expected = conv(x)
    weight = conv.weight.detach()
    mean = weight.mean(dim=(1, 2, 3, 4), keepdim=True)
    std = weight.var(dim=(1, 2, 3, 4), keepdim=True, unbiased=False).add(WS_EPS).sqrt()
    assert torch.allclose(expected, F.conv3d(x, (weight - mean) / std, padding=1), atol=1e-5)
    with torch.no_grad():
        conv.weight.mul_(3.0).add_(0.5)
    assert torch.allclose(conv(x), expected, atol=1e-4)


def test_two_dimensional_plans_are_refused() -> None:
    topology = Topology(2, [8, 16], [[3, 3]] * 2, [[1, 1], [2, 2]])
    with pytest.raises(NetworkError) as err:
        create_network("conresnet", topology, 1, 2)
    assert str(err.value) == (
        "network 'conresnet' supports 3D inputs only, the plan asks for 2D; "
        "choose another network or configuration"
    )


def test_bad_slice_axis_is_refused() -> None:
    with pytest.raises(NetworkError) as err:
        create_network("conresnet", TOPOLOGIES["3d"], 1, 2, slice_axis=3)
    assert str(err.value) == "conresnet: slice_axis must be a spatial axis index 0, 1 or 2, got 3"


ONE_SLICE = "conresnet: the patch {patch} has 1 slice along slice_axis {axis}, so its inter-slice context residual is " \
    "zero and its auxiliary loss teaches nothing; use a patch of at least 2 slices on that axis, another --set " \
    "network_options.slice_axis, or another network (e.g. --network unet)"


def test_a_patch_of_one_slice_along_the_slice_axis_is_refused() -> None:
    """A 2D-like 3D patch (1 x H x W) made the residual target ``label[s] XOR label[s-1]`` zero everywhere: the
    auxiliary loss only taught the residual decoder to output 0. Refused where the network is built for training
    (the patch in ``topology.extra``), and by ``forward_with_aux`` in training for a network built without it."""
    in_plane = Topology(3, [8, 16, 16], [[1, 3, 3]] * 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]])
    topology = Topology.from_dict({**in_plane.to_dict(), "extra": {"patch_size": [1, 8, 12]}})
    with pytest.raises(NetworkError) as err:
        create_network("conresnet", topology, 1, 2)
    assert str(err.value) == ONE_SLICE.format(patch=[1, 8, 12], axis=0)
    model = create_network("conresnet", topology, 1, 2, slice_axis=1).train()  # 8 slices along axis 1: trains
    assert sorted(model.forward_with_aux(torch.randn(1, 1, 1, 8, 12))[1]) == ["residual_0", "residual_1"]
    model = create_network("conresnet", in_plane, 1, 2).train()
    with pytest.raises(NetworkError) as err:
        model.forward_with_aux(torch.randn(1, 1, 1, 8, 12))
    assert str(err.value) == ONE_SLICE.format(patch=[1, 8, 12], axis=0)
    assert model.eval()(torch.randn(1, 1, 1, 8, 12)).shape == (1, 2, 1, 8, 12)  # prediction of a thin slab is fine


def test_topology_without_downsampling_is_refused() -> None:
    topology = Topology(3, [8, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [1, 1, 1]])
    with pytest.raises(NetworkError, match="conresnet needs at least one downsampling stage"):
        create_network("conresnet", topology, 1, 2)


def test_registry_declares_the_paper_design() -> None:
    spec = get_network_spec("conresnet")
    assert spec.constraints.spatial_dims == (3,)
    assert spec.constraints.fixed_features == (32, 64, 128, 256, 256)
    assert spec.constraints.default_blocks_per_stage == (1, 2, 2, 2, 2)


def test_torchscript_trace_reproduces_eager() -> None:
    model = create_network("conresnet", TOPOLOGIES["3d_aniso"], 2, 3)
    x = torch.randn(1, 2, *INPUT_SHAPES["3d_aniso"])
    assert check_export(model, trace_for_inference(model, x), x) <= 1e-5
