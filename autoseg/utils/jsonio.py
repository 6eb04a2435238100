"""Reading the JSON files autoseg writes (and dataset.json), with one clear error each way it fails."""

from __future__ import annotations

import codecs
import json
import sys
from pathlib import Path
from typing import Any

from autoseg.errors import AutosegError
from autoseg.paths import has_lone_surrogate

# Byte-order marks a text editor puts before the text: Windows Notepad's "UTF-8 with BOM" and "Unicode".
_BYTE_ORDER_MARKS = {codecs.BOM_UTF8: "UTF-8 with a byte-order mark (BOM)", codecs.BOM_UTF16_LE: "UTF-16",
                     codecs.BOM_UTF16_BE: "UTF-16"}


def _encoding_problem(data: bytes) -> str | None:
    """What a file starting with a byte-order mark was saved as; None otherwise.

    JSON is UTF-8 without BOM (RFC 8259); nnU-Net's ``json.load`` refuses a BOM too, so autoseg does not
    accept one either (a copy would travel into model folders nnU-Net cannot read). It was refused with
    "fix the syntax", though the text itself was valid.
    """
    for mark, saved_as in _BYTE_ORDER_MARKS.items():
        if data.startswith(mark):
            return (f"saved as {saved_as}, which JSON readers (nnU-Net's too) refuse; save it as "
                    "UTF-8 without BOM (in Notepad: Save As, Encoding 'UTF-8')")
    return None


def read_json(path: str | Path, error: type[AutosegError], missing: str, invalid: str, unique_keys: bool = False) -> Any:
    """Parse ``path``; raise ``error`` with ``missing`` or ``invalid`` (the fix) when it cannot be read, or, with
    ``unique_keys``, when an object gives one key two values (``_refuse_conflicting_keys``)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except IsADirectoryError:  # was "not found", though it is there: a folder given for the file
        raise error(f"{path}: is a folder, not a JSON file; give the file itself") from None
    return parse_json_bytes(data, str(path), error, invalid, unique_keys)


class _ConflictingKey(ValueError):
    """An object of the JSON text gives ``key`` two different values."""

    def __init__(self, key: str, first: Any, last: Any) -> None:
        super().__init__(key)
        self.key, self.first, self.last = key, first, last


def _refuse_conflicting_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' object hook: JSON readers keep a repeated key's last value without a word, so a dataset.json
    with ``"tumor": 1, "tumor": 2`` (a class pasted twice) or two ``"0"`` channels lost one of them, and was refused
    for what remained (``label values must be consecutive ... got [0, 2]``) or read as the other modality.
    A key repeated with the same value loses nothing and is let be."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found and found[key] != value:
            raise _ConflictingKey(key, found[key], value)
        found[key] = value
    return found


def parse_json_bytes(data: bytes, where: str, error: type[AutosegError], invalid: str, unique_keys: bool = False) -> Any:
    """Parse JSON ``data`` read from ``where`` (a file, a zip member); raise ``error`` naming ``where`` and what is
    wrong: a byte-order mark, another encoding than UTF-8, or the syntax (then ``invalid`` is the fix); with
    ``unique_keys``, also an object giving one key two values (``_refuse_conflicting_keys``).

    One decoder for files and zip members alike: import-model called a member with a BOM "not valid JSON".
    """
    if problem := _encoding_problem(data):
        raise error(f"{where}: {problem}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # was "is not valid JSON (...); fix the syntax": the syntax may be right
        raise error(f"{where}: is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}): save it as UTF-8 if "
                    f"an editor wrote it in another encoding (Latin-1, Windows-1252); else {invalid}") from None
    try:
        return json.loads(text, object_pairs_hook=_refuse_conflicting_keys if unique_keys else None)
    except _ConflictingKey as exc:
        first, last = (json.dumps(value)[:60] for value in (exc.first, exc.last))
        raise error(f"{where}: gives the key {json.dumps(exc.key)} twice in one object, as {first} and {last}; a JSON "
                    "reader keeps only the last: remove or rename one") from None
    except json.JSONDecodeError as exc:
        raise error(f"{where}: is not valid JSON ({exc}); {invalid}") from None
    except RecursionError:  # was an internal error (import-model of a zip with such a member)
        raise error(f"{where}: nests arrays or objects deeper than a JSON reader follows (no file autoseg or nnU-Net "
                    f"writes); {invalid}") from None
    except ValueError:  # Python's limit on converting long integer literals; was "a field of the wrong type"
        raise error(f"{where}: holds an integer of more than {sys.get_int_max_str_digits()} digits (no file autoseg "
                    f"or nnU-Net writes); {invalid}") from None


def lone_surrogate_location(data: Any, where: str = "") -> str | None:
    """Where parsed JSON holds a string (key or value) with a lone surrogate (``"\\ud800"``: half of a UTF-16
    pair, which encodes no character), as ``labels["\\ud800x"]``; None if nowhere. JSON's syntax allows the
    escape, but no such text can be written as UTF-8: a label name holding one passed verify, then failed
    evaluate with an internal error after summary.json was written."""
    if isinstance(data, str):
        return (where or "the top level") if has_lone_surrogate(data) else None
    if isinstance(data, list):
        found = (lone_surrogate_location(value, f"{where}[{index}]") for index, value in enumerate(data))
    elif isinstance(data, dict):
        found = (f"{where}[{json.dumps(key)}] (the key)" if has_lone_surrogate(key)
                 else lone_surrogate_location(value, f"{where}[{json.dumps(key)}]" if where else key)
                 for key, value in data.items())
    else:
        return None
    return next((location for location in found if location is not None), None)
