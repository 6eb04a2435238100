"""``fingerprint.json``: where it lives and how it is read back (light: no image libraries imported).

``autoseg plan`` reads the fingerprint without importing the extraction's SimpleITK and scipy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoseg.errors import FingerprintError
from autoseg.paths import DatasetSpec, resolve_dataset
from autoseg.utils.jsonio import read_json

FINGERPRINT_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"


def fingerprint_path(location: DatasetSpec) -> Path:
    return resolve_dataset(location).preprocessed_dir / FINGERPRINT_FILE


def load_fingerprint(location: DatasetSpec) -> dict[str, Any]:
    """Read ``fingerprint.json``; a clear error when it is missing, unreadable or from another version."""
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
    return data
