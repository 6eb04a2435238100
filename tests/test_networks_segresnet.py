"""SegResNet (+VAE): shapes 2D/3D/anisotropic, gradients, paper parameter count, errors, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.blocks import group_norm
from autoseg.networks.export import check_export, trace_for_inference
from autoseg.networks.segresnet import VAE_LATENT

torch.set_num_threads(1)

TOPOLOGIES = {
    "2d": Topology(2, [8, 16, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]),
    "3d": Topology(3, [8, 16, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
    "3d_aniso": Topology(3, [8, 16, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
}
INPUT_SHAPES = {"2d": (16, 12), "3d": (8, 8, 12), "3d_aniso": (4, 8, 12)}
# reference.md §2.2: about 18.8M parameters (4 in, 3 out, 32 filters).
PAPER_PARAMS = 18.8e6
PAPER_PATCH = [160, 192, 128]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_topology() -> Topology:
    return Topology(3, [32, 64, 128, 256], [[3, 3, 3]] * 4, [[1, 1, 1]] + [[2, 2, 2]] * 3)


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_output_shapes_train_and_eval(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    x = torch.randn(2, 2, *shape)
    model = create_network("segresnet", topology, 2, 3)
    outputs = model.train()(x)
    # Deep supervision (Auto3DSeg's SegResNetDS): one head per decoder level, full resolution first.
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3, *shape),
        (2, 3, *[s // d for s, d in zip(shape, topology.strides[1])]),
    ]
    out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *shape)
    single = create_network("segresnet", topology, 2, 3, deep_supervision=False).train()(x)
    assert [tuple(o.shape) for o in single] == [(2, 3, *shape)]


@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_vae_returns_reconstruction_and_latent_stats(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    model = create_network("segresnet", topology, 2, 3, vae=True, input_size=list(shape)).train()
    x = torch.randn(2, 2, *shape)
    logits, aux = model.forward_with_aux(x)
    assert len(logits) == 2 and logits[0].shape == (2, 3, *shape)
    assert aux["reconstruction"].shape == x.shape
    assert aux["mu"].shape == aux["sigma"].shape == (2, VAE_LATENT)
    assert (aux["sigma"] > 0).all()
    # forward() in training gives the logits only; eval computes no aux branch.
    assert [o.shape for o in model(x)] == [o.shape for o in logits]
    eval_logits, eval_aux = model.eval().forward_with_aux(x)
    assert eval_aux == {} and [o.shape for o in eval_logits] == [(2, 3, *shape)]


def test_anisotropic_strides_and_kernels_reach_the_convs() -> None:
    model = create_network("segresnet", TOPOLOGIES["3d_aniso"], 1, 2)
    down = model.stages[1][0]
    assert list(down.kernel_size) == [1, 3, 3] and list(down.stride) == [1, 2, 2]
    assert list(model.stages[0][0].body[2].kernel_size) == [1, 3, 3]


@pytest.mark.parametrize("topo", ["2d", "3d_aniso"])
def test_every_parameter_gets_a_finite_gradient(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    model = create_network("segresnet", topology, 2, 3, vae=True, input_size=list(shape)).train()
    logits, aux = model.forward_with_aux(torch.randn(2, 2, *shape))
    loss = sum((o * torch.randn_like(o)).mean() for o in [*logits, *aux.values()])
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert bad == []


def test_paper_configuration_parameter_count() -> None:
    """The 18.8M of reference §2.2 is the segmentation network alone; the VAE branch adds ~7.2M."""
    plain = create_network("segresnet", paper_topology(), 4, 3, deep_supervision=False)
    assert abs(n_params(plain) - PAPER_PARAMS) / PAPER_PARAMS < 0.05
    with_vae = create_network(
        "segresnet", paper_topology(), 4, 3, deep_supervision=False, vae=True, input_size=PAPER_PATCH
    )
    vae = n_params(with_vae.vae)
    assert n_params(with_vae) == n_params(plain) + vae
    # Dense layers: 16 x (10x12x8) -> 256 and 128 -> 16 x (10x12x8), weights + biases.
    flat = 16 * 10 * 12 * 8
    assert with_vae.vae.to_stats.weight.shape == (256, flat)
    assert 7.0e6 < vae < 7.5e6


def test_vae_size_comes_from_the_plan_patch_size() -> None:
    topology = TOPOLOGIES["3d"]
    planned = Topology(**{**topology.to_dict(), "extra": {"patch_size": [8, 8, 12]}})
    model = create_network("segresnet", planned, 1, 2, vae=True)
    # deepest stage 2x2x3 -> extra stride 2 on even axes -> latent grid 1x1x3.
    assert model.vae.latent_grid == [1, 1, 3]


def test_vae_without_input_size_is_refused() -> None:
    with pytest.raises(NetworkError) as err:
        create_network("segresnet", TOPOLOGIES["3d"], 1, 2, vae=True)
    assert str(err.value) == (
        "segresnet: vae=True needs the training patch size to size its dense layers; "
        "plan it (topology.extra['patch_size']) or pass the option input_size=[...]"
    )


def test_vae_refuses_a_patch_of_another_size() -> None:
    model = create_network("segresnet", TOPOLOGIES["3d"], 1, 2, vae=True, input_size=[8, 8, 12]).train()
    with pytest.raises(NetworkError, match=r"built for input size \[8, 8, 12\], got \[16, 8, 12\]"):
        model.forward_with_aux(torch.randn(1, 1, 16, 8, 12))


@pytest.mark.parametrize("input_size", ["abc", 8, [8, 8], [-8, 8, 12], [0, 8, 12], [8.5, 8, 12], [True, 8, 12]])
def test_vae_input_size_of_the_wrong_form_is_refused(input_size: object) -> None:
    """A text, a single number or a size <= 0 failed inside torch (TypeError, RuntimeError): internal errors."""
    with pytest.raises(NetworkError, match=r"segresnet: option input_size must be 3 positive integers \(the training patch size\), got "):
        create_network("segresnet", TOPOLOGIES["3d"], 1, 2, vae=True, input_size=input_size)


def test_vae_input_size_other_than_the_training_patch_is_refused_before_training() -> None:
    """--set network_options.input_size=[...] unlike the patch built a VAE that refused the first training
    patch, after train had set up the fold; now the build (train's meta-device check) refuses it."""
    from autoseg.training.config import resolve_config
    from autoseg.training.model_setup import NetworkRequest, check_network_builds

    topology = TOPOLOGIES["3d"]
    plan = {"network": {"name": "segresnet", "topology": topology.to_dict()}, "patch_size": [16, 16, 16]}
    request = NetworkRequest("segresnet", plan, 1, 2, [16, 16, 16], 2)
    config = resolve_config("segresnet", ["network_options={vae: true, input_size: [8, 8, 12]}"])
    with pytest.raises(NetworkError) as err:
        check_network_builds(request, config)
    assert str(err.value) == (
        "segresnet: option input_size [8, 8, 12] differs from the training patch size [16, 16, 16]; the VAE's dense "
        "layers take the training patch only: leave --set network_options.input_size out or set it to the patch size"
    )
    same = resolve_config("segresnet", ["network_options={vae: true, input_size: [16, 16, 16]}"])
    check_network_builds(request, same)
    planned = Topology(**{**topology.to_dict(), "extra": {"patch_size": [16, 16, 16]}})
    assert create_network("segresnet", planned, 1, 2, vae=True, input_size=[16, 16, 16]).input_size == [16, 16, 16]


def test_vae_input_size_must_fit_the_total_stride() -> None:
    with pytest.raises(NetworkError, match="not divisible by the network's total stride"):
        create_network("segresnet", TOPOLOGIES["3d"], 1, 2, vae=True, input_size=[6, 8, 12])


def test_group_norm_falls_back_to_a_divisor_of_the_width() -> None:
    assert group_norm(32).num_groups == 8
    assert group_norm(12).num_groups == 6
    assert group_norm(5).num_groups == 5


def test_registry_declares_the_paper_design() -> None:
    spec = get_network_spec("segresnet")
    assert spec.constraints.fixed_features == (32, 64, 128, 256)
    assert spec.constraints.default_blocks_per_stage == (1, 2, 2, 4)
    assert "1810.11654" in spec.paper and not spec.adversarial


def test_plan_block_counts_override_the_paper_defaults() -> None:
    counts = {"blocks_per_stage": [1, 1, 3], "decoder_blocks_per_stage": [2, 1]}
    topology = Topology(**{**TOPOLOGIES["2d"].to_dict(), **counts})
    model = create_network("segresnet", topology, 1, 2)
    assert [len(stage) for stage in model.stages] == [1, 2, 4]  # + the stride conv from stage 1 on
    assert [len(up.blocks) for up in model.ups] == [2, 1]


@pytest.mark.parametrize("topo", ["2d", "3d_aniso"])
def test_torchscript_trace_reproduces_eager(topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    model = create_network("segresnet", topology, 2, 3, vae=True, input_size=list(shape))
    x = torch.randn(1, 2, *shape)
    traced = trace_for_inference(model, x)
    assert check_export(model, traced, x) <= 1e-5
