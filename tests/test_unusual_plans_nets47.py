"""Every family on the unusual topologies real plans produce, at batch 1 and tiny widths.

ACDC's small-memory plans pool the slice axis once over a 2-slice patch (its deepest stage is one slice),
Hippocampus's tiny-memory plans give 8-voxel patches, DRIVE is 2D with 3 input channels, and a CT with
many labels asks for 20 outputs. For each family: the training outputs start at the patch's size (each
deep supervision output a whole fraction of it, one output without deep supervision), eval returns the
patch's size, every parameter that takes part gets a finite gradient at batch 1, channels-last input gives
the same logits, and the weights reload with ``torch.load(weights_only=True)`` to the same logits.
"""

from __future__ import annotations

import io

import pytest
import torch

from autoseg.networks import Topology, create_network, get_network_spec, list_networks
from autoseg.training.steps import WithAux

torch.set_num_threads(1)

FEATURES = [8, 16, 32, 32]
# (spatial dims, patch, strides, kernels, in_channels, outputs)
CONV_CASES = {
    "anisotropic_two_slices": (3, [2, 48, 32], [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]],
                               [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]], 1, 4),
    "tiny_8": (3, [8, 8, 8], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [[3, 3, 3]] * 3, 2, 3),
    "rgb_2d_20_classes": (2, [32, 48], [[1, 1], [2, 2], [2, 2], [2, 2]], [[3, 3]] * 4, 3, 20),
}
# The windowed families, on the windows their planner writes for such patches.
WINDOWED_CASES = {
    "swinunet": Topology(2, [16, 16, 32], [[3, 3]] * 3, [[1, 1], [4, 4], [2, 2]],
                         window_sizes=[[1, 1], [4, 3], [4, 3]], extra={"patch_size": [32, 24]}),
    "nnformer": Topology(3, [16, 16, 32, 32], [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                         [[1, 1, 1], [1, 4, 4], [2, 2, 2], [1, 2, 2]],
                         window_sizes=[[1, 1, 1], [2, 4, 4], [1, 4, 4], [1, 1, 1]], extra={"patch_size": [2, 32, 32]}),
}
WINDOWED_CHANNELS = {"swinunet": (3, 20), "nnformer": (1, 4)}


def _conv_cases() -> list[tuple[str, str]]:
    return [
        (name, case) for case, (dims, *_rest) in CONV_CASES.items() for name in list_networks()
        if dims in get_network_spec(name).constraints.spatial_dims and get_network_spec(name).constraints.window_size is None
    ]


def _case(name: str, case: str) -> tuple[Topology, int, int]:
    if case == "windowed":
        return WINDOWED_CASES[name], *WINDOWED_CHANNELS[name]
    dims, patch, strides, kernels, in_channels, outputs = CONV_CASES[case]
    n = len(strides)
    return Topology(dims, FEATURES[:n], kernels, strides, extra={"patch_size": patch}), in_channels, outputs


CASES = _conv_cases() + [(name, "windowed") for name in WINDOWED_CASES]


@pytest.mark.parametrize(("name", "case"), CASES)
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_training_outputs_gradients_and_eval_at_batch_one(name: str, case: str, deep_supervision: bool) -> None:
    topology, in_channels, outputs = _case(name, case)
    patch = topology.extra["patch_size"]
    torch.manual_seed(0)
    network = create_network(name, topology, in_channels, outputs, deep_supervision=deep_supervision)
    x = torch.randn(1, in_channels, *patch)
    logits, aux = WithAux(network.train())(x)
    shapes = [list(o.shape) for o in logits]
    assert shapes[0] == [1, outputs, *patch]
    assert all(s[:2] == [1, outputs] and all(p % q == 0 for p, q in zip(patch, s[2:])) for s in shapes)
    if not deep_supervision:
        assert len(shapes) == 1
    loss = sum(o.square().mean() for o in logits) + sum(a.float().square().mean() for a in aux.values())
    loss.backward()
    grads = {n: p.grad for n, p in network.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    with torch.no_grad():
        assert list(network.eval()(x).shape) == [1, outputs, *patch]


@pytest.mark.parametrize(("name", "case"), CASES)
def test_channels_last_and_weights_only_reload_give_the_same_logits(name: str, case: str) -> None:
    topology, in_channels, outputs = _case(name, case)
    torch.manual_seed(0)
    network = create_network(name, topology, in_channels, outputs).eval()
    x = torch.randn(1, in_channels, *topology.extra["patch_size"])
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    rebuilt = create_network(name, topology, in_channels, outputs).eval()
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    memory_format = torch.channels_last if topology.spatial_dims == 2 else torch.channels_last_3d
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(rebuilt(x), expected, atol=0, rtol=0)
        last = network.to(memory_format=memory_format)(x.contiguous(memory_format=memory_format))
    torch.testing.assert_close(last, expected, atol=1e-4 * max(1.0, float(expected.abs().max())), rtol=1e-4)
