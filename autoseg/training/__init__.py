"""Training: data loading and augmentation, losses, the config-driven loop, checkpoints, splits,
distributed training. ``train_fold`` is the entry point of ``autoseg train``.

``train_fold`` is imported on first use, so the light modules (``splits``) load without torch.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "train_fold":
        from autoseg.training.run import train_fold

        return train_fold
    raise AttributeError(f"module 'autoseg.training' has no attribute {name!r}")
