"""Vox2Vox: generator shapes and geometry, PatchGAN discriminator, gradients, registry, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.export import check_export, trace_for_inference
from autoseg.networks.vox2vox import BOTTLENECK_BLOCKS, build_discriminator

torch.set_num_threads(1)

TOPOLOGIES = {
    "3d": Topology(3, [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
    "3d_aniso": Topology(3, [4, 8, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
    # Odd strides, which the other families take (tests/family_helpers.py ODD_STRIDES_3D).
    "3d_odd": Topology(3, [4, 8, 16], [[1, 3, 3], [3, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 3, 2], [2, 1, 3]]),
}
INPUT_SHAPES = {"3d": (8, 12, 8), "3d_aniso": (4, 8, 12), "3d_odd": (4, 6, 12)}


def bad_gradients(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_generator_shapes_train_and_eval(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    x = torch.randn(2, 2, *shape)
    model = create_network("vox2vox", topology, 2, 3)
    outputs = model.train()(x)
    assert isinstance(outputs, list) and [tuple(o.shape) for o in outputs] == [(2, 3, *shape)]
    assert model.eval()(x).shape == (2, 3, *shape)


def test_strided_axes_use_k4_and_unstrided_axes_the_plan_kernel() -> None:
    model = create_network("vox2vox", TOPOLOGIES["3d_aniso"], 1, 2)
    down = model.encoder[1][0]
    assert list(down.kernel_size) == [1, 4, 4] and list(down.stride) == [1, 2, 2] and list(down.padding) == [0, 1, 1]
    up = model.decoder[-1][0]  # back to stage 0, mirrors encoder[1]
    assert list(up.kernel_size) == [1, 4, 4] and list(up.stride) == [1, 2, 2]
    # The bottleneck concatenates every block's input and output: 5 x the deepest width.
    assert model.decoder[0][0].in_channels == (BOTTLENECK_BLOCKS + 1) * 16


def test_discriminator_scores_patches_of_image_and_segmentation() -> None:
    discriminator = build_discriminator(2, 3)
    scores = discriminator(torch.randn(2, 2, 8, 16, 32), torch.rand(2, 3, 8, 16, 32))
    # Three stride-2 convs; the two head convs keep the size.
    assert scores.shape == (2, 1, 1, 2, 4)
    assert discriminator.net[0].in_channels == 5


@pytest.mark.parametrize(
    ("shape", "scores_shape"),
    [((4, 32, 32), (1, 4, 4)), ((2, 64, 64), (1, 8, 8)), ((8, 5, 1), (2, 1, 1)), ((12, 12, 12), (2, 1, 1)),
     ((8, 12, 14), (1, 1, 2))],
)
@pytest.mark.parametrize("batch", [1, 2])
def test_discriminator_scores_patches_thinner_than_its_strides(
    shape: tuple[int, int, int], scores_shape: tuple[int, int, int], batch: int
) -> None:
    """A patch axis under 8 (thin slabs) made the strided convs fail, and a patch under 16 on every axis
    left InstanceNorm one value per channel at batch 1: internal errors at the first adversarial step.
    Short axes are zero-padded to 8, and the longest to 16 when all are under 16, so every patch trains."""
    discriminator = build_discriminator(1, 2).train()
    scores = discriminator(torch.randn(batch, 1, *shape), torch.rand(batch, 2, *shape))
    assert scores.shape == (batch, 1, *scores_shape)
    scores.square().mean().backward()
    assert bad_gradients(discriminator) == []


def test_every_parameter_of_generator_and_discriminator_gets_a_finite_gradient() -> None:
    topology, shape = TOPOLOGIES["3d_aniso"], (8, 8, 16)
    generator = create_network("vox2vox", topology, 2, 3).train()
    discriminator = build_discriminator(2, 3).train()
    x = torch.randn(2, 2, *shape)
    probs = torch.softmax(generator(x)[0], dim=1)
    discriminator(x, probs).square().mean().backward()
    assert bad_gradients(generator) == [] and bad_gradients(discriminator) == []


def test_registry_marks_vox2vox_adversarial_and_3d_only() -> None:
    spec = get_network_spec("vox2vox")
    assert spec.adversarial and spec.constraints.spatial_dims == (3,)
    assert spec.constraints.max_features == 512
    assert not get_network_spec("unet").adversarial


def test_single_stage_topology_is_refused() -> None:
    with pytest.raises(NetworkError, match="network 'vox2vox' needs at least 2 resolution stages"):
        create_network("vox2vox", Topology(3, [8], [[3, 3, 3]], [[1, 1, 1]]), 1, 2)


def test_torchscript_trace_reproduces_eager() -> None:
    model = create_network("vox2vox", TOPOLOGIES["3d"], 2, 3)
    x = torch.randn(1, 2, *INPUT_SHAPES["3d"])
    assert check_export(model, trace_for_inference(model, x), x) <= 1e-5
