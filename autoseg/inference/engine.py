"""What prediction needs from a model, whichever engine runs it; imports no torch.

``model.load_model`` fills a ``LoadedModel`` with torch networks, ``onnx_model.load_onnx_model`` with
onnxruntime sessions; ``predictor`` picks the sliding window by ``engine``. A deployment with the
onnxruntime engine never imports torch (tests/test_deploy_without_torch.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autoseg.dataset.description import DatasetDescription
from autoseg.errors import InferenceError

ENGINES = ("torch", "onnxruntime")
DEFAULT_CHECKPOINT = "final"  # what load_model and predict_folder load when no checkpoint is named


def require_torch() -> None:
    """Import torch, or raise the one-line fix: install it, or deploy an ONNX model zip without it."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise InferenceError(
            f"--engine torch needs torch ({exc}); install it (https://pytorch.org), or export the model with "
            "`autoseg export-model --format onnx` and predict with --engine onnxruntime"
        ) from None


def canonical_folds(names: Sequence[str], present: Sequence[str]) -> list[str]:
    """The given fold names once each, in the order of ``present`` (every one must be present).

    ``-f 0 -f 0`` loaded fold 0 twice (twice the time) and ``-f 1 -f 0`` summed in another order than
    ``-f 0 -f 1``; both were recorded as other folds than ``-f 0`` / ``-f 0 -f 1``, so ``--continue`` into
    their folder was refused though the ensemble is the same."""
    chosen = set(names)
    return [f for f in present if f in chosen]


@dataclass
class LoadedModel:
    """Everything prediction needs from a model folder (or an ONNX model zip).

    Attributes:
        folder: the model folder.
        plans: the plans file as a dict.
        configuration_name: for example ``3d_fullres``.
        configuration: ``plans["configurations"][configuration_name]``.
        dataset: the dataset description saved with the model (labels, channels, file ending).
        folds: fold names used (``"0"``..., or ``"all"``).
        checkpoint: ``final``, ``best`` or ``latest``.
        networks: one network per fold: eval-mode torch modules on ``device``, or, with the onnxruntime
            engine, callables from numpy (B, C, *patch) to numpy logits.
        mirror_axes: spatial axes the networks were trained with mirroring on (TTA axes).
        patch_size: the training patch size (tile size of the sliding window).
        device: where the networks live (a ``torch.device``; ``"cpu"`` for onnxruntime).
        previous_stage: the cascade's low-resolution model, loaded first, or ``None``.
        engine: ``torch`` or ``onnxruntime``: which sliding window runs the networks.
        weights_sha256: the folds' network tensors (onnxruntime: graphs) hashed together, which tells
            a retrained model from one of the same folder name.
        mirror_axes_differ: the folds were trained with different mirror axes (loaded without TTA; TTA is refused).
    """

    folder: Path
    plans: dict[str, Any]
    configuration_name: str
    configuration: dict[str, Any]
    dataset: DatasetDescription
    folds: list[str]
    checkpoint: str
    networks: list[Any]
    mirror_axes: tuple[int, ...]
    patch_size: tuple[int, ...]
    device: Any
    previous_stage: "LoadedModel | None" = None
    engine: str = "torch"
    weights_sha256: str | None = None
    mirror_axes_differ: bool = False

    def tta_mirror_axes(self, tta: bool) -> tuple[int, ...]:
        """The axes test-time augmentation mirrors (none without TTA). Folds trained with different mirror axes,
        loaded together with ``load_model(..., tta=False)``, share none: given ``tta=True`` later they predicted
        without mirroring in silence, so TTA is refused for them."""
        if tta and self.mirror_axes_differ:
            raise InferenceError(
                f"model {self.folder}: its folds {', '.join(self.folds)} were trained with different mirror_axes and "
                "were loaded with tta=False, so they have no mirror axes to predict with TTA; predict with tta=False "
                "(--no-tta), or each fold separately with TTA (-f) and combine them with autoseg ensemble"
            )
        return tuple(self.mirror_axes) if tta else ()

    @property
    def num_image_channels(self) -> int:
        """Channels of the input images (cascade one-hot channels not included)."""
        return self.dataset.num_channels

    @property
    def spatial_dims(self) -> int:
        return int(self.configuration["spatial_dims"])

    @property
    def regions_class_order(self) -> list[int] | None:
        order = self.plans.get("regions_class_order")
        return list(order) if order else None

    def info(self) -> dict[str, Any]:
        """What ``predict_info.json`` records about the model."""
        return {
            "model_folder": str(self.folder.absolute()),  # as typed (relative), later commands elsewhere could not find it
            "dataset_name": self.plans.get("dataset_name"),
            "configuration": self.configuration_name,
            "plans_name": self.plans.get("plans_name"),
            "folds": self.folds,
            "checkpoint": self.checkpoint,
            "previous_stage": self.previous_stage.info() if self.previous_stage else None,
            "weights_sha256": self.weights_sha256,
        }
