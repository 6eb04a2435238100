"""The shared building blocks: the instance norm every U-Net-like family uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoseg.networks.blocks import InstanceNorm, instance_norm_op


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_instance_norm_computes_what_torchs_instance_norm_computes(dims: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    shape = (2, 5, 6, 7, 4)[: dims + 2]
    reference = (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(5, eps=1e-5, affine=True)
    norm = instance_norm_op(dims)(5, eps=1e-5, affine=True)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
        reference.bias.uniform_(-1.0, 1.0)
    norm.load_state_dict(reference.state_dict())  # same keys: checkpoints of either load into the other
    assert set(norm.state_dict()) == set(reference.state_dict()) == {"weight", "bias"}
    x = torch.randn(shape) * 3 + 1
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    if channels_last:
        x = x.contiguous(memory_format=layout)
    outputs, grads = [], []
    for module in (reference, norm):
        leaf = x.clone().requires_grad_()
        out = module(leaf)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        grads.append((leaf.grad, module.weight.grad, module.bias.grad))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    if channels_last:  # on CPU the layout survives (torch's instance_norm hands back a contiguous copy)
        assert outputs[1].is_contiguous(memory_format=layout) and not outputs[0].is_contiguous(memory_format=layout)
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_instance_norm_normalises_each_sample_and_channel_by_hand() -> None:
    x = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 4.0]]]).view(1, 2, 2, 2)
    norm = InstanceNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 1.0]))
        norm.bias.copy_(torch.tensor([1.0, 0.0]))
    out = norm(x)
    # channel 0: mean 4, population std sqrt(5); channel 1: mean 1, std sqrt(3)
    expected0 = 2 * (torch.tensor([1.0, 3.0, 5.0, 7.0]) - 4) / 5**0.5 + 1
    expected1 = (torch.tensor([0.0, 0.0, 0.0, 4.0]) - 1) / 3**0.5
    torch.testing.assert_close(out[0, 0].flatten(), expected0)
    torch.testing.assert_close(out[0, 1].flatten(), expected1)


def test_instance_norm_without_affine_has_no_parameters() -> None:
    norm = InstanceNorm(3, affine=False)
    assert list(norm.parameters()) == []
    out = norm(torch.randn(2, 3, 4, 4))
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6, rtol=0)
