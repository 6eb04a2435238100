"""User-facing error types.

Every error a user can cause is raised as one of these, with the file, the problem and the fix in
the message. The CLI prints the message on one line and exits with ``exit_code``; nothing else
ever reaches the user as a traceback.
"""

from __future__ import annotations


class AutosegError(Exception):
    """Base class of all errors caused by user input or environment; exit code 2."""

    exit_code: int = 2


class DatasetError(AutosegError):
    """The raw dataset (dataset.json, images, labels) is missing or malformed."""


class FingerprintError(AutosegError):
    """A fingerprint is missing, unreadable or inconsistent with its dataset."""


class PlanError(AutosegError):
    """A plans file is missing, malformed, or a requested configuration cannot be planned."""


class PreprocessingError(AutosegError):
    """Preprocessing of one or more cases failed."""


class NetworkError(AutosegError):
    """An unknown network or a topology the network cannot be built from."""


class TrainingError(AutosegError):
    """Training cannot start or continue (bad config override, missing data, dead worker...)."""


class InferenceError(AutosegError):
    """Prediction failed for a model folder or one or more input cases."""


class EvaluationError(AutosegError):
    """Predictions and references cannot be compared (missing files, geometry mismatch...)."""


class ModelFileError(AutosegError):
    """An exported model file is tampered, incomplete or incompatible."""


class UsageError(AutosegError):
    """A command-line value is malformed (a duration, a fold, an override)."""
