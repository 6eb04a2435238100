"""Shifted-window attention: partition round trips, the shift mask against a brute-force rule, the
relative position index by hand, attention equal to its textbook formula."""

from __future__ import annotations

import math

import pytest
import torch

from autoseg.networks.attention import (
    TransformerBlock,
    WindowAttention,
    channels_to_space,
    relative_position_index,
    shift_mask,
    space_to_channels,
    window_partition,
    window_reverse,
)

torch.set_num_threads(1)


@pytest.mark.parametrize(("spatial", "window"), [((8, 12), (4, 3)), ((4, 6, 8), (1, 3, 4))])
def test_window_partition_round_trip_and_first_window(spatial, window) -> None:
    x = torch.randn(2, *spatial, 5)
    windows = window_partition(x, window)
    n_windows = math.prod(s // w for s, w in zip(spatial, window))
    assert windows.shape == (2 * n_windows, math.prod(window), 5)
    first = x[(0, *(slice(0, w) for w in window))].reshape(-1, 5)
    torch.testing.assert_close(windows[0], first)
    torch.testing.assert_close(window_reverse(windows, window, 2, spatial), x)


def test_space_to_channels_round_trip() -> None:
    x = torch.randn(2, 4, 6, 8, 3)
    merged = space_to_channels(x, [1, 2, 4])
    assert merged.shape == (2, 4, 3, 2, 24)
    torch.testing.assert_close(merged[0, 0, 0, 0, :3], x[0, 0, 0, 0])
    torch.testing.assert_close(channels_to_space(merged, [1, 2, 4]), x)


@pytest.mark.parametrize(("spatial", "window", "shift"), [((8, 8), (4, 4), (2, 2)), ((6, 4, 8), (3, 2, 4), (1, 0, 2))])
def test_shift_mask_allows_exactly_the_pairs_that_were_neighbours_before_the_roll(spatial, window, shift) -> None:
    mask = shift_mask(spatial, window, shift, torch.device("cpu"))
    # Brute force: after rolling by -shift, a token at rolled position r came across the border
    # (wrapped) iff r >= size - shift; two tokens may attend iff they agree on that on every axis.
    grids = torch.meshgrid(*(torch.arange(s) for s in spatial), indexing="ij")
    wrapped = torch.stack([g >= s - h if h else torch.zeros_like(g, dtype=torch.bool) for g, s, h in zip(grids, spatial, shift)], -1)
    per_window = window_partition(wrapped[None].float(), window)  # (n_windows, N, dims)
    expected = (per_window[:, :, None, :] == per_window[:, None, :, :]).all(-1)
    assert torch.equal(mask, expected)
    assert not mask.all()  # the last windows do hold tokens from both sides


def test_shifted_block_never_attends_across_the_image_border() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, [4, 4], shifted=True).eval()
    x = torch.randn(1, 8, 8, 8)
    bumped = x.clone()
    bumped[0, 0, 0] += 10.0  # original (0, 0) shares a shifted window with (7, 7) and (1, 1)
    with torch.no_grad():
        change = (block(bumped) - block(x)).abs().sum(-1)[0]
    assert change[7, 7] == 0  # other side of the border: masked
    assert change[1, 1] > 0  # same side: attends
    assert change[3, 3] == 0  # another window


def test_relative_position_index_by_hand() -> None:
    # (dy + 1) * 3 + (dx + 1) for query - key offsets in a 2x2 window
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index([2, 2]), expected)
    assert relative_position_index([3, 1, 2]).max() == 5 * 1 * 3 - 1


def test_window_attention_is_softmax_qk_v_plus_bias() -> None:
    torch.manual_seed(0)
    attention = WindowAttention(8, 2, [2, 2]).eval()
    x = torch.randn(1, 3, 4, 8)
    q, k, v = attention.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.reshape(1, 3, 4, 2, 4).transpose(2, 3)  # noqa: E731
    bias = attention.bias_table[attention.bias_index].permute(2, 0, 1)
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0 + bias, dim=-1)
    expected = attention.proj((weights @ split(v)).transpose(2, 3).reshape(1, 3, 4, 8))
    torch.testing.assert_close(attention(x), expected)
