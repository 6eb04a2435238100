"""Preprocessing: crop, normalize, resample, store; and the exact inverse (reference §1.4)."""

from autoseg.preprocessing.inverse import label_to_preprocessed_grid, restore_label, restore_probabilities_to_labels
from autoseg.preprocessing.pipeline import preprocess_case
from autoseg.preprocessing.runner import PreprocessReport, preprocess_dataset
from autoseg.preprocessing.store import class_locations, list_cases, load_case, save_case

__all__ = [
    "PreprocessReport",
    "class_locations",
    "label_to_preprocessed_grid",
    "list_cases",
    "load_case",
    "preprocess_case",
    "preprocess_dataset",
    "restore_label",
    "restore_probabilities_to_labels",
    "save_case",
]
