"""The preprocessed store: one compressed, chunked blosc2 array per case plus a properties JSON.

Per case in ``<preprocessed>/<Dataset>/<data_identifier>/``: ``<case>.b2nd`` (float32 (C, z, y, x)),
``<case>_seg.b2nd`` (int16 (1, z, y, x), -1 outside the nonzero mask) and ``<case>.json``. The JSON is
written last and is the "case complete" marker: a case without it (a killed run) does not exist for
``list_cases`` and is redone. Writes are renamed into place without an fsync each (atomic against a
kill; a re-run redoes what a power loss might have lost): hundreds of fsyncs took a fifth of the stage.
A stored case is checked whenever it is opened (``open_case``): a file cut short, emptied or overwritten
raises ``PreprocessingError`` naming it, and ``autoseg preprocess`` redoes such a case. Each array records
its compressed chunks' CRC-32 (vlmeta ``chunk_crc32``), checked on a handle's first read: bytes changed
inside a chunk are named instead of decompressing into wrong values.
Arrays are chunked per channel so that a training patch decompresses only
the chunks it touches (``blosc2.open`` memory-maps the file). Codec, level and chunk shape were chosen by
the measurement in ``docs/preprocessing.md`` (``benchmarks/store_codecs.py``).
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import blosc2
import numpy as np

from autoseg.errors import PreprocessingError
from autoseg.utils.atomic import FolderLocked, atomic_path, atomic_write_json, folder_lock, holder_text
from autoseg.utils.jsonio import read_json

DATA_SUFFIX = ".b2nd"
SEG_SUFFIX = "_seg.b2nd"
PROPERTIES_SUFFIX = ".json"
CODEC = blosc2.Codec.ZSTD  # see docs/preprocessing.md for the measurement behind these three
CLEVEL = 1
CHUNK_EDGE = 64  # spatial chunk edge when no patch size is given
CHUNK_CHECKSUMS = "chunk_crc32"  # vlmeta key: each compressed chunk's CRC-32, in chunk order
BLOCK_BYTES = 32 * 1024  # blosc2 block (the unit decompressed per access) ~ L1/L2-cache sized
# Foreground oversampling (reference §1.4): per class max(min(10000, n), ceil(0.01 n)) stored voxels.
LOCATIONS_MIN = 10000
LOCATIONS_FRACTION = 0.01
# How long train's store check waits for a preprocess run writing into the store (a case it stores again fails
# the check meanwhile), polling the exclusive lock: a blocking wait could last the whole run (check_stored).
STORE_WAIT_SECONDS = 30.0
STORE_POLL_SECONDS = 0.2


def case_paths(folder: Path, case_id: str) -> tuple[Path, Path, Path]:
    return folder / f"{case_id}{DATA_SUFFIX}", folder / f"{case_id}{SEG_SUFFIX}", folder / f"{case_id}{PROPERTIES_SUFFIX}"


def clashing_case_ids(case_ids: Iterable[str]) -> tuple[str, str] | None:
    """The first pair of case ids ``(x, x_seg)``: ``x_seg``'s stored image and ``x``'s stored label map are both
    ``x_seg.b2nd``, so preprocessing one overwrote the other without a word (and removing one deleted the other's)."""
    ids = set(case_ids)
    seg_tag = SEG_SUFFIX.removesuffix(DATA_SUFFIX)
    return next(((case, case + seg_tag) for case in sorted(ids) if case + seg_tag in ids), None)


def remove_case(folder: Path, case_id: str) -> bool:
    """Delete a case's stored files (properties first: without them the case is not listed); whether any was there."""
    paths = case_paths(folder, case_id)
    present = [p for p in (paths[2], paths[0], paths[1]) if p.exists()]
    for path in present:
        path.unlink(missing_ok=True)
    return bool(present)


def chunk_shapes(shape: Sequence[int], patch_size: Sequence[int] | None, itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunks, blocks) for an array (C, *spatial): one channel per chunk, chunk = patch size clipped to
    the image (a random patch touches at most 2 chunks per axis), blocks halved along the largest axis
    until one block is at most ``BLOCK_BYTES``."""
    spatial = shape[1:]
    edge = list(patch_size) if patch_size is not None else [CHUNK_EDGE] * len(spatial)
    edge = [1] * (len(spatial) - len(edge)) + edge  # a 2D patch (y, x) reads one slice at a time
    chunks = [1, *(max(1, min(int(p), int(s))) for p, s in zip(edge, spatial))]
    blocks = list(chunks)
    while math.prod(blocks) * itemsize > BLOCK_BYTES and max(blocks[1:]) > 1:
        axis = 1 + int(np.argmax(blocks[1:]))
        blocks[axis] = (blocks[axis] + 1) // 2
    return tuple(chunks), tuple(blocks)


def write_array(
    path: Path, array: np.ndarray, patch_size: Sequence[int] | None = None,
    codec: blosc2.Codec = CODEC, clevel: int = CLEVEL,
) -> None:
    """Write ``array`` (C, *spatial) as a chunked blosc2 file, atomically."""
    chunks, blocks = chunk_shapes(array.shape, patch_size, array.dtype.itemsize)
    cparams = blosc2.CParams(codec=codec, clevel=clevel, typesize=array.dtype.itemsize, nthreads=1)
    with atomic_path(path, suffix=DATA_SUFFIX, durable=False) as tmp:
        tmp.unlink()  # blosc2 creates the file itself
        written = blosc2.asarray(
            np.ascontiguousarray(array), urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams
        )
        written.schunk.vlmeta[CHUNK_CHECKSUMS] = chunk_checksums(written.schunk)
        del written  # flush and close before the rename


def chunk_checksums(schunk: Any) -> list[int]:
    """The CRC-32 of each compressed chunk: zstd frames carry no checksum, so bytes changed inside a
    chunk mostly decompressed into wrong values without an error."""
    return [zlib.crc32(schunk.get_chunk(i)) for i in range(schunk.nchunks)]


def save_case(
    folder: str | Path, case_id: str, data: np.ndarray, seg: np.ndarray | None, properties: dict[str, Any],
    patch_size: Sequence[int] | None = None,
) -> None:
    """Store one case atomically: arrays first, properties JSON (the completion marker) last.

    A previous marker is removed first, so arrays and marker never disagree after a kill. Written under a
    shared lock of the folder (writers of other cases share it), which ``check_stored`` waits for.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data_path, seg_path, json_path = case_paths(folder, case_id)
    with folder_lock(folder, shared=True):
        json_path.unlink(missing_ok=True)
        write_array(data_path, data.astype(np.float32, copy=False), patch_size)
        if seg is not None:
            write_array(seg_path, seg.astype(np.int16, copy=False), patch_size)
        atomic_write_json(json_path, properties, indent=None, durable=False)  # compact: class locations are large


def _damage_note(folder: Path, delete: bool = False) -> str:
    """What a damaged case means and its fix: ``preprocess`` redoes a case that fails ``open_case``'s
    checks; damage inside a file passes them, so that file must be deleted first (``delete``)."""
    rerun = _rerun_advice(folder)
    fix = f"delete the file, then {rerun}" if delete else rerun
    return f"the preprocessed case is damaged (a power loss, a full disk or an interrupted copy?): {fix}"


def _rerun_advice(folder: Path) -> str:
    return (f"re-run `autoseg preprocess {folder.parent.name}` with the -c and --plans-name that made "
            f"{folder.name}; it redoes this case")


def damaged(path: Path, problem: str, delete: bool = False) -> PreprocessingError:
    """The error for a stored file that cannot be used: the file, what is wrong with it and the fix."""
    return PreprocessingError(f"{path}: {problem}; {_damage_note(path.parent, delete)}")


class OutdatedStore(PreprocessingError):
    """A stored array written before the chunk checksums (``preprocess`` redoes its case as stale)."""


def _require_file(path: Path) -> None:
    """A stored file must exist and hold bytes (after a power loss a renamed file may be empty)."""
    if not path.is_file():
        raise damaged(path, "is missing")
    if path.stat().st_size == 0:
        raise damaged(path, "is empty (0 bytes)")


def load_properties(folder: str | Path, case_id: str) -> dict[str, Any]:
    """A case's properties JSON; ``PreprocessingError`` naming it when it is missing, empty or no JSON object."""
    path = case_paths(Path(folder), case_id)[2]
    _require_file(path)
    note = _damage_note(path.parent)
    properties = read_json(path, PreprocessingError, f"is missing; {note}", note)
    if not isinstance(properties, dict):
        raise damaged(path, f"holds a JSON {type(properties).__name__}, not the case's properties object")
    return properties


class StoredArray:
    """A stored array's blosc2 handle whose reads name the file when a chunk cannot be decompressed (damage
    inside the file, which opening cannot see: it reads only the header and trailer)."""

    def __init__(self, path: Path, array: blosc2.NDArray, checksums: list[int]) -> None:
        self.path, self.array, self.checksums = path, array, checksums
        self._verified = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Decompress ``key``'s region (only the chunks it touches); the first read checks every chunk's
        checksum (``verify_chunks``)."""
        try:
            if not self._verified:
                self.verify_chunks()
            return self.array[key]
        except RuntimeError as exc:  # blosc2: "Error while getting the buffer"
            raise damaged(self.path, f"a chunk cannot be decompressed ({exc})", delete=True) from None

    def verify_chunks(self) -> None:
        """Compare each compressed chunk with the CRC-32 written with it (once per handle: a read of the
        compressed file, measured at 0.15-0.4x decompressing it whole; docs/preprocessing.md)."""
        found, recorded = chunk_checksums(self.array.schunk), self.checksums
        changed = [i for i, (a, b) in enumerate(zip(found, recorded)) if a != b]
        if changed or len(found) != len(recorded):
            raise damaged(self.path, f"chunk(s) {', '.join(map(str, changed or [len(recorded)]))} of {len(found)} "
                                     "do not match the checksums written with them (bytes changed inside the file)",
                          delete=True)
        self._verified = True


def open_array(path: Path, dtype: np.dtype, spatial_shape: Sequence[int] | None) -> StoredArray:
    """Open a stored array and check it cheaply, without decompressing it: blosc2 reads the header and
    trailer (a file cut short or overwritten fails there), the header's compressed size must fit in the
    file, and dtype and spatial shape must be those of its properties (``None``: not recorded). An array
    without its chunks' checksums (stored by autoseg before them) is refused as ``OutdatedStore``: read
    unchecked, damage inside it would decompress into wrong values without a word, for good."""
    _require_file(path)
    try:
        array = blosc2.open(str(path), mode="r", mmap_mode="r")
        vlmeta = array.schunk.vlmeta if isinstance(array, blosc2.NDArray) else {}
        checksums = [int(c) for c in vlmeta[CHUNK_CHECKSUMS]] if CHUNK_CHECKSUMS in vlmeta else None
    # blosc2 says only "... returned NULL"; a changed header byte can overflow a field (OverflowError), a
    # changed trailer fail its msgpack (ValueError)
    except (RuntimeError, ValueError, OSError, OverflowError, TypeError):
        raise damaged(path, "cannot be opened as a blosc2 array (cut short or overwritten)") from None
    if not isinstance(array, blosc2.NDArray):
        raise damaged(path, f"holds a blosc2 {type(array).__name__}, not an array")
    size = path.stat().st_size
    if size < array.schunk.cbytes:
        raise damaged(path, f"is {size} bytes, less than the {array.schunk.cbytes} compressed bytes its header records")
    if array.dtype != dtype:
        raise damaged(path, f"holds {array.dtype} values, not {np.dtype(dtype)}")
    if spatial_shape is not None and list(array.shape[1:]) != list(spatial_shape):
        raise damaged(path, f"holds an array of shape {tuple(array.shape)}, where its properties say "
                            f"{list(spatial_shape)} voxels (shape_after_resampling)")
    if checksums is None:
        raise OutdatedStore(f"{path}: was stored by an older autoseg, without the checksums of its chunks that every "
                            f"read now checks; {_rerun_advice(path.parent)}")
    return StoredArray(path, array, checksums)


def open_arrays(
    folder: str | Path, case_id: str, spatial_shape: Sequence[int] | None = None
) -> tuple[StoredArray, StoredArray | None]:
    """``(data, seg)`` handles of a stored case, each checked by ``open_array``; ``seg`` is None when the
    case was stored without labels."""
    data_path, seg_path, _ = case_paths(Path(folder), case_id)
    seg = open_array(seg_path, np.dtype(np.int16), spatial_shape) if seg_path.exists() else None
    return open_array(data_path, np.dtype(np.float32), spatial_shape), seg


def check_stored(folder: str | Path, case_id: str) -> None:
    """``open_case``'s checks but the parsing of the properties (large: class locations), for a training
    case (labels required), so that training can check every case before its first batch: a damaged
    case stops it at the start, not hours later. A case that fails is checked again until it passes, or no
    preprocess run holds the folder (the store's shared lock, held for the run's whole storing), for at most
    ``STORE_WAIT_SECONDS``: a preprocess run re-storing it (marker removed, arrays replaced) made a training started
    meanwhile report it as damaged, and the run holding the folder may be the re-run that a damaged or outdated case's
    message advises, redoing it. Past the wait a damaged case is refused naming its file and fix; without a run
    holding the folder, at once."""
    check_stored_cases(folder, [case_id])


def check_stored_cases(folder: str | Path, case_ids: Sequence[str]) -> None:
    """``check_stored`` of each case, with one bounded wait for them all: a wait of ``STORE_WAIT_SECONDS`` each made a
    train whose split names 200 cases a preprocess run was storing wait 100 minutes before refusing them."""
    folder = Path(folder)
    failing = _failures(folder, case_ids)
    if failing and not folder.is_dir():
        _check_stored_once(folder, next(iter(failing)))  # raises: names the first case's missing file
    if failing:
        _check_without_writers(folder, failing)


def _failures(folder: Path, case_ids: Iterable[str]) -> dict[str, PreprocessingError | None]:
    """The cases of ``case_ids`` failing their check now, each with the check's error where its marker stayed there
    unchanged throughout (a writer removes the marker before it touches the arrays, ``save_case`` and
    ``remove_case``, and renames every file into place whole: the case is damaged or outdated, unless a run redoes
    it later), None where a writer is storing it again (marker gone or replaced)."""
    failures: dict[str, PreprocessingError | None] = {}
    for case_id in case_ids:
        before = marker_state(folder, case_id)
        try:
            _check_stored_once(folder, case_id)
        except PreprocessingError as exc:
            failures[case_id] = exc if before is not None and marker_state(folder, case_id) == before else None
    return failures


def marker_state(folder: Path, case_id: str) -> tuple[int, int, int, int] | None:
    """The case's marker (properties file): its inode, size and times, None where it is missing. Equal before and
    after a failing check of the case, no writer touched the case meanwhile (each removes the marker first)."""
    try:
        info = case_paths(folder, case_id)[2].stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def _check_without_writers(folder: Path, failing: dict[str, PreprocessingError | None]) -> None:
    """Check the cases again under the folder's exclusive lock, polled for at most ``STORE_WAIT_SECONDS``: Linux
    grants new shared locks while an exclusive one waits, so a blocking wait lasted a whole ``preprocess -np 2``
    run, the training silent meanwhile. While a run holds the folder (for its whole storing), the cases passing their
    check once stored again ends the wait: it waited for the run's other cases. Past the bound the cases are refused,
    naming the writing run (``_refused_while_written``)."""
    deadline, pending = None, failing
    while True:
        try:
            with folder_lock(folder, wait=False):
                for case_id in pending:
                    _check_stored_once(folder, case_id)
                return
        except FolderLocked as locked:
            pending = _failures(folder, pending)
            if not pending:
                return
            if deadline is None:
                deadline = time.monotonic() + STORE_WAIT_SECONDS
                print(f"waiting for a preprocess run writing into {folder}", file=sys.stderr, flush=True)
            elif time.monotonic() >= deadline:
                raise _refused_while_written(folder, pending, locked.pid) from None
            time.sleep(STORE_POLL_SECONDS)


def _refused_while_written(folder: Path, pending: dict[str, PreprocessingError | None], pid: int | None,
                           ) -> PreprocessingError:
    """The refusal of the cases still failing past the writers' wait: a case whose marker stayed unchanged is named
    with its damage and fix (its file, the re-run), the others counted; without one, the cases are probably being
    stored again."""
    damage = next((exc for exc in pending.values() if exc is not None), None)
    if damage is not None:
        others = len(pending) - 1
        counted = f"; {others} other case{' fails its' if others == 1 else 's fail their'} check too" if others else ""
        return type(damage)(
            f"{damage}{counted}; a preprocess run ({holder_text(pid)}) still holds this folder and did not store the "
            f"case again in the {STORE_WAIT_SECONDS:.0f} s waited for it: if it is that re-run, start train again once "
            "it has finished")
    ids = list(pending)
    failing = (f"case {ids[0]} fails its check" if len(ids) == 1 else
               f"{len(ids)} cases ({', '.join(ids[:5])}{'...' if len(ids) > 5 else ''}) fail their check")
    return PreprocessingError(
        f"{folder}: {failing} while a preprocess run ({holder_text(pid)}) has been writing into this folder for over "
        f"{STORE_WAIT_SECONDS:.0f} s, probably storing {'the case' if len(ids) == 1 else 'them'} again; start train "
        "again once that run has finished")


def _check_stored_once(folder: Path, case_id: str) -> None:
    for path in case_paths(folder, case_id):
        _require_file(path)
    open_arrays(folder, case_id)


def open_case(folder: str | Path, case_id: str) -> tuple[StoredArray, StoredArray | None, dict[str, Any]]:
    """``(data, seg, properties)`` of a stored case, the arrays checked against the properties
    (``open_array``): cheap (no chunk is decompressed), so ``preprocess`` runs it on every case it would
    skip. ``PreprocessingError`` names a damaged file."""
    properties = load_properties(folder, case_id)
    data, seg = open_arrays(folder, case_id, properties.get("shape_after_resampling"))
    return data, seg, properties


def load_case(
    folder: str | Path, case_id: str, mmap: bool = True
) -> tuple[Any, Any | None, dict[str, Any]]:
    """``(data, seg, properties)`` of a stored case, checked by ``open_case``.

    With ``mmap`` the arrays are ``StoredArray`` handles: ``data[:, z0:z1, y0:y1, x0:x1]`` returns a
    numpy patch and decompresses only the chunks it touches. Without, they are numpy arrays. ``seg`` is
    None when the case was stored without labels.
    """
    data, seg, properties = open_case(folder, case_id)
    if mmap:
        return data, seg, properties
    return data[...], (None if seg is None else seg[...]), properties


def load_case_waiting(
    folder: str | Path, case_id: str, mmap: bool = True
) -> tuple[Any, Any | None, dict[str, Any]]:
    """``load_case``, retried once after ``check_stored``'s (bounded) wait for writers: a case that ``autoseg
    preprocess`` stores again while training, the final validation or the cascade reads it (marker removed, arrays
    replaced) was reported as damaged. A case still failing is named by the check or the retry."""
    try:
        return load_case(folder, case_id, mmap)
    except PreprocessingError:
        if not Path(folder).is_dir():
            raise
    check_stored(folder, case_id)
    return load_case(folder, case_id, mmap)


def list_cases(folder: str | Path) -> list[str]:
    """Case ids whose storing completed in ``folder`` (the properties JSON, written last, is there), sorted.

    A case whose arrays went missing afterwards is listed, so that opening it names the missing file
    instead of training silently leaving the case out."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(PROPERTIES_SUFFIX)] for p in folder.glob(f"*{PROPERTIES_SUFFIX}")
                  if not p.name.startswith("."))


def case_seed(case_id: str) -> int:
    """A stable per-case seed (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:4], "little")


def class_locations(seg: np.ndarray, labels: Sequence[int], seed: int) -> dict[str, list[list[int]]]:
    """Per foreground label, ``max(min(10000, n), ceil(0.01 n))`` of its n voxels as [z, y, x] lists.

    ``seg`` is (1, *spatial); each class's sample is drawn without replacement from its own stream of
    ``seed`` (so it does not depend on the other classes) and sorted.
    """
    spatial = seg[0]
    flat = spatial.reshape(-1)
    locations: dict[str, list[list[int]]] = {}
    for label in labels:
        index = np.flatnonzero(flat == label)
        n = index.size
        k = max(min(LOCATIONS_MIN, n), math.ceil(LOCATIONS_FRACTION * n))
        if k < n:
            rng = np.random.default_rng([seed, int(label)])
            index = np.sort(rng.choice(index, size=k, replace=False))
        coords = np.stack(np.unravel_index(index, spatial.shape), axis=1)
        locations[str(int(label))] = coords.astype(int).tolist()
    return locations
