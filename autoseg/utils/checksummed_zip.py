"""Write a zip of named members with a ``manifest.json`` that lists each member's sha256 (model files)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping

from autoseg.utils.atomic import atomic_path

MANIFEST = "manifest.json"
# The manifest's "format" of the two kinds of model file. Each reader names the other kind, so a file given
# to the wrong command gets the command that takes it.
MODEL_ZIP_FORMAT = "autoseg-model"  # export-model: import-model and predict -m (torch engine)
ONNX_ZIP_FORMAT = "autoseg-onnx-model"  # export-model --format onnx: predict -m --engine onnxruntime


def write_checksummed_zip(output_zip: str | Path, manifest: Mapping[str, Any], members: Mapping[str, bytes]) -> Path:
    """Atomically write ``members`` and ``manifest`` plus ``"files": {name: sha256}`` as ``manifest.json``."""
    listed = {**manifest, "files": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}}
    output_zip = Path(output_zip)
    with atomic_path(output_zip) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(listed, indent=2) + "\n")
        for name, data in members.items():
            archive.writestr(name, data)
    return output_zip
