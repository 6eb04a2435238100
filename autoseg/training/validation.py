"""End-of-training validation: the fold's validation cases predicted whole, scored, kept.

Each case is predicted from the preprocessed store with the inference's sliding window (Gaussian
blending, mirroring TTA) and restored to its input geometry, as ``autoseg predict`` would, then scored
against ``gt_segmentations/`` into ``validation/summary.json`` (per case and class Dice). A 3d_lowres
fold also hands its predictions to the cascade (``predicted_next_stage/``).

Under a time budget the validation keeps to the run's deadline: when, at the pace of the cases done,
the mirrored prediction of the cases left would end after it, they are predicted without mirroring
(8x fewer forward passes in 3D), and the summary says how many cases were mirrored.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from autoseg.dataset.description import DatasetDescription
from autoseg.dataset.imageio import Geometry, write_image
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.inference.batch import write_probabilities
from autoseg.inference.model import load_model
from autoseg.inference.predictor import append_previous_stage, export_preprocessed
from autoseg.planning.accounting import tiles_per_case
from autoseg.preprocessing.store import load_case_waiting
from autoseg.training.cascade import NEXT_STAGE_FOLDER, hand_on
from autoseg.utils.probability_files import probability_paths

VALIDATION_FOLDER = "validation"
GT_FOLDER = "gt_segmentations"


class MirroringPace:
    """Whether the next case may still be mirrored: the seconds per tile so far, times the tiles left,
    must end by ``deadline`` (monotonic clock; None: always mirror)."""

    def __init__(self, deadline: float | None, tiles: Sequence[int]) -> None:
        self.deadline, self.tiles = deadline, list(tiles)
        self.started = time.monotonic()
        self.dropped_at: int | None = None

    def mirror(self, index: int) -> bool:
        """For case ``index`` (cases before it done); once dropped, mirroring stays off."""
        if self.dropped_at is not None:
            return False
        if self.deadline is None or index == 0:
            return True
        now = time.monotonic()
        left = (now - self.started) / max(sum(self.tiles[:index]), 1) * sum(self.tiles[index:])
        if now + left > self.deadline:
            self.dropped_at = index
            return False
        return True


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
    split: str | None = None,
    mixed_precision: str = "auto",
    log: Callable[[str], None] = print,
    tta: bool = True,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Predict ``case_ids`` with the fold's final checkpoint and evaluate them; returns the summary.
    ``tta``: mirroring test-time augmentation (a budgeted plan may turn it off to fit validation);
    ``deadline``: when mirrored cases would end after it (``time.monotonic()``), the rest are not mirrored;
    ``split``: the fold's ``split_digest``, recorded beside each case handed to the next stage."""
    model = load_model(model_folder, folds=[fold], checkpoint="final", device=device)
    paced = tta and deadline is not None
    tiles = [tiles_per_case(load_case_waiting(store, c)[2]["shape_after_resampling"], model.patch_size) for c in case_ids] if paced else []
    pace = MirroringPace(deadline if paced else None, tiles)
    output = model_folder / f"fold_{fold}" / VALIDATION_FOLDER
    output.mkdir(parents=True, exist_ok=True)
    next_stage = model_folder / NEXT_STAGE_FOLDER if hand_to_next_stage else None
    ending = description.file_ending
    for i, case_id in enumerate(case_ids):
        data, _, properties = load_case_waiting(store, case_id, mmap=False)  # waits for a preprocess storing it again
        if previous_stage_cache is not None:
            previous = np.load(previous_stage_cache / f"{case_id}.npy", allow_pickle=False)[0]
            data = append_previous_stage(data, previous, description.foreground_labels)
        mirror = tta and pace.mirror(i)
        if tta and not mirror and pace.dropped_at == i:
            log(f"validation: behind the time budget, the last {len(case_ids) - i} cases without mirroring")
        prediction = export_preprocessed(
            model, data, properties, tta=mirror, mixed_precision=mixed_precision, return_probabilities=save_probabilities
        )
        geometry = Geometry.from_dict(properties["geometry"])
        if prediction.probabilities is not None:
            write_probabilities(prediction, geometry, model, case_id, output)
        else:
            _remove_stale_probabilities(output, case_id)
        write_image(prediction.labels, geometry, output / f"{case_id}{ending}")
        if next_stage is not None:
            hand_on(next_stage, output / f"{case_id}{ending}", case_id, fold, split)
        log(f"validation: predicted {case_id} ({i + 1}/{len(case_ids)})")
    mirrored = 0 if not tta else len(case_ids) if pace.dropped_at is None else pace.dropped_at
    return evaluate_folders(output, gt_folder, description, output_dir=output, case_ids=list(case_ids), num_workers=1,
                            extra={"mirrored_cases": mirrored})


def _remove_stale_probabilities(output: Path, case_id: str) -> None:
    """Delete a case's probabilities that an earlier validation of the fold saved (``--save-probabilities``)
    when this one saves none: after ``--continue --epochs`` they belong to an older model and disagree with
    the new label map, yet ``find-best`` and ``ensemble`` would average them as this fold's."""
    for path in probability_paths(output, case_id):
        path.unlink(missing_ok=True)
