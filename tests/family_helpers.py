"""Checks every network-family test file runs the same way: shapes, gradients, export."""

from __future__ import annotations

from pathlib import Path

import torch

from autoseg.networks import Topology, create_network
from autoseg.networks.export import export_torchscript, load_torchscript


# Tiny 3D topologies every convolutional family is checked on: isotropic, and odd per-axis strides.
TINY_3D = Topology(3, [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]])
ODD_STRIDES_3D = Topology(3, [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 3, 2], [2, 1, 3]])


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def output_shapes(name: str, topology: Topology, multiple: int, **options) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """(training output shapes, eval output shape) at ``multiple`` x the topology's size multiple."""
    shape = [multiple * m for m in topology.size_multiple]
    model = create_network(name, topology, 1, 3, **options)
    x = torch.randn(2, 1, *shape)
    train = [tuple(o.shape) for o in model.train()(x)]
    with torch.no_grad():
        evaluated = tuple(model.eval()(x).shape)
    return train, evaluated


def assert_full_and_half_resolution(name: str, topology: Topology, multiple: int, half_stride: list[int]) -> None:
    """Training: logits at full resolution and at ``1 / half_stride`` (deep supervision); eval: full."""
    shape = tuple(multiple * m for m in topology.size_multiple)
    half = tuple(s // t for s, t in zip(shape, half_stride))
    train, evaluated = output_shapes(name, topology, multiple)
    assert train == [(2, 3, *shape), (2, 3, *half)] and evaluated == (2, 3, *shape)


def assert_every_parameter_learns(name: str, topology: Topology, **options) -> None:
    """A training step (deep supervision on) reaches every parameter with a finite gradient."""
    model = create_network(name, topology, 1, 3, **options).train()
    x = torch.randn(2, 1, *[2 * m for m in topology.size_multiple])
    sum(o.square().mean() for o in model(x)).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} takes no part in the forward pass"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"


def assert_export_matches(name: str, topology: Topology, folder: Path) -> None:
    model = create_network(name, topology, 1, 3)
    example = torch.randn(1, 1, *[2 * m for m in topology.size_multiple])
    loaded = load_torchscript(export_torchscript(model, example, folder / f"{name}.pt"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), model.eval()(example), atol=1e-5, rtol=0)
