"""The largest patch and topology that fit the memory budget (reference §1.3's shrinking order), and the
narrower or smaller (patch, topology) pairs a compute budget may try below it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np

from autoseg.errors import PlanError
from autoseg.networks import Topology
from autoseg.planning import constants as C
from autoseg.planning import rules
from autoseg.planning.memory import MemoryModel
from autoseg.planning.topology import divisible_patch, features_per_stage, plan_topology, shrink_patch
from autoseg.networks.registry import TopologyConstraints
from autoseg.planning.context import PlanningContext


def _patch_candidates(
    start: Sequence[float], spacing: Sequence[float], median_shape: Sequence[float], ctx: PlanningContext, width: int
) -> Iterator[tuple[list[int], Topology]]:
    """Successively smaller (patch, topology) pairs, strictly decreasing in voxels."""
    raw: Sequence[float] = list(start)
    previous = float("inf")
    while True:
        topology = plan_topology(raw, spacing, ctx.constraints, width)
        if topology.n_stages < 2:
            return
        patch = divisible_patch(raw, topology, ctx.constraints.min_slices)
        if np.prod(patch) < previous:
            previous = float(np.prod(patch))
            yield patch, topology
        smaller = shrink_patch(patch, median_shape, topology, ctx.constraints.min_slices)
        if smaller is None:
            return
        raw = smaller


def _median_extent(median_shape: Sequence[float]) -> str:
    """The median image's size along the planned axes; a 2D configuration's is per slice (the refusal of
    3x3x3 images read "the median image, 3x3 voxels")."""
    per_slice = " per slice" if len(median_shape) == 2 else ""
    return f"the median image, {'x'.join(f'{s:g}' for s in median_shape)} voxels{per_slice}"


def fit_memory(ctx: PlanningContext, spacing: Sequence[float], median_shape: Sequence[float]
               ) -> tuple[list[int], Topology, MemoryModel]:
    start = rules.initial_patch_size(spacing, median_shape)
    candidates = 0
    for patch, topology in _patch_candidates(start, spacing, median_shape, ctx, C.BASE_FEATURES):
        candidates += 1
        model = ctx.memory(topology)
        if model.predict(patch, C.MIN_BATCH_SIZE) <= ctx.memory_budget_bytes:
            return patch, topology, model
    if not candidates:  # not memory: even the median image's own size is too small to downsample once
        raise PlanError(
            f"{_median_extent(median_shape)} at the planned spacing, is too small "
            f"for network {ctx.network!r} to downsample once ({_downsampling_need(ctx.constraints)}); pad the images or "
            "resample them finer"
        )
    raise PlanError(
        f"network {ctx.network!r} does not fit in {ctx.memory_budget_bytes / 2**30:.2f} GiB usable memory even "
        "with its smallest patch at batch 2; give more memory (--gpu-memory) or choose a smaller network"
    )


def _downsampling_need(constraints: TopologyConstraints) -> str:
    """What the first downsampling of ``plan_topology`` needs of an image: a patch embedding's stride
    (Swin-UNet, nnFormer: 4) needs more than a pooling step, whose 8 voxels Swin-UNet's 12x12 images had."""
    if constraints.stem_stride is None and not constraints.isotropic_only:
        return (f"a pooling step needs {C.POOLING_STRIDE * C.MIN_FEATURE_MAP_SIZE} voxels along two axes, "
                f"{C.SINGLE_AXIS_POOL_MIN_SIZE} along one")
    factor = constraints.stem_stride or C.POOLING_STRIDE
    step = f"its stride-{factor} patch embedding" if constraints.stem_stride else "a pooling step"
    return f"{step} needs {factor * C.MIN_FEATURE_MAP_SIZE} voxels along {'every' if constraints.isotropic_only else 'an'} axis"


def budget_candidates(ctx: PlanningContext, fitted: list[int], fitted_topology: Topology, spacing: Sequence[float],
                      median_shape: Sequence[float]) -> Iterator[tuple[list[int], Topology, int]]:
    """Narrower networks at the memory-fitted patch first, then smaller patches at the narrowest.

    Context (patch) is kept longest: reference §4's narrow 16-128 plan at nnU-Net's patch beat the
    wide default plan on a CPU by 0.31 Dice in the same 26 minutes.
    """
    widths = (C.BASE_FEATURES,) if ctx.constraints.fixed_width else C.BUDGET_WIDTHS
    for width in widths[:-1]:
        features = features_per_stage(fitted_topology.n_stages, ctx.constraints, fitted_topology.spatial_dims, width)
        yield fitted, replace(fitted_topology, features_per_stage=features), width
    for patch, topology in _patch_candidates(fitted, spacing, median_shape, ctx, widths[-1]):
        yield patch, topology, widths[-1]
