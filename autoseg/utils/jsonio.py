"""Reading the JSON files autoseg writes (and dataset.json), with one clear error each way it fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoseg.errors import AutosegError


def read_json(path: str | Path, error: type[AutosegError], missing: str, invalid: str) -> Any:
    """Parse ``path``; raise ``error`` with ``missing`` or ``invalid`` (the fix) when it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: is not valid JSON ({exc}); {invalid}") from None
