"""Per-axis topology (pooling, kernels, features per stage) for any registered family.

The rules are reference §1.3's; each family's ``TopologyConstraints`` (registry.py) bounds them:
stage count, prescribed features, kernel size, blocks per stage, isotropic-only designs, a patch
embedding stem and attention windows (which the patch sizes must tile: ``Topology.size_multiple``).
"""

from __future__ import annotations

import itertools
import math
import operator
from typing import Sequence

from autoseg.networks.registry import TopologyConstraints
from autoseg.networks.topology import Topology
from autoseg.planning import constants as C


def _full_kernel_axes(spacing: Sequence[float]) -> list[bool]:
    """Axes whose spacing is within ``POOLING_SPACING_RATIO`` of the finest one."""
    finest = min(spacing)
    return [s / finest < C.POOLING_SPACING_RATIO for s in spacing]


def _stage_kernel(full: Sequence[bool], kernel_size: int) -> list[int]:
    return [kernel_size if f else 1 for f in full]


def features_per_stage(
    n_stages: int, constraints: TopologyConstraints, dims: int, width: int = C.BASE_FEATURES
) -> list[int]:
    """The family's prescribed features, or ``width`` doubling per stage up to the cap.

    The cap (320 in 3D, 512 in 2D, reference §1.3) scales with ``width`` so that a narrower network
    (compute budget) stays narrow at depth too.
    """
    # A one-stage topology (a patch too small to pool) is no network's and the planner drops it; a
    # family's prescribed widths need not describe it (FC-DenseNet's take 2 stages or more).
    if constraints.stage_features is not None and n_stages >= 2:
        return list(constraints.stage_features(n_stages))
    if constraints.fixed_features is not None:
        return list(constraints.fixed_features[:n_stages])
    cap = constraints.max_features or C.MAX_FEATURES[dims] * width // C.BASE_FEATURES
    if constraints.stem_stride is not None:  # stage 0 is the embedding's full-resolution output
        return [width] + [min(width * 2**i, cap) for i in range(n_stages - 1)]
    return [min(width * 2**i, cap) for i in range(n_stages)]


def expand_blocks(default: Sequence[int] | None, n_stages: int) -> list[int] | None:
    """The family's blocks per stage written out for ``n_stages`` (the last value repeated)."""
    if default is None:
        return None
    return [default[min(i, len(default) - 1)] for i in range(n_stages)]


def _pooled_axes(size: Sequence[float], spacing: Sequence[float], big_enough: Sequence[bool]) -> list[bool]:
    """nnU-Net v2's choice: among the axes large enough, those within 2x of their finest spacing;
    a single such axis only while it has >= ``SINGLE_AXIS_POOL_MIN_SIZE`` voxels."""
    candidates = [s for s, b in zip(spacing, big_enough) if b]
    if not candidates:
        return [False] * len(size)
    finest = min(candidates)
    pool = [b and s / finest < C.POOLING_SPACING_RATIO for s, b in zip(spacing, big_enough)]
    if sum(pool) == 1 and size[pool.index(True)] < C.SINGLE_AXIS_POOL_MIN_SIZE:
        return [False] * len(size)
    return pool


def plan_topology(
    patch_size: Sequence[float],
    spacing: Sequence[float],
    constraints: TopologyConstraints,
    width: int = C.BASE_FEATURES,
) -> Topology:
    """Pool an axis while its feature map stays >= 4 voxels and its spacing is within 2x of the
    finest among the axes still large enough; its kernel is 1 until its spacing is within 2x of the
    finest overall (reference §1.3). As nnU-Net v2 does, odd sizes halve rounding up, and a lone
    pooled axis needs >= 3 x 4 voxels. Isotropic-only families pool all axes together or none.
    """
    dims = len(patch_size)
    size = [float(s) for s in patch_size]
    current = [float(s) for s in spacing]
    full = _full_kernel_axes(current)
    kernels = [_stage_kernel(full, constraints.kernel_size)]
    strides = [[1] * dims]
    max_stages = constraints.max_stages or math.inf
    if constraints.fixed_features is not None:
        max_stages = min(max_stages, len(constraints.fixed_features))
    while len(strides) < max_stages:
        factor = constraints.stem_stride if constraints.stem_stride and len(strides) == 1 else C.POOLING_STRIDE
        big_enough = [s >= factor * C.MIN_FEATURE_MAP_SIZE for s in size]
        if constraints.isotropic_only:
            pool = [all(big_enough)] * dims
        else:
            pool = _pooled_axes(size, current, big_enough)
        if not any(pool):
            break
        stride = [factor if p else 1 for p in pool]
        size = [float(math.ceil(s / st)) for s, st in zip(size, stride)]
        current = [c * st for c, st in zip(current, stride)]
        # once an axis has the full kernel it keeps it
        full = [f or g for f, g in zip(full, _full_kernel_axes(current))]
        strides.append(stride)
        kernels.append(_stage_kernel(full, constraints.kernel_size))
    if constraints.isotropic_only:
        kernels = [[constraints.kernel_size] * dims for _ in kernels]
    n = len(strides)
    return Topology(
        spatial_dims=dims,
        features_per_stage=features_per_stage(n, constraints, dims, width),
        kernel_sizes=kernels,
        strides=strides,
        blocks_per_stage=expand_blocks(constraints.default_blocks_per_stage, n),
        window_sizes=attention_windows(patch_size, strides, constraints),
    )


def attention_windows(
    patch_size: Sequence[float], strides: Sequence[Sequence[int]], constraints: TopologyConstraints
) -> list[list[int]] | None:
    """One window per axis for every windowed stage: ``window_size``, or the deepest windowed
    stage's whole extent where that is smaller (so that stage holds one window, as Swin does at
    7x7). One size for all stages keeps the patch multiple at ``stride x window`` of that stage.
    A window that would round the patch up past ``WINDOW_ROUNDING_MAX_RATIO`` is shrunk
    (``_fitting_window``): Swin-UNet's 7 planned a 48x112 patch for 48x64 images."""
    if constraints.window_size is None:
        return None
    dims, n = len(patch_size), len(strides)
    deepest = n - 2 if constraints.global_last_stage else n - 1
    if deepest < 1:
        return [[1] * dims for _ in range(n)]
    window = []
    for axis, size in enumerate(patch_size):
        cumulative = list(itertools.accumulate((s[axis] for s in strides), operator.mul))
        largest = max(1, min(constraints.window_size, int(size // cumulative[deepest])))
        window.append(_fitting_window(float(size), cumulative[1: deepest + 1], cumulative[-1], largest))
    return [window if 1 <= i <= deepest else [1] * dims for i in range(n)]


def _fitting_window(size: float, windowed: Sequence[int], total_stride: int, largest: int) -> int:
    """The window of one axis: ``largest`` while the patch it rounds ``size`` up to stays within
    ``WINDOW_ROUNDING_MAX_RATIO``, else the window from half of it up that rounds least (the larger on a tie).
    ``windowed``: the cumulative strides of the windowed stages."""
    def rounded(window: int) -> int:
        multiple = math.lcm(total_stride, *(c * window for c in windowed))
        return max(multiple, math.ceil(size / multiple) * multiple)

    if rounded(largest) <= size * C.WINDOW_ROUNDING_MAX_RATIO:
        return largest
    return min(range(math.ceil(largest / 2), largest + 1), key=lambda w: (rounded(w), -w))


def divisible_patch(patch_size: Sequence[float], topology: Topology, min_slices: int = 1) -> list[int]:
    """Round every axis up to a multiple of the topology's size multiple, and to at least ``min_slices``
    voxels (the family's ``TopologyConstraints.min_slices``: ConResNet refuses a 1-slice patch)."""
    return [max(t, int(math.ceil(max(p, min_slices) / t)) * t) for p, t in zip(patch_size, topology.size_multiple)]


def shrink_patch(patch_size: Sequence[int], median_shape: Sequence[float], topology: Topology,
                 min_slices: int = 1) -> list[int] | None:
    """One step down: the axis with the largest patch / median-shape ratio loses one divisibility
    step (reference §1.3), never below ``min_slices`` voxels. ``None`` when no axis can shrink any more."""
    steps = topology.size_multiple
    candidates = [a for a, (p, s) in enumerate(zip(patch_size, steps)) if p - s >= max(s, min_slices)]
    if not candidates:
        return None
    axis = max(candidates, key=lambda a: (patch_size[a] / median_shape[a], -a))
    smaller = list(patch_size)
    smaller[axis] -= steps[axis]
    return smaller
