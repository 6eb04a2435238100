"""V-Net: shapes, kernels on anisotropic plans, gradients, the paper's parameter count, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.export import export_torchscript, load_torchscript
from autoseg.networks.vnet import ResidualStage

torch.set_num_threads(1)

TOPOLOGIES = {
    "2d": Topology(2, [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]),
    "3d": Topology(3, [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
    "3d_aniso": Topology(3, [4, 8, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
}
INPUT_SHAPES = {"2d": (16, 12), "3d": (8, 8, 4), "3d_aniso": (2, 8, 12)}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_output_shapes_train_and_eval(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    model = create_network("vnet", topology, in_channels=1, n_classes=2)
    x = torch.randn(2, 1, *shape)
    half = tuple(s // d for s, d in zip(shape, topology.strides[1]))
    assert [tuple(o.shape) for o in model.train()(x)] == [(2, 2, *shape), (2, 2, *half)]
    assert model.eval()(x).shape == (2, 2, *shape)


def test_kernel_five_replaces_three_and_planned_ones_stay() -> None:
    model = create_network("vnet", TOPOLOGIES["3d_aniso"], 1, 2)
    stage1_conv = model.stages[1][-1].convs[0][0]
    stage2_conv = model.stages[2][-1].convs[0][0]
    down = model.stages[1][0]
    assert list(stage1_conv.kernel_size) == [1, 5, 5]
    assert list(stage2_conv.kernel_size) == [5, 5, 5]
    assert list(down.kernel_size) == [1, 2, 2] and list(down.stride) == [1, 2, 2]


def test_paper_conv_counts_per_stage() -> None:
    topology = Topology(3, [2, 4, 8, 16, 32], [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 4)
    model = create_network("vnet", topology, 1, 2)
    encoder_stages = [model.stages[0]] + [down_and_stage[-1] for down_and_stage in model.stages[1:]]
    assert [len(stage.convs) for stage in encoder_stages] == [1, 2, 3, 3, 3]
    # Decoder stages (deepest first) mirror the encoder: 3, 3, 2, 1 convs at twice the skip width.
    assert [len(stage.convs) for stage in model.decoder.stages] == [3, 3, 2, 1]
    assert [stage.convs[0][0].in_channels for stage in model.decoder.stages] == [32, 16, 8, 4]


@pytest.mark.parametrize("topo", ["2d", "3d_aniso"])
def test_every_parameter_gets_a_finite_gradient(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    x = torch.randn(2, 1, *shape)
    for deep_supervision, train in ((True, True), (False, False)):
        model = create_network("vnet", topology, 1, 2, deep_supervision=deep_supervision).train(train)
        out = model(x)
        sum(o.square().mean() for o in (out if isinstance(out, list) else [out])).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None, f"{name} takes no part in the forward pass"
            assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"


def test_paper_configuration_parameter_count_matches_hand_derivation() -> None:
    # Milletari 2016, Fig. 1: 1 input channel, 2 output channels, 16..256 features, 5x5x5 convs with
    # a per-channel PReLU after each, 2x2x2 stride-2 down and up convs, no normalisation.
    f, c5, c2 = [16, 32, 64, 128, 256], 125, 8

    def conv(c_in: int, c_out: int, kernel_volume: int) -> int:
        return c_in * c_out * kernel_volume + c_out + c_out  # weights, bias, PReLU slopes

    encoder = conv(1, f[0], c5) + sum(
        conv(f[i - 1], f[i], c2) + n * conv(f[i], f[i], c5) for i, n in zip(range(1, 5), [2, 3, 3, 3])
    )
    decoder = sum(
        conv(up_in, f[i], c2) + n * conv(2 * f[i], 2 * f[i], c5)
        for i, up_in, n in zip([3, 2, 1, 0], [256, 256, 128, 64], [3, 3, 2, 1])
    )
    head = 32 * 2 + 2
    derived = encoder + decoder + head
    topology = Topology(3, f, [[3, 3, 3]] * 5, [[1, 1, 1]] + [[2, 2, 2]] * 4)
    model = create_network("vnet", topology, 1, 2, deep_supervision=False, norm=False)
    assert n_params(model) == derived
    assert abs(derived - 65.2e6) / 65.2e6 < 0.01  # about 65.2M parameters


def test_registry_declares_the_paper_constraints() -> None:
    constraints = get_network_spec("vnet").constraints
    assert constraints.fixed_features == (16, 32, 64, 128, 256)
    assert constraints.max_stages == 5
    assert constraints.kernel_size == 5


def test_input_stage_replicates_the_input_as_its_shortcut() -> None:
    # Zero convs: the stage output is PReLU(shortcut(x)); the paper replicates the input channels.
    stage = ResidualStage(2, 2, 4, [5, 5], n_convs=1, norm=False)
    with torch.no_grad():
        for p in stage.convs.parameters():
            p.zero_()
    x = torch.tensor([[[[1.0, -2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    expected = torch.tensor([[[[1.0, -0.5]], [[1.0, -0.5]], [[3.0, 4.0]], [[3.0, 4.0]]]])  # PReLU slope 0.25
    torch.testing.assert_close(stage(x), expected)
    # Widths that do not divide get a 1x1 projection instead.
    assert isinstance(ResidualStage(2, 3, 4, [5, 5], 1, norm=False).shortcut, torch.nn.Conv2d)


def test_torchscript_export_reproduces_eager(tmp_path) -> None:
    topology, shape = TOPOLOGIES["3d_aniso"], INPUT_SHAPES["3d_aniso"]
    model = create_network("vnet", topology, 1, 2)
    loaded = load_torchscript(export_torchscript(model, torch.randn(1, 1, *shape), tmp_path / "vnet.pt"))
    x = torch.randn(1, 1, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=1e-5, rtol=0)
