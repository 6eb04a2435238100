"""End-of-training validation: the fold's validation cases predicted whole, scored, kept.

Each case is predicted from the preprocessed store with the inference's sliding window (Gaussian
blending, mirroring TTA) and restored to its input geometry, as ``autoseg predict`` would, then scored
against ``gt_segmentations/`` into ``validation/summary.json`` (per case and class Dice). A 3d_lowres
fold also hands its predictions to the cascade (``predicted_next_stage/``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from autoseg.dataset.description import DatasetDescription
from autoseg.dataset.imageio import Geometry, write_image
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.inference.batch import write_probabilities
from autoseg.inference.model import load_model
from autoseg.inference.predictor import append_previous_stage, export_preprocessed
from autoseg.preprocessing.store import load_case
from autoseg.training.cascade import NEXT_STAGE_FOLDER
from autoseg.utils.atomic import atomic_path

VALIDATION_FOLDER = "validation"
GT_FOLDER = "gt_segmentations"


def validate_fold(
    model_folder: Path,
    fold: str,
    store: Path,
    gt_folder: Path,
    case_ids: Sequence[str],
    description: DatasetDescription,
    device: str,
    *,
    save_probabilities: bool = False,
    previous_stage_cache: Path | None = None,
    hand_to_next_stage: bool = False,
    mixed_precision: str = "auto",
    log: Callable[[str], None] = print,
    tta: bool = True,
) -> dict[str, Any]:
    """Predict ``case_ids`` with the fold's final checkpoint and evaluate them; returns the summary.
    ``tta``: mirroring test-time augmentation (a budgeted plan may turn it off to fit validation)."""
    model = load_model(model_folder, folds=[fold], checkpoint="final", device=device)
    output = model_folder / f"fold_{fold}" / VALIDATION_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    next_stage = model_folder / NEXT_STAGE_FOLDER if hand_to_next_stage else None
    ending = description.file_ending
    for i, case_id in enumerate(case_ids):
        data, _, properties = load_case(store, case_id, mmap=False)
        if previous_stage_cache is not None:
            previous = np.load(previous_stage_cache / f"{case_id}.npy", allow_pickle=False)[0]
            data = append_previous_stage(data, previous, description.foreground_labels)
        prediction = export_preprocessed(
            model, data, properties, tta=tta, mixed_precision=mixed_precision, return_probabilities=save_probabilities
        )
        geometry = Geometry.from_dict(properties["geometry"])
        if prediction.probabilities is not None:
            write_probabilities(prediction, geometry, model, case_id, output)
        write_image(prediction.labels, geometry, output / f"{case_id}{ending}")
        if next_stage is not None:
            with atomic_path(next_stage / f"{case_id}{ending}") as tmp:
                shutil.copyfile(output / f"{case_id}{ending}", tmp)
        log(f"validation: predicted {case_id} ({i + 1}/{len(case_ids)})")
    return evaluate_folders(output, gt_folder, description, output_dir=output, case_ids=list(case_ids), num_workers=1)
