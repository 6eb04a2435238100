"""``fingerprint.json``: where it lives and how it is read back (light: no image libraries imported).

``autoseg plan`` reads the fingerprint without importing the extraction's SimpleITK and scipy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from autoseg.errors import FingerprintError
from autoseg.paths import DatasetSpec, resolve_dataset
from autoseg.utils.jsonio import read_json

FINGERPRINT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"


def fingerprint_path(location: DatasetSpec) -> Path:
    return resolve_dataset(location).preprocessed_dir / FINGERPRINT_FILE


def dataset_json_digest(location: DatasetSpec) -> str | None:
    """The sha256 of the dataset's ``dataset.json`` as it is now (a fingerprint records the one it read);
    None when it cannot be read (the stage reading it says why)."""
    try:
        return hashlib.sha256((resolve_dataset(location).raw_dir / "dataset.json").read_bytes()).hexdigest()
    except OSError:
        return None


def _stale_problem(location: DatasetSpec, path: Path, data: dict[str, Any]) -> str | None:
    """Why a fingerprint no longer describes its dataset: ``dataset.json`` was edited after it was computed.
    Its channel names choose the normalization, its labels the outputs, numTraining counts the cases: a plan
    from the old fingerprint would silently follow the old description."""
    recorded, current = data.get("dataset_json_sha256"), dataset_json_digest(location)
    if recorded is None or current is None or recorded == current:
        return None
    location = resolve_dataset(location)
    return (f"{path}: computed from an earlier {location.raw_dir / 'dataset.json'} (edited since: channel names, "
            f"labels or cases may differ); re-run `autoseg fingerprint {location.name}`")


def fingerprint_is_stale(location: DatasetSpec) -> bool:
    """Whether ``fingerprint.json`` exists but was computed from another ``dataset.json`` than today's."""
    path = fingerprint_path(location)
    try:
        data = read_json(path, FingerprintError, "not found", "")
    except FingerprintError:
        return False
    return isinstance(data, dict) and _stale_problem(location, path, data) is not None


def load_fingerprint(location: DatasetSpec) -> dict[str, Any]:
    """Read ``fingerprint.json``; a clear error when it is missing, unreadable, from another version or from
    a ``dataset.json`` edited since."""
    location = resolve_dataset(location)
    path = fingerprint_path(location)
    data = read_json(
        path, FingerprintError, f"not found; run `autoseg fingerprint {location.name}` first",
        "delete it and re-run `autoseg fingerprint`",
    )
    required = ("version", "spacings", "shapes_after_crop", "foreground_intensity_properties_per_channel", "channel_names", "labels")
    missing = [k for k in required if not isinstance(data, dict) or k not in data]
    if missing:
        raise FingerprintError(f"{path}: missing {', '.join(missing)}; re-run `autoseg fingerprint {location.name}`")
    if data["version"] != FINGERPRINT_VERSION:
        raise FingerprintError(
            f"{path}: fingerprint version {data['version']} but this autoseg writes {FINGERPRINT_VERSION}; "
            f"re-run `autoseg fingerprint {location.name}`"
        )
    stale = _stale_problem(location, path, data)
    if stale:
        raise FingerprintError(stale)
    return data
