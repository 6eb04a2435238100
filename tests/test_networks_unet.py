"""Plain U-Net and residual-encoder U-Net: shapes, gradients, parameter counts, export."""

from __future__ import annotations

import pytest
import torch

from autoseg.errors import ModelFileError, NetworkError
from autoseg.networks import Topology, create_network, get_network_spec
from autoseg.networks.export import check_export, export_torchscript, load_torchscript, trace_for_inference
from autoseg.networks.unet import ResEncUNet, UNet

torch.set_num_threads(1)

TOPOLOGIES = {
    "2d": Topology(2, [4, 8, 16], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]),
    "3d": Topology(3, [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
    # Anisotropic: no pooling and 1x3x3 kernels along the first (slice) axis until stage 2.
    "3d_aniso": Topology(3, [4, 8, 16], [[1, 3, 3], [1, 3, 3], [3, 3, 3]], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
}
INPUT_SHAPES = {"2d": (16, 12), "3d": (8, 8, 12), "3d_aniso": (4, 8, 12)}
NETWORKS = ["unet", "resenc"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("topo", sorted(TOPOLOGIES))
def test_output_shapes_train_and_eval(network: str, topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    model = create_network(network, topology, in_channels=2, n_classes=3)
    x = torch.randn(2, 2, *shape)
    outputs = model.train()(x)
    # Decoder stages at stages 0 and 1, full resolution first; stage 1 is downsampled by strides[1].
    assert [tuple(o.shape) for o in outputs] == [
        (2, 3, *shape),
        (2, 3, *[s // d for s, d in zip(shape, topology.strides[1])]),
    ]
    eval_out = model.eval()(x)
    assert isinstance(eval_out, torch.Tensor) and eval_out.shape == (2, 3, *shape)
    single = create_network(network, topology, 2, 3, deep_supervision=False).train()(x)
    assert isinstance(single, list) and [tuple(o.shape) for o in single] == [(2, 3, *shape)]


def test_anisotropic_kernels_and_strides_reach_the_convs() -> None:
    model = create_network("unet", TOPOLOGIES["3d_aniso"], 1, 2)
    first_conv = model.encoder.stages[1][0][0]
    assert list(first_conv.kernel_size) == [1, 3, 3] and list(first_conv.stride) == [1, 2, 2]
    deepest_up = model.decoder.ups[0]
    assert list(deepest_up.kernel_size) == [2, 2, 2] and list(deepest_up.stride) == [2, 2, 2]


def _assert_all_gradients_finite(model: torch.nn.Module) -> None:
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} takes no part in the forward pass"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("topo", ["2d", "3d_aniso"])
def test_every_parameter_gets_a_finite_gradient(network: str, topo: str) -> None:
    topology, shape = TOPOLOGIES[topo], INPUT_SHAPES[topo]
    x = torch.randn(2, 1, *shape)
    deep = create_network(network, topology, 1, 2).train()
    sum(o.square().mean() for o in deep(x)).backward()
    _assert_all_gradients_finite(deep)
    plain = create_network(network, topology, 1, 2, deep_supervision=False).eval()
    plain(x).square().mean().backward()
    _assert_all_gradients_finite(plain)


def _conv(c_in: int, c_out: int, kernel_volume: int) -> int:
    return c_in * c_out * kernel_volume + c_out  # weights + bias


def _conv_norm(c_in: int, c_out: int, kernel_volume: int = 27) -> int:
    return _conv(c_in, c_out, kernel_volume) + 2 * c_out  # + InstanceNorm affine scale and shift


def test_nnunet_3d_default_parameter_count_matches_hand_derivation() -> None:
    # nnU-Net's 3D default: 6 stages, 32..320 features, 3x3x3 kernels, stride 2, 1 input, 3 classes.
    features = [32, 64, 128, 256, 320, 320]
    encoder = sum(_conv_norm(c_in, f) + _conv_norm(f, f) for c_in, f in zip([1] + features[:-1], features))
    decoder = sum(
        _conv(features[i + 1], features[i], 8)  # transposed conv, kernel = stride = 2
        + _conv_norm(2 * features[i], features[i])
        + _conv_norm(features[i], features[i])
        + _conv(features[i], 3, 1)  # deep supervision head
        for i in range(5)
    )
    topology = Topology(3, features, [[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 5)
    model = create_network("unet", topology, 1, 3)
    assert n_params(model) == encoder + decoder == 31_196_399
    # Without deep supervision the four low-resolution heads are not built.
    no_ds = create_network("unet", topology, 1, 3, deep_supervision=False)
    assert n_params(model) - n_params(no_ds) == sum(_conv(f, 3, 1) for f in features[1:5])


def test_resenc_parameter_count_matches_hand_derivation() -> None:
    # 2D, 3 stages of 8/16/32 features, default (1, 3, 4) residual blocks, 1 decoder conv per stage.
    f, k = [8, 16, 32], 9

    def block(c_in: int, c_out: int) -> int:
        shortcut = _conv_norm(c_in, c_out, 1) if c_in != c_out else 0
        return _conv_norm(c_in, c_out, k) + _conv_norm(c_out, c_out, k) + shortcut

    stem = _conv_norm(1, f[0], k)
    encoder = block(f[0], f[0]) + block(f[0], f[1]) + 2 * block(f[1], f[1]) + block(f[1], f[2]) + 3 * block(f[2], f[2])
    decoder = sum(_conv(f[i + 1], f[i], 4) + _conv_norm(2 * f[i], f[i], k) + _conv(f[i], 2, 1) for i in range(2))
    model = create_network("resenc", Topology(2, f, [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]]), 1, 2)
    assert n_params(model) == stem + encoder + decoder
    assert [len(stage) for stage in model.encoder.stages] == [1, 3, 4]


def test_plan_block_counts_override_family_defaults() -> None:
    topology = Topology(
        2, [4, 8], [[3, 3]] * 2, [[1, 1], [2, 2]], blocks_per_stage=[1, 3], decoder_blocks_per_stage=[4]
    )
    model = create_network("unet", topology, 1, 2)
    assert [len(s) for s in model.encoder.stages] == [1, 3]
    assert len(model.decoder.stages[0]) == 4


def test_registry_entries_declare_paper_and_defaults() -> None:
    assert get_network_spec("unet").constraints.default_blocks_per_stage == (2,)
    assert get_network_spec("resenc").constraints.default_blocks_per_stage == (1, 3, 4, 6, 6, 6)
    assert "nnU-Net" in get_network_spec("unet").paper
    assert isinstance(create_network("resenc", TOPOLOGIES["2d"].to_dict(), 1, 2), ResEncUNet)
    assert type(create_network("unet", TOPOLOGIES["2d"], 1, 2)) is UNet


def test_single_stage_topology_is_refused() -> None:
    with pytest.raises(NetworkError, match=r"network 'UNet' needs at least 2 resolution stages, the topology has 1"):
        create_network("unet", Topology(2, [4], [[3, 3]], [[1, 1]]), 1, 2)




def test_even_kernel_in_a_hand_edited_plan_is_refused() -> None:
    """An even kernel made the skips mismatch in the first forward pass, an internal error in training."""
    with pytest.raises(NetworkError, match=r"topology: kernel_sizes entry \[2, 2, 2\] must hold odd sizes"):
        Topology.from_dict({"spatial_dims": 3, "features_per_stage": [4, 8], "kernel_sizes": [[3, 3, 3], [2, 2, 2]],
                            "strides": [[1, 1, 1], [2, 2, 2]]})


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"features_per_stage": [0, 8]}, r"topology: features_per_stage \[0, 8\] must hold positive integers"),
        ({"features_per_stage": [4, -8]}, r"topology: features_per_stage \[4, -8\] must hold positive integers"),
        ({"blocks_per_stage": ["x", 2]}, r"topology in the plan is malformed .*'x'.*; re-run `autoseg plan`"),
        ({"decoder_blocks_per_stage": [[1]]}, r"topology in the plan is malformed"),
        # int() truncated these to another network than the plan's (32.5 -> 32), or overflowed uncaught.
        ({"features_per_stage": [4, 8.5]}, r"topology in the plan is malformed .*8\.5 is not a whole number"),
        ({"kernel_sizes": [[3, 3, 3], [3, 3.5, 3]]}, r"malformed .*3\.5 is not a whole number"),
        ({"blocks_per_stage": [2, 1.5]}, r"malformed .*1\.5 is not a whole number"),
        ({"strides": [[1, 1, 1], [2, float("inf"), 2]]}, r"topology in the plan is malformed .*OverflowError"),
    ],
)
def test_bad_widths_and_counts_in_a_hand_edited_plan_are_refused(edit: dict, message: str) -> None:
    """Widths <= 0 and non-numeric block counts reached torch or the builder as internal errors."""
    plan = {"spatial_dims": 3, "features_per_stage": [4, 8], "kernel_sizes": [[3, 3, 3]] * 2, "strides": [[1, 1, 1], [2, 2, 2]]}
    with pytest.raises(NetworkError, match=message):
        create_network("unet", Topology.from_dict({**plan, **edit}), 1, 2)


@pytest.mark.parametrize("network", NETWORKS)
def test_torchscript_export_reproduces_eager(network: str, tmp_path) -> None:
    topology, shape = TOPOLOGIES["3d_aniso"], INPUT_SHAPES["3d_aniso"]
    model = create_network(network, topology, 1, 3).train()
    path = export_torchscript(model, torch.randn(1, 1, *shape), tmp_path / "model.pt")
    assert model.training, "export must restore the training flag"
    loaded = load_torchscript(path)
    # A fresh input, and one of another size divisible by the total stride (1, 4, 4).
    for size in (shape, (2, 12, 8)):
        x = torch.randn(1, 1, *size)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model.eval()(x), atol=1e-5, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_check_export_rejects_a_different_model() -> None:
    topology, shape = TOPOLOGIES["2d"], INPUT_SHAPES["2d"]
    model, other = create_network("unet", topology, 1, 2), create_network("unet", topology, 1, 2)
    x = torch.randn(1, 1, *shape)
    assert check_export(model, trace_for_inference(model, x), x) <= 1e-5
    with pytest.raises(NetworkError, match=r"exported model differs from eager by .* \(> 1e-05\)"):
        check_export(model, other.eval(), x)


def test_loading_a_broken_export_names_the_file(tmp_path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"broken\.pt: not a readable TorchScript model"):
        load_torchscript(path)
