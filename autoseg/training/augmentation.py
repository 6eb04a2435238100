"""The training augmentation pipeline of reference.md §1.5, built from batchgenerators transforms.

Probabilities and ranges come from the ``augmentation`` section of the training config. Patches that
are very anisotropic (nnU-Net's "dummy 2D" case) are augmented slice by slice in-plane: rotation,
scaling and low-resolution simulation then never mix the coarse axis. Three rules that depend on the
run (the 2D rotation range, the axes mirrored and the channels masked after the intensity transforms)
are ``auto`` in the config and become numbers in :func:`resolve_augmentation`, so the resolved config
shows what was used.
Besides batchgenerators' transforms, a few small ones live here: per-axis mirroring with a configurable
probability, the nonzero-mask re-zeroing, and the cascade's corruption of the previous stage's masks
(binary morphology, removal of a component).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.utility_transforms import RemoveLabelTransform
from scipy import ndimage

from autoseg.errors import TrainingError
from autoseg.training.spatial_transform import SpatialTransform

# The store marks voxels outside the nonzero mask with -1; the loss sees them as background.
OUTSIDE_MASK_LABEL = -1
AUTO = "auto"
# nnU-Net v2 (configure_rotation_dummyDA_mirroring_and_inital_patch_size): a 2D patch whose longest side
# exceeds 1.5 x its shortest rotates by at most 15 deg, any other 2D patch (and the in-plane rotation of
# an anisotropic 3D patch) by up to 180 deg.
ELONGATED_2D_RATIO = 1.5
ELONGATED_2D_DEGREES = 15.0
FULL_2D_DEGREES = 180.0
# A half turn is both in-plane flips at once: where the plan leaves an in-plane axis out of mirroring
# (its labels lie in a fixed order along it, planning/mirroring.py), the in-plane rotation stays within
# nnU-Net's range for 3D rotations, which never reverses an order lying within 60 deg of that axis.
ORDERED_2D_DEGREES = 30.0
# Angles probed when computing how large a region a rotated + scaled patch can reach.
_ANGLE_SAMPLES = 9


def is_anisotropic_patch(patch_size: Sequence[int], threshold: float) -> bool:
    """nnU-Net's "dummy 2D" rule: a 3D patch whose in-plane extent exceeds ``threshold`` x its first axis."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > threshold


def spatial_extents(patch_size: Sequence[int], aug: Mapping[str, Any]) -> Sequence[int]:
    """The patch's extents the spatial transform and the low-resolution simulation act on: a dummy-2D patch's
    in-plane ones (its first axis is left as it is), else all of them."""
    return patch_size[1:] if is_anisotropic_patch(patch_size, aug["anisotropy_threshold"]) else patch_size


def auto_degrees_2d(patch_size: Sequence[int], plan_mirror_axes: Sequence[int] | None = None) -> float:
    """The 2D and in-plane rotation range for this patch: nnU-Net v2's 15 deg for elongated 2D patches,
    else 180, at most 30 where ``plan_mirror_axes`` leaves out an in-plane axis (the last two)."""
    if len(patch_size) == 2 and max(patch_size) / min(patch_size) > ELONGATED_2D_RATIO:
        degrees = ELONGATED_2D_DEGREES
    else:
        degrees = FULL_2D_DEGREES
    in_plane = (len(patch_size) - 2, len(patch_size) - 1)
    if plan_mirror_axes is not None and any(axis not in plan_mirror_axes for axis in in_plane):
        degrees = min(degrees, ORDERED_2D_DEGREES)
    return degrees


def resolve_augmentation(
    aug: Mapping[str, Any], patch_size: Sequence[int], normalization: Sequence[Mapping[str, Any]],
    plan_mirror_axes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """``aug`` with its ``auto`` values replaced by what they mean for this patch and plan.

    ``rotation.degrees_2d``: :func:`auto_degrees_2d` of the patch and the plan's ``mirror_axes``.
    ``mirror.axes``: the plan's ``mirror_axes`` (planning/mirroring.py; every axis for a plan without
    them). ``mask_channels``: the channels the plan normalizes inside the nonzero mask (``use_mask``),
    which nnU-Net v2 sets back to 0 outside that mask after the intensity transforms (its
    MaskImageTransform).
    """
    resolved = copy.deepcopy(dict(aug))
    if resolved["rotation"]["degrees_2d"] == AUTO:
        resolved["rotation"]["degrees_2d"] = auto_degrees_2d(patch_size, plan_mirror_axes)
    if resolved["mirror"]["axes"] == AUTO:
        every = range(len(patch_size))
        resolved["mirror"]["axes"] = [int(a) for a in (every if plan_mirror_axes is None else plan_mirror_axes)]
    axes = resolved["mirror"]["axes"]
    if len(set(axes)) != len(axes) or any(not isinstance(a, int) or not 0 <= a < len(patch_size) for a in axes):
        raise TrainingError(
            f"augmentation.mirror.axes={axes}: give distinct spatial axes of the {len(patch_size)}D patch, from 0 "
            f"to {len(patch_size) - 1}, [] (no mirroring) or auto (the plan's mirror_axes)"
        )
    _check_low_resolution_zoom(resolved, patch_size)
    if resolved["mask_channels"] == AUTO:
        resolved["mask_channels"] = [c for c, scheme in enumerate(normalization) if scheme.get("use_mask")]
    bad = [c for c in resolved["mask_channels"] if not isinstance(c, int) or not 0 <= c < len(normalization)]
    if bad:
        raise TrainingError(
            f"augmentation.mask_channels={resolved['mask_channels']}: channels {bad} do not exist (the plan has "
            f"{len(normalization)}); give channel indices from 0 to {len(normalization) - 1}, [] or auto"
        )
    return resolved


def _check_low_resolution_zoom(aug: Mapping[str, Any], patch_size: Sequence[int]) -> None:
    """Refuse a lowest zoom that leaves an axis the low-resolution simulation shrinks without a voxel: batchgenerators
    rounds ``extent x zoom`` to 0 there and its resize stopped training with an internal ValueError (NaN to integer)."""
    low = aug["low_resolution"]["zoom"][0]
    shortest = min(spatial_extents(patch_size, aug))
    if np.round(shortest * low) < 1:
        raise TrainingError(
            f"augmentation.low_resolution.zoom={list(aug['low_resolution']['zoom'])}: a zoom of {low:g} leaves the "
            f"patch's {shortest}-voxel axis no voxel; give a lowest zoom above {0.5 / shortest:g}"
        )


def rotation_ranges(patch_size: Sequence[int], aug: Mapping[str, Any]) -> list[float]:
    """Max rotation (radians) about each axis the spatial transform uses (x, y, z in its naming)."""
    if len(patch_size) == 2 or is_anisotropic_patch(patch_size, aug["anisotropy_threshold"]):
        degrees = aug["rotation"]["degrees_2d"]
        return [math.radians(auto_degrees_2d(patch_size) if degrees == AUTO else degrees)]
    return [math.radians(aug["rotation"]["degrees_3d"])] * 3


def sampling_size(patch_size: Sequence[int], aug: Mapping[str, Any]) -> list[int]:
    """Size of the region to crop so that any rotation + scaling of the patch stays inside it.

    Cropping more than the patch is cheap (the spatial transform interpolates only at the patch's
    voxels) and keeps image content, instead of padding, under rotated corners.
    """
    patch = np.asarray(patch_size, dtype=float)
    if aug["rotation"]["p"] <= 0 and aug["scaling"]["p"] <= 0:
        return [int(p) for p in patch]
    plane = np.asarray(spatial_extents(patch_size, aug), dtype=float)
    in_plane = len(plane) < len(patch)
    limits = rotation_ranges(patch_size, aug) if aug["rotation"]["p"] > 0 else [0.0] * (1 if len(plane) == 2 else 3)
    corners = np.array(list(itertools.product(*[(-s / 2, s / 2) for s in plane])))
    extent = np.zeros(len(plane))
    for angles in itertools.product(*[np.linspace(-a, a, _ANGLE_SAMPLES) for a in limits]):
        rotated = corners @ _rotation_matrix(angles, len(plane))
        extent = np.maximum(extent, 2 * np.abs(rotated).max(0))
    scale = max(aug["scaling"]["range"]) if aug["scaling"]["p"] > 0 else 1.0
    extent = np.ceil(np.maximum(extent * scale, plane)).astype(int)
    return [int(patch[0]), *extent.tolist()] if in_plane else extent.tolist()


def _rotation_matrix(angles: Sequence[float], dims: int) -> np.ndarray:
    if dims == 2:
        (a,) = angles
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


class SlicesAsChannels(AbstractTransform):
    """Fold the first spatial axis into the channels (``to_2d``) or unfold it again, for in-plane
    augmentation of anisotropic 3D patches."""

    def __init__(self, to_2d: bool, keys: Sequence[str] = ("data", "seg")) -> None:
        self.to_2d = to_2d
        self.keys = tuple(keys)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        for key in self.keys:
            array = batch.get(key)
            if array is None:
                continue
            if self.to_2d:
                b, c, z = array.shape[:3]
                batch[f"_{key}_slices"] = (c, z)
                batch[key] = array.reshape(b, c * z, *array.shape[3:])
            else:
                c, z = batch.pop(f"_{key}_slices")
                batch[key] = array.reshape(array.shape[0], c, z, *array.shape[2:])
        return batch


class MirrorPerAxis(AbstractTransform):
    """Flip each sample along each listed spatial axis independently with probability ``p``."""

    def __init__(self, axes: Sequence[int], p: float) -> None:
        self.axes = tuple(axes)
        self.p = p

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data, seg = batch["data"], batch.get("seg")
        for b in range(data.shape[0]):
            for axis in self.axes:
                if np.random.uniform() < self.p:
                    data[b] = np.flip(data[b], axis + 1).copy()
                    if seg is not None:
                        seg[b] = np.flip(seg[b], axis + 1).copy()
        return batch


class MaskOutsideNonzero(AbstractTransform):
    """Set the listed data channels to 0 where the label map says "outside the nonzero mask" (-1):
    the intensity transforms moved those voxels away from the 0 that normalization left there."""

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = list(channels)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        outside = batch["seg"][:, 0] == OUTSIDE_MASK_LABEL
        for c in self.channels:
            batch["data"][:, c][outside] = 0
        return batch


class PreviousStageToData(AbstractTransform):
    """Cascade: move seg channel 1 (the previous stage's labels) into data as one-hot channels,
    one per foreground label."""

    def __init__(self, foreground_labels: Sequence[int]) -> None:
        self.labels = tuple(foreground_labels)

    def __call__(self, **batch: Any) -> dict[str, Any]:
        seg = batch["seg"]
        previous = seg[:, 1:2]
        onehot = np.concatenate([(previous == label) for label in self.labels], axis=1).astype(batch["data"].dtype)
        batch["data"] = np.concatenate([batch["data"], onehot], axis=1)
        batch["seg"] = seg[:, :1]
        return batch


def _erosion(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Erosion that takes the world beyond the patch for foreground, as skimage's (nnU-Net's): scipy's
    default took it for background, so every operation but dilation ate a mask touching the patch border
    up to the radius (8 voxels) from that border, closing too, which never removes foreground."""
    return ndimage.binary_erosion(mask, structure, border_value=1)


def _opening(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(_erosion(mask, structure), structure)


def _closing(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    return _erosion(ndimage.binary_dilation(mask, structure), structure)


class CorruptMasks(AbstractTransform):
    """Cascade mask corruption, as nnU-Net's: per sample with probability ``p_operation``, a random binary
    dilation / erosion / opening / closing of each mask channel in a random order, what one adds taken
    from the others (the masks stay one-hot, as the previous stage's predictions are); per sample with
    probability ``p_remove``, removal of one random connected component smaller than ``max_fraction`` of
    the patch from each mask channel. The network so learns not to trust the previous stage blindly."""

    OPERATIONS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
        ndimage.binary_dilation, _erosion, _opening, _closing,
    )

    def __init__(self, channels: Sequence[int], p_operation: float, max_size: int, p_remove: float, max_fraction: float):
        self.channels = tuple(channels)
        self.p_operation = p_operation
        self.max_size = max_size
        self.p_remove = p_remove
        self.max_fraction = max_fraction

    def __call__(self, **batch: Any) -> dict[str, Any]:
        data = batch["data"]
        for b in range(data.shape[0]):
            masks = {c: data[b, c] > 0.5 for c in self.channels}
            if np.random.uniform() < self.p_operation:
                for c in np.random.permutation(self.channels):
                    self._operate(masks, int(c))
            if np.random.uniform() < self.p_remove:
                for c in np.random.permutation(self.channels):
                    masks[int(c)] = self._remove_component(masks[int(c)])
            for c, mask in masks.items():
                data[b, c] = mask
        return batch

    def _operate(self, masks: dict[int, np.ndarray], c: int) -> None:
        """A random operation on mask ``c`` with a radius drawn as nnU-Net's (``uniform(1, max_size)``, a
        real number: whole radii 1..max_size left out every ball between them); voxels it adds leave the
        other masks."""
        operation = self.OPERATIONS[np.random.randint(len(self.OPERATIONS))]
        radius = np.random.uniform(1, self.max_size)
        result = operation(masks[c], round_structure(radius, masks[c].ndim))
        added = result & ~masks[c]
        masks[c] = result
        for other in masks:
            if other != c:
                masks[other] &= ~added

    def _remove_component(self, mask: np.ndarray) -> np.ndarray:
        """One random component under ``max_fraction`` of the patch taken out. Components are fully connected
        (26 neighbours in 3D, 8 in 2D), as nnU-Net's skimage ``label`` counts them: scipy's default (faces
        only) split a mask touching itself across an edge or corner, and a removal took out only part of it."""
        components, n = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, mask.ndim))
        if n == 0:
            return mask
        sizes = np.bincount(components.ravel())[1:]
        small = np.flatnonzero(sizes < self.max_fraction * mask.size) + 1
        if small.size == 0:
            return mask
        return mask & (components != np.random.choice(small))


def round_structure(radius: float, ndim: int) -> np.ndarray:
    """The voxels within ``radius`` of the centre, a ball (a disk in 2D), as nnU-Net's cascade mask
    corruption uses (``skimage.morphology.ball`` / ``disk``, given its real radius as is): the 6-connected
    structure iterated ``radius`` times is a diamond, which grows and shrinks masks by ``sqrt(3) x`` less
    along the diagonals than the axes."""
    from skimage import morphology  # half a second to import: only cascade training needs it

    shapes = {2: morphology.disk, 3: morphology.ball}
    return shapes[ndim](radius).astype(bool)


def _spatial_transform(spatial_patch: list[int], angles: Sequence[float], aug: Mapping[str, Any]) -> AbstractTransform:
    """Rotation, scaling and (optional) elastic deformation, sampled around the patch centre."""
    return SpatialTransform(
        spatial_patch,
        elastic=(aug["elastic"]["p"], tuple(aug["elastic"]["alpha"]), tuple(aug["elastic"]["sigma"])),
        rotation=(aug["rotation"]["p"], [(-a, a) for a in angles]),
        scaling=(aug["scaling"]["p"], tuple(aug["scaling"]["range"])),
        order_data=aug["spatial_order_data"],
        border_cval_data=0,
        order_seg=aug["spatial_order_seg"],
        border_cval_seg=OUTSIDE_MASK_LABEL,
    )


def _intensity_transforms(aug: Mapping[str, Any], in_plane: bool) -> list[AbstractTransform]:
    """Noise, blur, brightness, contrast, low resolution (in-plane only for a 2.5D patch), gammas."""
    return [
        GaussianNoiseTransform(tuple(aug["gaussian_noise"]["variance"]), p_per_sample=aug["gaussian_noise"]["p"]),
        GaussianBlurTransform(
            tuple(aug["gaussian_blur"]["sigma"]),
            different_sigma_per_channel=True,
            different_sigma_per_axis=True,  # nnU-Net v2: synchronize_axes=False
            p_per_sample=aug["gaussian_blur"]["p"],
            p_per_channel=aug["gaussian_blur"]["p_per_channel"],
        ),
        BrightnessMultiplicativeTransform(tuple(aug["brightness"]["range"]), p_per_sample=aug["brightness"]["p"]),
        ContrastAugmentationTransform(tuple(aug["contrast"]["range"]), p_per_sample=aug["contrast"]["p"]),
        SimulateLowResolutionTransform(
            zoom_range=tuple(aug["low_resolution"]["zoom"]),
            per_channel=True,
            p_per_channel=aug["low_resolution"]["p_per_channel"],
            order_downsample=0,
            order_upsample=1,  # nnU-Net v2 upsamples (bi/tri)linearly
            p_per_sample=aug["low_resolution"]["p"],
            ignore_axes=(0,) if in_plane else None,
        ),
        GammaTransform(
            tuple(aug["gamma_inverted"]["range"]), True, True, retain_stats=True, p_per_sample=aug["gamma_inverted"]["p"]
        ),
        GammaTransform(tuple(aug["gamma"]["range"]), False, True, retain_stats=True, p_per_sample=aug["gamma"]["p"]),
    ]


def training_transforms(
    patch_size: Sequence[int],
    aug: Mapping[str, Any],
    previous_stage_labels: Sequence[int] | None = None,
    n_image_channels: int = 1,
) -> Compose:
    """The §1.5 pipeline as nnU-Net v2 orders it: spatial (rotation, scaling, optional elastic), noise,
    blur, brightness, contrast, low-resolution simulation, inverted gamma, gamma, mirroring, re-zeroing
    outside the nonzero mask; then the cascade's mask corruption and -1 -> 0 in the labels.

    ``aug`` must be resolved (:func:`resolve_augmentation`) for ``mask_channels``."""
    patch = [int(p) for p in patch_size]
    if AUTO in (aug["mask_channels"], aug["mirror"]["axes"]):
        raise TrainingError("augmentation.mask_channels or mirror.axes is 'auto': resolve the config with "
                            "resolve_augmentation first")
    spatial_patch = spatial_extents(patch, aug)
    in_plane = len(spatial_patch) < len(patch)
    transforms: list[AbstractTransform] = []
    if in_plane:
        transforms.append(SlicesAsChannels(to_2d=True))
    transforms.append(_spatial_transform(spatial_patch, rotation_ranges(patch, aug), aug))
    if in_plane:
        transforms.append(SlicesAsChannels(to_2d=False))
    transforms += _intensity_transforms(aug, in_plane)
    if aug["mirror"]["p"] > 0 and aug["mirror"]["axes"]:
        transforms.append(MirrorPerAxis(aug["mirror"]["axes"], aug["mirror"]["p"]))
    if aug["mask_channels"]:
        transforms.append(MaskOutsideNonzero(aug["mask_channels"]))
    transforms += cascade_transforms(previous_stage_labels, n_image_channels, aug)
    transforms.append(RemoveLabelTransform(OUTSIDE_MASK_LABEL, 0))
    return Compose(transforms)


def cascade_transforms(
    previous_stage_labels: Sequence[int] | None, n_image_channels: int, aug: Mapping[str, Any] | None
) -> list[AbstractTransform]:
    """Previous-stage masks into data, corrupted when ``aug`` is given (training), clean otherwise."""
    if not previous_stage_labels:
        return []
    transforms: list[AbstractTransform] = [PreviousStageToData(previous_stage_labels)]
    if aug is not None:
        channels = range(n_image_channels, n_image_channels + len(previous_stage_labels))
        operation, remove = aug["cascade_binary_operation"], aug["cascade_remove_component"]
        transforms.append(CorruptMasks(channels, operation["p"], operation["max_size"], remove["p"], remove["max_fraction"]))
    return transforms


def validation_transforms(
    previous_stage_labels: Sequence[int] | None = None, n_image_channels: int = 1
) -> Compose:
    """Pseudo-validation batches are only cropped: previous-stage masks moved in, -1 -> 0."""
    return Compose([*cascade_transforms(previous_stage_labels, n_image_channels, None), RemoveLabelTransform(OUTSIDE_MASK_LABEL, 0)])
