"""The cascade's hand-over: 3d_lowres predictions onto the 3d_cascade_fullres preprocessed grid.

The lowres stage's cross-validation writes every case's prediction (input geometry) to
``<lowres model folder>/predicted_next_stage/`` (docs/architecture.md). Before a cascade fold trains,
each is moved onto the fullres grid with the labels' own transpose, crop and resampling, and cached as
``<case>.npy`` (memory-mapped by the data loader, so patches are read without loading whole cases).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autoseg.dataset.imageio import read_image
from autoseg.errors import TrainingError
from autoseg.preprocessing.inverse import label_to_preprocessed_grid
from autoseg.preprocessing.store import case_paths, load_properties
from autoseg.utils.atomic import atomic_path

NEXT_STAGE_FOLDER = "predicted_next_stage"
CACHE_FOLDER = "previous_stage_on_grid"


def previous_stage_predictions(results_dir: Path, network: str, plans_name: str, previous: str) -> Path:
    return results_dir / f"{network}__{plans_name}__{previous}" / NEXT_STAGE_FOLDER


def prepare_previous_stage(
    predictions: Path,
    cache: Path,
    store: Path,
    case_ids: Sequence[str],
    plans: dict[str, Any],
    configuration: str,
    file_ending: str,
) -> Path:
    """Cache every case's previous-stage labels on this configuration's grid; return the cache folder."""
    missing = [c for c in case_ids if not (predictions / f"{c}{file_ending}").is_file()]
    if missing:
        raise TrainingError(
            f"{predictions}: previous-stage predictions missing for {len(missing)} case(s) "
            f"({', '.join(missing[:5])}{'...' if len(missing) > 5 else ''}); train all 5 folds of the "
            "previous stage first (each writes its validation cases there)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    for case_id in case_ids:
        target = cache / f"{case_id}.npy"
        source = predictions / f"{case_id}{file_ending}"
        # The grid is the stored case's: a case preprocessed again (a new plan) after the cache was made
        # gets a new cache, not the old grid's labels (shifted, or of another shape).
        made_from = max(source.stat().st_mtime, case_paths(store, case_id)[2].stat().st_mtime)
        if target.is_file() and target.stat().st_mtime >= made_from:
            continue
        labels, _ = read_image(source)
        on_grid = label_to_preprocessed_grid(labels, load_properties(store, case_id), plans, configuration)
        with atomic_path(target) as tmp:
            np.save(tmp, np.asarray(on_grid, dtype=np.int16)[None], allow_pickle=False)
    return cache
