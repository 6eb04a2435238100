"""Training: data loading and augmentation, losses, the config-driven loop, checkpoints, splits,
distributed training. ``train_fold`` is the entry point of ``autoseg train``."""

from autoseg.training.run import train_fold  # noqa: F401
