"""Prediction: sliding window with TTA and fold ensembling, cascade, export to the input geometry.

``load_model`` + ``predict_array`` segment arrays; ``predict_folder`` is ``autoseg predict``.
"""

from autoseg.inference.batch import PredictReport, predict_folder  # noqa: F401
from autoseg.inference.model import LoadedModel, find_model_folder, load_model, pick_device  # noqa: F401
from autoseg.inference.predictor import Prediction, predict_array, predict_preprocessed  # noqa: F401
from autoseg.inference.sliding_window import gaussian_importance_map, sliding_window_predict  # noqa: F401
