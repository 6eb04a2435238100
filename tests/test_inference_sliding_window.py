"""Sliding window: Gaussian map, tile positions, padding, batching, TTA and network averaging."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoseg.inference.predictor import SliceNetwork
from autoseg.inference.sliding_window import (
    blend_weights,
    default_batch_tiles,
    gaussian_1d,
    gaussian_importance_map,
    mirror_combinations,
    sliding_window_predict,
    sliding_window_slabs,
    tile_slices,
    tile_starts,
)
from autoseg.networks import create_network


def tiny_unet(dims: int, in_channels: int = 1, n_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    topology = {
        "spatial_dims": dims,
        "features_per_stage": [4, 8],
        "kernel_sizes": [[3] * dims, [3] * dims],
        "strides": [[1] * dims, [2] * dims],
    }
    return create_network("unet", topology, in_channels, n_classes, deep_supervision=False).eval()


class PositionNetwork(nn.Module):
    """Adds the voxel's index along ``axis`` inside the tile: not mirror-equivariant, counts its calls."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        size = x.shape[2 + self.axis]
        shape = [1] * x.ndim
        shape[2 + self.axis] = size
        return x + torch.arange(size, dtype=x.dtype).reshape(shape)


def test_gaussian_values_by_hand() -> None:
    g = gaussian_importance_map((5, 8))
    sigma0, sigma1 = 5 / 8, 8 / 8
    # Centre of axis 0 is voxel 2; axis 1 (even) has its centre between voxels 3 and 4.
    peak = math.exp(-(0.5**2) / (2 * sigma1**2))
    expected_2_0 = math.exp(-(3.5**2) / (2 * sigma1**2)) / peak
    expected_1_3 = math.exp(-(1**2) / (2 * sigma0**2))
    assert g.shape == (5, 8) and g.dtype == torch.float32
    assert g[2, 3].item() == pytest.approx(1.0) and g[2, 4].item() == pytest.approx(1.0)
    assert g[2, 0].item() == pytest.approx(expected_2_0, rel=1e-5)
    assert g[1, 3].item() == pytest.approx(expected_1_3, rel=1e-5)
    assert g[0, 0].item() == pytest.approx(math.exp(-4 / (2 * sigma0**2)) * expected_2_0, rel=1e-5)
    assert torch.equal(g, torch.flip(g, (0,))) and torch.equal(g, torch.flip(g, (1,)))


def test_gaussian_is_cached_per_size() -> None:
    assert gaussian_1d(6) is gaussian_1d(6)
    assert blend_weights(20, 8) is blend_weights(20, 8)


def test_blend_weights_share_each_voxel_to_one() -> None:
    weights = blend_weights(10, 4, 0.5)  # tiles start at 0, 2, 4, 6
    assert weights.shape == (4, 4)
    total = torch.zeros(10)
    for row, start in zip(weights, (0, 2, 4, 6)):
        total[start : start + 4] += row
    torch.testing.assert_close(total, torch.ones(10))
    g = gaussian_1d(4)
    # Voxel 0 is covered by the first tile only; voxel 2 by tiles 0 (its index 2) and 1 (index 0).
    assert weights[0, 0].item() == pytest.approx(1.0)
    assert weights[0, 2].item() == pytest.approx((g[2] / (g[2] + g[0])).item(), rel=1e-6)


def test_blending_equals_the_gaussian_weighted_mean_of_tiles() -> None:
    """The normalise-as-you-go result equals nnU-Net's: sum(g * tile) / sum(g) over all tiles."""
    net = tiny_unet(3)
    data = torch.randn(1, 13, 22, 17)
    patch = (8, 16, 16)
    fast = sliding_window_predict(net, data, patch, batch_tiles=3)
    g = gaussian_importance_map(patch)
    numerator = torch.zeros(3, 13, 22, 17, dtype=torch.float64)
    denominator = torch.zeros(13, 22, 17, dtype=torch.float64)
    with torch.no_grad():
        for s in tile_slices((13, 22, 17), patch):
            tile = torch.softmax(net(data[(slice(None), *s)][None]), 1)[0]
            numerator[(slice(None), *s)] += tile * g
            denominator[s] += g
    torch.testing.assert_close(fast, (numerator / denominator).float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("size", "patch", "expected"),
    [(10, 4, [0, 2, 4, 6]), (4, 4, [0]), (9, 4, [0, 2, 3, 5]), (5, 4, [0, 1]), (16, 8, [0, 4, 8])],
)
def test_tile_starts_by_hand(size: int, patch: int, expected: list[int]) -> None:
    assert tile_starts(size, patch, 0.5) == expected


@pytest.mark.parametrize("size", range(8, 40))
@pytest.mark.parametrize("step", [0.5, 0.25, 1.0])
def test_tiles_cover_the_image_with_at_most_step_gaps(size: int, step: float) -> None:
    patch = 8
    starts = tile_starts(size, patch, step)
    covered = set()
    for s in starts:
        covered.update(range(s, s + patch))
    assert covered == set(range(size))
    assert starts[0] == 0 and starts[-1] == size - patch
    assert all(0 < b - a <= math.ceil(patch * step) for a, b in zip(starts, starts[1:]))


def test_tile_slices_product_and_errors() -> None:
    slices = tile_slices((10, 4), (4, 4))
    assert len(slices) == 4 and slices[1] == (slice(2, 6), slice(0, 4))
    with pytest.raises(ValueError, match="smaller than the patch"):
        tile_starts(3, 4)


def test_mirror_combinations_and_batch_default() -> None:
    assert mirror_combinations((2, 0)) == [(), (0,), (2,), (0, 2)]
    assert len(mirror_combinations((0, 1, 2))) == 8
    assert default_batch_tiles((64, 64, 64), "cuda") == 4
    assert default_batch_tiles((128, 128, 128), "cuda") == 1
    assert default_batch_tiles((4, 4, 4), "cuda") == 16
    assert default_batch_tiles((40, 56, 40), "cpu") == 2  # CPU caches: small batches run faster per tile
    assert default_batch_tiles((64, 64, 64)) == 1


@pytest.mark.parametrize("shape", [(2, 7, 9, 11), (1, 16, 8, 8)])
def test_identity_network_reproduces_its_input(shape: tuple[int, ...]) -> None:
    data = torch.rand(shape)
    out = sliding_window_predict(nn.Identity(), data, (4, 4, 4), activation="none", mirror_axes=(0, 1, 2))
    assert out.shape == data.shape
    torch.testing.assert_close(out, data, rtol=0, atol=1e-6)


def test_pointwise_network_gives_softmax_of_its_logits() -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(2, 3, 1)
    data = torch.randn(2, 10, 12, 9)
    out = sliding_window_predict(conv, data, (4, 8, 4), batch_tiles=3)
    with torch.no_grad():
        expected = torch.softmax(conv(data[None]), 1)[0]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert torch.allclose(out.sum(0), torch.ones(10, 12, 9), atol=1e-5)


def test_image_smaller_than_the_patch_is_padded_and_cropped_back() -> None:
    data = torch.rand(1, 3, 5, 20)
    out = sliding_window_predict(nn.Identity(), data, (4, 8, 8), activation="none")
    assert out.shape == data.shape
    torch.testing.assert_close(out, data, rtol=0, atol=1e-6)


def test_two_dimensional_network_and_slice_adapter_agree() -> None:
    net = tiny_unet(2)
    data = torch.randn(1, 3, 20, 24)
    per_slice = torch.stack(
        [sliding_window_predict(net, data[:, z], (16, 16), mirror_axes=(0, 1)) for z in range(3)], dim=1
    )
    volume = sliding_window_predict(SliceNetwork(net), data, (1, 16, 16), mirror_axes=(1, 2))
    assert per_slice.shape == (3, 3, 20, 24)
    torch.testing.assert_close(volume, per_slice, rtol=0, atol=1e-5)


def test_tta_on_equals_off_for_a_mirror_equivariant_network() -> None:
    torch.manual_seed(1)
    conv = nn.Conv3d(1, 3, 1)
    data = torch.randn(1, 9, 10, 11)
    off = sliding_window_predict(conv, data, (4, 4, 4))
    on = sliding_window_predict(conv, data, (4, 4, 4), mirror_axes=(0, 1, 2))
    torch.testing.assert_close(on, off, rtol=0, atol=1e-6)


def test_tta_averages_all_mirrored_passes() -> None:
    data = torch.zeros(1, 8, 6, 6)
    net = PositionNetwork(axis=0)
    off = sliding_window_predict(net, data, (8, 4, 4), activation="none", batch_tiles=2)
    n_tiles = len(tile_slices((8, 6, 6), (8, 4, 4)))  # 1 x 2 x 2
    assert net.calls == math.ceil(n_tiles / 2)
    torch.testing.assert_close(off[0, :, 0, 0], torch.arange(8.0))  # the position, unmirrored
    net.calls = 0
    on = sliding_window_predict(net, data, (8, 4, 4), activation="none", batch_tiles=2, mirror_axes=(0, 1))
    assert net.calls == math.ceil(n_tiles / 2) * 4  # 2^2 passes per batch
    # Mirroring axis 0 averages index i with 7 - i: 3.5 everywhere.
    torch.testing.assert_close(on, torch.full_like(on, 3.5))


def test_several_networks_average_to_the_mean_of_single_predictions() -> None:
    nets = [tiny_unet(3, seed=s) for s in (0, 1, 2)]
    data = torch.randn(1, 12, 20, 18)
    single = [sliding_window_predict(n, data, (8, 16, 16), mirror_axes=(0,)) for n in nets]
    ensemble = sliding_window_predict(nets, data, (8, 16, 16), mirror_axes=(0,))
    torch.testing.assert_close(ensemble, torch.stack(single).mean(0), rtol=0, atol=1e-6)


def test_batching_and_float16_accumulator_do_not_change_the_result() -> None:
    net = tiny_unet(3)
    data = torch.randn(1, 12, 20, 18)
    one = sliding_window_predict(net, data, (8, 16, 16), batch_tiles=1)
    many = sliding_window_predict(net, data, (8, 16, 16), batch_tiles=5)
    half = sliding_window_predict(net, data, (8, 16, 16), accumulator_dtype=torch.float16)
    torch.testing.assert_close(many, one, rtol=0, atol=1e-5)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), one, rtol=0, atol=2e-3)


def test_bf16_autocast_stays_close_to_float32() -> None:
    net = tiny_unet(3)
    data = torch.randn(1, 8, 16, 16)
    exact = sliding_window_predict(net, data, (8, 16, 16))
    mixed = sliding_window_predict(net, data, (8, 16, 16), autocast_dtype=torch.bfloat16, channels_last=True)
    assert mixed.dtype == torch.float32
    assert (mixed - exact).abs().max().item() < 0.05


def test_argument_errors() -> None:
    data = torch.rand(1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"patch size \(4, 4\) does not match the data's 3 spatial axes"):
        sliding_window_predict(nn.Identity(), data, (4, 4))
    with pytest.raises(ValueError, match=r"mirror axes \(3,\) out of range for 3 spatial axes"):
        sliding_window_predict(nn.Identity(), data, (4, 4, 4), mirror_axes=(3,))
    with pytest.raises(ValueError, match="at least one network"):
        sliding_window_predict([], data, (4, 4, 4))


class CountingConv(nn.Module):
    """A fixed 1x1x1 convolution that counts the tiles it has seen."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv3d(1, 4, 1)
        self.tiles = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return self.conv(x)


def test_slabs_are_final_rows_in_order_and_come_before_the_last_tile() -> None:
    net = CountingConv().eval()
    data = torch.randn(1, 37, 20, 18)  # 37 rows: tile starts 0, 8, 16, 21 along axis 0 for a 16-row patch
    whole = sliding_window_predict(net, data, (16, 16, 16), batch_tiles=3)
    net.tiles = 0
    rows, seen_at, slabs = [], [], []
    for row, slab in sliding_window_slabs(net, data, (16, 16, 16), batch_tiles=3):
        rows.append((row, row + slab.shape[1]))
        seen_at.append(net.tiles)
        slabs.append(slab.clone())  # a view, valid until the generator resumes
        assert slab.dtype == torch.float32 and slab.shape[2:] == data.shape[2:]
    # Contiguous cover of the 37 rows, handed out while tiles remain (4 tiles per row of tiles).
    assert rows[0][0] == 0 and rows[-1][1] == 37
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert len(rows) >= 3 and seen_at[0] < 16
    torch.testing.assert_close(torch.cat(slabs, dim=1), whole)
    # Each voxel is the Gaussian-weighted mean of its tiles: for a 1x1x1 conv that is the conv itself.
    torch.testing.assert_close(whole, torch.softmax(net.conv(data[None]), dim=1)[0], atol=1e-5, rtol=1e-5)


def test_slabs_skip_the_padding_of_an_image_smaller_than_the_patch() -> None:
    net = CountingConv().eval()
    data = torch.randn(1, 5, 20, 7)  # padded to 16 rows and 16 columns
    slabs = [(row, slab.clone()) for row, slab in sliding_window_slabs(net, data, (16, 16, 16))]
    assert [row for row, _ in slabs] == [0] and slabs[0][1].shape == (4, 5, 20, 7)
    torch.testing.assert_close(slabs[0][1], torch.softmax(net.conv(data[None]), dim=1)[0], atol=1e-5, rtol=1e-5)


def test_mirrored_copies_fill_the_batch_of_an_image_with_few_tiles() -> None:
    data = torch.zeros(1, 8, 4, 4)  # one tile
    net = PositionNetwork(axis=0)
    grouped = sliding_window_predict(net, data, (8, 4, 4), activation="none", batch_tiles=4, mirror_axes=(0, 1))
    assert net.calls == 1  # 4 mirror passes in one forward pass of 4
    net.calls = 0
    one_by_one = sliding_window_predict(net, data, (8, 4, 4), activation="none", batch_tiles=1, mirror_axes=(0, 1))
    assert net.calls == 4
    torch.testing.assert_close(grouped, one_by_one)
    unet = tiny_unet(3)
    image = torch.randn(1, 8, 16, 16)
    torch.testing.assert_close(
        sliding_window_predict(unet, image, (8, 16, 16), batch_tiles=8, mirror_axes=(0, 1, 2)),
        sliding_window_predict(unet, image, (8, 16, 16), batch_tiles=1, mirror_axes=(0, 1, 2)),
        rtol=1e-5, atol=1e-6,
    )


def test_batches_stay_within_one_row_of_tiles_so_the_ring_holds_one_patch_depth() -> None:
    from autoseg.inference.tiling import batches as _batches, buffer_rows as _buffer_rows

    slices = tile_slices((40, 50, 50), (16, 16, 16))  # 4 rows of tiles, 6 x 6 tiles each
    batches = _batches(slices, 3)
    assert all(len({slices[i][0].start for i in b}) == 1 for b in batches)
    assert [len(b) for b in batches[:2]] == [3, 3] and len(batches) == 4 * 12
    assert _buffer_rows(slices, batches) == 16
    # One-row patches (2D models) may span rows: a batch of 5 single-tile rows needs 5 rows.
    flat = tile_slices((12, 16, 16), (1, 16, 16))
    assert _buffer_rows(flat, _batches(flat, 5)) == 5


def test_one_voxel_patch_axis_visits_each_slice_once() -> None:
    assert tile_starts(12, 1) == list(range(12))
    assert tile_starts(5, 2) == [0, 1, 2, 3]


def test_importing_the_sliding_window_loads_no_image_io_and_the_package_names_resolve() -> None:
    import subprocess
    import sys

    code = (
        "import sys, autoseg.inference.sliding_window\n"
        "assert not {'SimpleITK', 'blosc2', 'scipy'} & {m.split('.')[0] for m in sys.modules}, 'eager import'\n"
        "import autoseg.inference as i\n"
        "assert i.predict_folder.__module__ == 'autoseg.inference.batch'\n"
        "assert i.sliding_window_predict is autoseg.inference.sliding_window.sliding_window_predict\n"
        "try:\n    i.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "has no attribute 'no_such_name'" in done.stdout
