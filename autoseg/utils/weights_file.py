"""The one reader and writer of autoseg's weight files (checkpoints and the weights in model zips).

The checkpoint layout on top of it (names, format version, checks) is autoseg/utils/checkpoint_format.py.

A weight file is a safetensors file: the tensors of a nested checkpoint dict under their key paths
(``network_weights/encoder.stages.0.conv.weight``, ``optimizer_state/state/3/momentum_buffer``) and, in
the safetensors metadata, the JSON skeleton of the dict with every tensor replaced by its name. Any
safetensors tool reads the weights; nothing in the file can run code. Checkpoints written by autoseg
before safetensors (``checkpoint_*.pt``, torch's zip format) are still read, with
``torch.load(weights_only=True)``, when no ``.safetensors`` file sits beside them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

import safetensors
import safetensors.torch
import torch

from autoseg.utils.atomic import atomic_path

SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".pt"  # torch.save checkpoints of autoseg before safetensors
FORMAT = "autoseg-weights"
METADATA_KEY = "autoseg"  # safetensors metadata entry holding the JSON skeleton
ErrorType = Callable[[str], Exception]


def weights_exist(path: Path) -> bool:
    """``path`` or, for a ``.safetensors`` path, the legacy ``.pt`` beside it exists."""
    path = Path(path)
    return path.is_file() or (path.suffix == SUFFIX and path.with_suffix(LEGACY_SUFFIX).is_file())


# ---------------------------------------------------------------------------------------------- tree


def _flatten(value: Any, path: str, tensors: dict[str, torch.Tensor], seen: set[int]) -> Any:
    """JSON skeleton of ``value``; its tensors go to ``tensors`` under ``path``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[path] = tensor
        return {"__tensor__": path}
    if isinstance(value, dict):
        items = [[key, _flatten(item, f"{path}/{key}" if path else str(key), tensors, seen)] for key, item in value.items()]
        plain = all(isinstance(key, str) and not key.startswith("__") for key in value)
        return {key: item for key, item in items} if plain else {"__dict__": items}
    if isinstance(value, (list, tuple)):
        items = [_flatten(item, f"{path}/{i}", tensors, seen) for i, item in enumerate(value)]
        return items if isinstance(value, list) else {"__tuple__": items}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{path or 'the checkpoint'} is a {type(value).__name__}; a weight file holds tensors and plain values only")


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, list):
        return [_unflatten(item, tensors) for item in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__tuple__" in skeleton:
        return tuple(_unflatten(item, tensors) for item in skeleton["__tuple__"])
    if "__dict__" in skeleton:
        return {key: _unflatten(item, tensors) for key, item in skeleton["__dict__"]}
    return {key: _unflatten(item, tensors) for key, item in skeleton.items()}


def _split(tree: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(tree, "", tensors, set())
    # One metadata entry: safetensors writes its metadata map in no fixed order, and a model file must be
    # byte-identical when the same checkpoint is exported twice.
    return tensors, {METADATA_KEY: json.dumps({"format": FORMAT, "skeleton": skeleton})}


def _join(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, where: str, error: ErrorType) -> dict[str, Any]:
    not_autoseg = f"{where}: a safetensors file, but not an autoseg weight file (no '{METADATA_KEY}' metadata); write it with autoseg"
    if not metadata or METADATA_KEY not in metadata:
        raise error(not_autoseg)
    try:
        entry = json.loads(metadata[METADATA_KEY])
        if not isinstance(entry, dict) or entry.get("format") != FORMAT:
            raise error(not_autoseg)
        return _unflatten(entry["skeleton"], tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise error(f"{where}: its '{METADATA_KEY}' metadata does not describe its tensors ({exc}); the file is damaged") from None


# ---------------------------------------------------------------------------------------------- files


def save_weights(path: Path, tree: dict[str, Any]) -> None:
    """Atomically write ``tree`` (nested dicts, lists, tensors and plain values) as a safetensors file."""
    tensors, metadata = _split(tree)
    with atomic_path(Path(path)) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)


def load_weights(path: Path, error: ErrorType, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a weight file written by ``save_weights``, or a legacy ``.pt`` (given, or beside a missing one)."""
    path = Path(path)
    if not path.is_file() and weights_exist(path):
        path = path.with_suffix(LEGACY_SUFFIX)
    if path.suffix == LEGACY_SUFFIX:
        return _load_legacy(path, error, device)
    try:
        tensors = safetensors.torch.load_file(path, device=str(device))
        with safetensors.safe_open(path, "pt") as handle:
            metadata = handle.metadata()
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc, error) from None
    return _join(tensors, metadata, str(path), error)


MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a header


def _truncation(path: Path) -> str | None:
    """'N of the M bytes ...' where ``path`` starts as a safetensors file (header length, then JSON) but ends before
    its header or the tensors it describes do: a checkpoint cut short by an interrupted copy, download or full disk
    was called 'damaged or not written by autoseg', which sent users to another autoseg version. A file shorter
    than the 8-byte header length, or ending right after it, is cut short too (it was called 'header too small'). Else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) < 8:  # cut before its header length: every safetensors file starts with those 8 bytes
                return f"{size} bytes, fewer than the 8 bytes of its header length"
            (length,) = struct.unpack("<Q", head)
            if not 1 < length <= MAX_HEADER_BYTES:
                return None
            text = file.read(length)
        if text and not text.startswith(b"{"):  # no bytes after the length: cut right after it
            return None
        if len(text) < length:
            return f"{size} bytes, fewer than its {8 + length}-byte header"
        header = json.loads(text)
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    return f"{size} of the {8 + length + end} bytes its header describes" if size < 8 + length + end else None


def _unreadable(path: Path, exc: Exception, error: ErrorType) -> Exception:
    """The error for a weight file safetensors could not read: its truncation where it was cut short, else the reason."""
    if cut := _truncation(path):
        return error(f"{path}: is truncated ({cut}: an interrupted copy, download or write?); copy it again whole")
    return error(f"{path}: not a readable safetensors file ({exc}); it is damaged or not written by autoseg")


class _NoTensors(dict):
    """The tensors of a tree read without them (``load_weights_skeleton``): each is None."""

    def __missing__(self, key: str) -> None:
        return None


def load_weights_skeleton(path: Path, error: ErrorType) -> dict[str, Any]:
    """A weight file's tree with every tensor None, read from the safetensors header alone (``safe_open``'s
    metadata): a check of a checkpoint's metadata read its weights and optimizer state too. A legacy ``.pt``
    (given, or beside a missing file) has no header to read apart: it is loaded whole."""
    path = Path(path)
    if not path.is_file() and weights_exist(path):
        path = path.with_suffix(LEGACY_SUFFIX)
    if path.suffix == LEGACY_SUFFIX:
        return _load_legacy(path, error, "cpu")
    try:
        with safetensors.safe_open(path, "pt") as handle:
            metadata = handle.metadata()
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc, error) from None
    return _join(_NoTensors(), metadata, str(path), error)


def _load_legacy(path: Path, error: ErrorType, device: str | torch.device) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt or foreign files
        raise error(f"{path}: cannot be loaded safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); retrain the fold") from None


# ---------------------------------------------------------------------------------------------- bytes


def weights_to_bytes(tree: dict[str, Any]) -> bytes:
    """``save_weights`` into memory (a model zip's member)."""
    tensors, metadata = _split(tree)
    return safetensors.torch.save(tensors, metadata=metadata)


def weights_from_bytes(data: bytes, where: str, error: ErrorType) -> dict[str, Any]:
    """Inverse of ``weights_to_bytes``; ``where`` names the source in errors."""
    try:
        tensors = safetensors.torch.load(data)
    except (safetensors.SafetensorError, ValueError) as exc:
        raise error(f"{where}: not a valid safetensors weight file ({exc})") from None
    # The library checked the header; its metadata entry is read from the documented layout
    # (little-endian u64 header length, JSON header) since safetensors.torch.load returns tensors only.
    (length,) = struct.unpack_from("<Q", data)
    metadata = json.loads(data[8 : 8 + length]).get("__metadata__")
    return _join(tensors, metadata, where, error)
