"""Saved probabilities: ``<case>.npz`` and its ``<case>.json`` sidecar, written and read in one place.

``autoseg predict --save-probabilities``, training's validation and ``autoseg ensemble`` all write
them, ``autoseg ensemble`` and ``find-best`` read them (docs/architecture.md, "Predictions folder").
The npz holds one float16 array ``probabilities``, ``(C, z, y, x)`` on the input image's grid; the
sidecar gives case id, geometry, labels, regions_class_order and ``shape``, the array's shape with the
channels first. Writer and reader once disagreed on that shape, so no other module spells the format.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from autoseg.dataset.imageio import Geometry
from autoseg.errors import AutosegError
from autoseg.utils.atomic import atomic_path, atomic_write_json
from autoseg.utils.jsonio import read_json

PROBABILITIES_KEY = "probabilities"
PROBABILITY_DTYPE = np.float16
PROBABILITIES_SUFFIX = ".npz"
SIDECAR_SUFFIX = ".json"
SIDECAR_KEYS = ("geometry", "labels", "regions_class_order", "shape")


class ProbabilityPaths(NamedTuple):
    """A case's two files, in the order they are written (the label map, written after them, marks a
    finished case)."""

    probabilities: Path
    sidecar: Path


def probability_paths(folder: Path, case_id: str) -> ProbabilityPaths:
    """Where a case's probabilities and sidecar live in ``folder``: the one place their names are made."""
    return ProbabilityPaths(folder / f"{case_id}{PROBABILITIES_SUFFIX}", folder / f"{case_id}{SIDECAR_SUFFIX}")


def is_probability_sidecar(path: Path) -> bool:
    """Whether ``path`` is the sidecar of a case's saved probabilities (``<case>.npz`` beside it): a case named
    ``plans`` or ``dataset`` predicted with --save-probabilities has a ``plans.json`` that is no plans."""
    case_id = path.name.removesuffix(SIDECAR_SUFFIX)
    return path.name.endswith(SIDECAR_SUFFIX) and probability_paths(path.parent, case_id).probabilities.is_file()


def write_probability_files(
    folder: Path, case_id: str, probabilities: np.ndarray, geometry: Geometry, labels: Mapping[str, Any],
    regions_class_order: Sequence[int] | None,
) -> None:
    """``<case_id>.npz`` (float16) and its sidecar in ``folder``, each written atomically."""
    paths = probability_paths(folder, case_id)
    with atomic_path(paths.probabilities) as tmp:
        np.savez_compressed(tmp, **{PROBABILITIES_KEY: probabilities.astype(PROBABILITY_DTYPE, copy=False)})
    atomic_write_json(
        paths.sidecar,
        {
            "case_id": case_id,
            "geometry": geometry.to_dict(),
            "labels": dict(labels),
            "regions_class_order": None if regions_class_order is None else list(regions_class_order),
            "shape": list(probabilities.shape),
        },
    )


def read_sidecar(folder: Path, case: str, error: type[AutosegError]) -> dict[str, Any]:
    """A case's sidecar in ``folder``, refused with ``error`` when missing, not JSON or lacking a key."""
    path = probability_paths(folder, case).sidecar
    fix = f"re-run predict with --save-probabilities for case {case}"
    sidecar = read_json(path, error, f"sidecar of case {case} not found; {fix}", fix)
    missing = [k for k in SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise error(f"{path}: sidecar of case {case} lacks {', '.join(missing)}; {fix}")
    return sidecar


def read_probabilities(folder: Path, case: str, sidecar: Mapping[str, Any], error: type[AutosegError]) -> np.ndarray:
    """A case's probabilities in ``folder``, refused with ``error`` when unreadable or not of the sidecar's shape."""
    path = probability_paths(folder, case).probabilities
    try:
        with np.load(path, allow_pickle=False) as data:
            probabilities = data[PROBABILITIES_KEY]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise error(
            f"{path}: probabilities of case {case} cannot be read ({type(exc).__name__}: {exc}); "
            "re-run predict with --save-probabilities for this case"
        ) from None
    if list(probabilities.shape) != list(sidecar["shape"]):
        raise error(
            f"{path}: probabilities of case {case} have shape {list(probabilities.shape)}, expected "
            f"{sidecar['shape']} (the sidecar's); re-run predict with --save-probabilities for this case"
        )
    return probabilities


def refuse_non_finite(path: Path, case: str, values: np.ndarray, error: type[AutosegError]) -> None:
    """Refuse NaN or infinite probabilities of ``path`` (a diverged model's, a damaged file's): the argmax took NaN
    as the largest value and the ensemble wrote arbitrary labels without a word. ``values`` may be a float32 sum of
    them onto finite ones (the ensemble's running total; the file's non-finite values stay so there, as many): the
    check on float16 took a seventh of the time of reading the file, on the float32 sum it takes a thirtieth."""
    finite = np.isfinite(values)
    if not finite.all():
        raise error(
            f"{path}: probabilities of case {case} hold {finite.size - np.count_nonzero(finite)} NaN or infinite "
            f"value(s) of {finite.size}; re-run predict with --save-probabilities for this case"
        )
