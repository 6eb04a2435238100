"""Training batches: patch sampling from the preprocessed store, augmentation, background workers.

Every batch is a pure function of ``(seed, stream, rank, index)``: its RNG is seeded from those before
sampling, so the batches do not depend on how many workers produce them, and a resumed run sees exactly
the batches an uninterrupted one would have seen. Workers are plain processes with one queue each; when
one dies the trainer raises a TrainingError naming the worker and the cause (its exception, or the
signal that killed it, usually the out-of-memory killer) instead of waiting forever (reference.md §3).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import queue as queue_module
import random
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from autoseg.errors import AutosegError, TrainingError
from autoseg.training.augmentation import OUTSIDE_MASK_LABEL, training_transforms, validation_transforms
from autoseg.utils.cpu_load import available_cores
from autoseg.utils.progress import MAX_STAGE_WORKERS_PER_CORE, most_stage_workers
from autoseg.utils.worker_exit import exit_with_parent

TRAIN_STREAM = 0
# Key of a case's annotated voxels among its class locations (labels are digits: no clash).
ANNOTATED = "annotated"
VAL_STREAM = 1
# How often (seconds) the trainer checks a worker's health while waiting for its batch.
_POLL_SECONDS = 1.0
# Caps on automatic worker counts: CUDA training needs many augmenting workers to keep the GPU busy;
# CPU training competes with them for the same cores (reference.md §4), so it gets few.
_MAX_WORKERS_CUDA = 12
_MAX_WORKERS_CPU = 4
_CORES_PER_CPU_WORKER = 3


def batch_seed(seed: int, stream: int, rank: int, index: int) -> int:
    """A 32-bit seed for one batch, independent of every other batch's."""
    return int(np.random.SeedSequence([seed, stream, rank, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed the global ``np.random`` and ``random`` for one batch, and give the caller its state back.

    batchgenerators' transforms draw from those global generators and take no generator argument; so
    the batch owns them while it is built, and in-process batches leave the trainer's RNG untouched.
    """
    numpy_state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def auto_workers(device_type: str, world_size: int = 1) -> int:
    """Workers per rank for this machine: on CUDA all cores but one feed the GPU; on CPU the network
    computes on the same cores, so about one worker per three cores (at least one)."""
    # Ranks on this machine share its cores (LOCAL_WORLD_SIZE under torchrun; all ranks otherwise).
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    cores = max(1, available_cores() // max(1, local_ranks))
    if device_type == "cuda":
        return max(1, min(cores - 1, _MAX_WORKERS_CUDA))
    return max(1, min(cores // _CORES_PER_CPU_WORKER, _MAX_WORKERS_CPU))


def worker_count(chosen: int | str, device_type: str, world_size: int = 1) -> int:
    """Workers per rank for a ``num_workers`` setting: ``auto`` (see ``auto_workers``) or a count >= 0."""
    if chosen == "auto":
        return auto_workers(device_type, world_size)
    if not 0 <= int(chosen) <= most_stage_workers():
        raise TrainingError(f"num_workers must be >= 0 and at most {most_stage_workers()} ({MAX_STAGE_WORKERS_PER_CORE} per core "
                            f"of this machine) or 'auto', got {chosen}")
    return int(chosen)


@dataclass
class SamplingSpec:
    """What the batch source needs (plain values, so worker processes can receive it).

    Args:
        folder: the preprocessed store of the configuration.
        case_ids: cases to sample from.
        patch_size: the network's patch (spatial, 2 or 3 values).
        sample_size: the region cropped before spatial augmentation (>= patch_size).
        batch_size: samples per batch (this rank's share).
        oversample_foreground: share of each batch forced to contain foreground.
        foreground_labels: labels eligible as forced patch centres (no ignore label).
        previous_stage_folder: cascade only: ``<case>.npy`` label maps on this store's grid.
        previous_stage_labels: cascade only: the foreground labels one-hot encoded into the input.
        n_image_channels: image channels in the store.
        augmentation: the config's augmentation section; ``None`` for validation batches.
        case_cache_bytes: decompressed case arrays (images and labels) the source keeps in memory, case by
            case in the order it opens them, up to this many bytes; the rest stay store handles.
        ignore_label: the dataset's ignore label, if any: then every patch is centred on an annotated voxel
            (:meth:`BatchSource._annotated_voxels`).
        regions: region-based training: each region's labels; a forced patch then picks a region first
            (:meth:`BatchSource._region_voxel`).
        global_batch_size: the batch over all ranks (0: ``batch_size``, one process).
        batch_offset: where this rank's samples start in the global batch.
    """

    folder: Path
    case_ids: list[str]
    patch_size: list[int]
    sample_size: list[int]
    batch_size: int
    oversample_foreground: float
    foreground_labels: list[int]
    previous_stage_folder: Path | None = None
    previous_stage_labels: list[int] | None = None
    n_image_channels: int = 1
    augmentation: dict[str, Any] | None = None
    case_cache_bytes: int = 0
    ignore_label: int | None = None
    regions: list[list[int]] | None = None
    global_batch_size: int = 0
    batch_offset: int = 0


def case_cache_bytes(setting: float | str, train_workers: int, world_size: int = 1) -> int:
    """Bytes of decompressed cases each data process of a rank (``train_workers`` and their validation
    workers, or the rank itself without workers) may keep in memory, for the ``case_cache_mb`` setting:
    MiB, or ``auto``, an eighth of the machine's memory shared by the data processes of all its ranks, at
    most 1 GiB each."""
    if setting == "auto":
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        processes = max(1, train_workers + validation_workers(train_workers)) * max(1, local_ranks)
        return int(min(2**30, memory / 8 / processes))
    if isinstance(setting, str) or setting < 0:
        raise TrainingError(f"case_cache_mb is {setting!r}: give the MiB of decompressed cases a data worker may keep "
                            "in memory (0 or more; 0 reads every crop from the store) or auto")
    return int(setting * 2**20)


def forced_samples(spec: SamplingSpec, draw: float) -> list[bool]:
    """Which samples of this rank's batch are centred on foreground: the last ones of the global batch.

    nnU-Net's count (reference.md §1.5): the samples from ``round(global * (1 - share))`` on, so a batch
    of 2 at the default 0.33 forces one, the recipe every measured Dice of autoseg was trained with. That
    rule forces none of a batch of 1 (a small structure is then seen only by chance); where it forces none
    but the share is not 0, the last sample is forced when ``draw`` (uniform in [0, 1), the same on every
    rank: :func:`forced_share_draw`) falls below ``global x share``, so such a batch still forces its share
    in the long run.

    Counted in the global batch, not in each rank's share, so that a batch split over ranks forces the
    samples one process would: per rank, 2 of 4 samples on 2 ranks would be forced, none at all with one
    sample per rank (nnU-Net v2 likewise sets each rank's share from its place in the global batch)."""
    total = spec.global_batch_size or spec.batch_size
    forced_from = round(total * (1 - spec.oversample_foreground))
    if forced_from == total and draw < total * spec.oversample_foreground:
        forced_from = total - 1
    return [spec.batch_offset + j >= forced_from for j in range(spec.batch_size)]


def forced_share_draw(seed: int, stream: int, index: int) -> float:
    """The uniform draw that decides whether global batch ``index`` forces its last sample where nnU-Net's
    rule forces none (:func:`forced_samples`): seeded without the rank, so every rank of that batch agrees."""
    return float(np.random.default_rng([seed, stream, index]).random())


def _check_cases(folder: Path, case_ids: Sequence[str]) -> None:
    """Every case's files open (the store's cheap checks, well under a second for a thousand cases): a
    damaged case is named before training starts, not when a batch first samples it."""
    from autoseg.preprocessing.store import check_stored

    for case_id in case_ids:
        check_stored(folder, case_id)


class BatchSource:
    """Callable ``index -> {"data": float32 (B, C, *patch), "target": int16 (B, 1, *patch)}``."""

    def __init__(self, spec: SamplingSpec, seed: int, stream: int, rank: int = 0) -> None:
        if not spec.case_ids:
            raise TrainingError(f"{spec.folder}: no cases to sample batches from")
        _check_cases(spec.folder, spec.case_ids)
        self.spec = spec
        self.seed, self.stream, self.rank = seed, stream, rank
        self._cases: dict[str, tuple[Any, Any, dict[str, list[np.ndarray]], Any]] = {}
        self._voxel_counts: dict[str, dict[int, int]] = {}  # per case and label, with regions only
        self._cached_bytes = 0
        self._transforms: Any = None

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        spec = self.spec
        with seeded_global_rng(batch_seed(self.seed, self.stream, self.rank, index)):
            data, seg = self._empty_batch()
            draw = forced_share_draw(self.seed, self.stream, index)
            for j, forced in enumerate(forced_samples(spec, draw)):
                self._sample(forced, data[j], seg[j])
            if self._transforms is None:
                self._transforms = self._build_transforms()
            out = self._transforms(data=data, seg=seg)
        return {
            "data": np.ascontiguousarray(out["data"], dtype=np.float32),
            "target": np.ascontiguousarray(np.rint(out["seg"]), dtype=np.int16),
        }

    def _build_transforms(self) -> Any:
        spec = self.spec
        if spec.augmentation is None:
            return validation_transforms(spec.previous_stage_labels, spec.n_image_channels)
        return training_transforms(spec.patch_size, spec.augmentation, spec.previous_stage_labels, spec.n_image_channels)

    def _case(self, case_id: str) -> tuple[Any, Any, dict[str, list[np.ndarray]], Any]:
        if case_id not in self._cases:
            from autoseg.preprocessing.store import load_case_waiting  # waits for a preprocess storing it again

            data, seg, properties = load_case_waiting(Path(self.spec.folder), case_id)
            data, seg = self._decompressed(data, seg)
            locations = {
                str(label): np.asarray(points, dtype=np.int64)
                for label, points in (properties.get("class_locations") or {}).items()
            }
            if self.spec.ignore_label is not None and seg is not None:
                locations[ANNOTATED] = self._annotated_voxels(case_id, seg)
            if self.spec.regions and seg is not None:
                values, counts = np.unique(np.asarray(seg[0:1]), return_counts=True)
                self._voxel_counts[case_id] = dict(zip(values.tolist(), counts.tolist()))
            previous = None
            if self.spec.previous_stage_folder is not None:
                previous = np.load(Path(self.spec.previous_stage_folder) / f"{case_id}.npy", mmap_mode="r", allow_pickle=False)
            self._cases[case_id] = (data, seg, locations, previous)
        return self._cases[case_id]

    def _annotated_voxels(self, case_id: str, seg: Any) -> np.ndarray:
        """Up to ``LOCATIONS_MIN`` random voxels (z, y, x) of the case not holding the ignore label, drawn from
        the case's own stream (the same in every worker).

        nnU-Net v2 centres each patch of a dataset with an ignore label on such a voxel (its
        ``annotated_classes_key``): random patches of sparse annotations (scribbles, a few slices) would
        mostly hold ignored voxels alone, batches with nothing to learn. The store keeps foreground
        locations only, so these are drawn here, once per case."""
        from autoseg.preprocessing.store import LOCATIONS_MIN, case_seed

        annotated = np.asarray(seg[0:1])[0] != self.spec.ignore_label
        index = np.flatnonzero(annotated)
        if index.size > LOCATIONS_MIN:
            index = np.sort(np.random.default_rng(case_seed(case_id)).choice(index, LOCATIONS_MIN, replace=False))
        return np.stack(np.unravel_index(index, annotated.shape), axis=1).astype(np.int64)

    def _decompressed(self, data: Any, seg: Any) -> tuple[Any, Any]:
        """The case's arrays in memory while they fit ``case_cache_bytes`` (a crop is then a plain copy,
        where a store handle decompresses every chunk the crop touches, each time), else the handles."""
        arrays = [a for a in (data, seg) if a is not None]
        size = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays)
        if self._cached_bytes + size > self.spec.case_cache_bytes:
            return data, seg
        self._cached_bytes += size
        return data[...], (None if seg is None else seg[...])

    def _empty_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """A batch of ``sample_size`` crops filled with the padding values: images 0, labels
        OUTSIDE_MASK_LABEL, the previous stage's masks 0 (channel counts from the first case)."""
        spec = self.spec
        data, seg, _, previous = self._case(spec.case_ids[0])
        pad_values = (OUTSIDE_MASK_LABEL,) * seg.shape[0] + (0,) * (previous.shape[0] if previous is not None else 0)
        sample = list(spec.sample_size)
        images = np.zeros((spec.batch_size, data.shape[0], *sample), dtype=np.float32)
        labels = np.empty((spec.batch_size, len(pad_values), *sample), dtype=np.float32)
        labels[...] = np.asarray(pad_values, dtype=np.float32).reshape(1, -1, *([1] * len(sample)))
        return images, labels

    def _sample(self, force_foreground: bool, data_out: np.ndarray, seg_out: np.ndarray) -> None:
        """One ``sample_size`` crop into ``data_out`` / ``seg_out`` (one sample of :meth:`_empty_batch`):
        random, or centred on a random stored voxel of a random foreground class present in the case
        (reference.md §1.5); with an ignore label, otherwise centred on a random annotated voxel."""
        spec = self.spec
        case_id = spec.case_ids[np.random.randint(len(spec.case_ids))]
        data, seg, locations, previous = self._case(case_id)
        shape = list(data.shape[1:])
        centre = None
        if force_foreground:
            centre = self._region_voxel(case_id, locations) if spec.regions else self._foreground_voxel(locations)
        if centre is None and len(locations.get(ANNOTATED, ())) > 0:  # ignore label: on an annotated voxel
            centre = _random_row(locations[ANNOTATED])
        region: list[slice | int] = []
        sample = list(spec.sample_size)
        if len(sample) == 2:  # 2D configuration on a 3D store: pick a slice first
            z = int(centre[0]) if centre is not None else np.random.randint(shape[0])
            region.append(z)
            shape, centre = shape[1:], (centre[1:] if centre is not None else None)
        starts = _patch_starts(shape, sample, spec.patch_size[-len(sample):], centre)
        spatial = [slice(max(s, 0), min(s + p, n)) for s, p, n in zip(starts, sample, shape)]
        index = (slice(None), *region, *spatial)
        # The crop goes straight into its place in the batch, in the float32 the transforms take: one copy
        # instead of np.pad, astype and stack per channel (this runs for every sample of every batch, and the
        # crop is the region rotation and scaling may reach, many times the patch).
        inner = (slice(None), *(slice(max(-s, 0), max(-s, 0) + k.stop - k.start) for s, k in zip(starts, spatial)))
        data_out[inner] = data[index]
        seg_out[(slice(0, seg.shape[0]), *inner[1:])] = seg[index]
        if previous is not None:
            seg_out[(slice(seg.shape[0], None), *inner[1:])] = previous[index]

    def _foreground_voxel(self, locations: dict[str, np.ndarray]) -> np.ndarray | None:
        classes = [str(c) for c in self.spec.foreground_labels if len(locations.get(str(c), ())) > 0]
        if not classes:
            return None  # no foreground in this case: a random patch, as nnU-Net does
        return _random_row(locations[classes[np.random.randint(len(classes))]])

    def _region_voxel(self, case_id: str, locations: dict[str, np.ndarray]) -> np.ndarray | None:
        """A random voxel of a random region present in the case, as nnU-Net v2 picks them (it stores
        locations per region): a label of the region with the share of the region's voxels it holds,
        then one of that label's stored voxels (a uniform sample of them). Picking a label at random
        instead would centre a region's small label as often as its large ones, and the smallest region
        (a tumour's enhancing part) far less often than nnU-Net does."""
        counts = self._voxel_counts[case_id]
        stored = [[label for label in region if len(locations.get(str(label), ())) > 0] for region in self.spec.regions or []]
        present = [labels for labels in stored if labels]
        if not present:
            return None
        labels = present[np.random.randint(len(present))]
        sizes = np.array([counts.get(label, 0) for label in labels], dtype=float)
        label = labels[int(np.searchsorted(np.cumsum(sizes), np.random.uniform() * sizes.sum(), side="right"))]
        return _random_row(locations[str(label)])


def _random_row(points: np.ndarray) -> np.ndarray:
    """A random voxel of ``points`` as (z, y, x) (stored possibly with a leading channel index)."""
    return points[np.random.randint(len(points))][-3:]


def _patch_starts(
    shape: Sequence[int], sample: Sequence[int], patch: Sequence[int], centre: Sequence[int] | None
) -> list[int]:
    """Start per axis of the ``sample``-sized crop around a ``patch``.

    nnU-Net v2's bounds: the crop may leave the image by its margin over the patch (padded), so the
    patch itself reaches every voxel up to the border; images smaller than the crop are padded on both
    sides. A forced centre is clipped into the same range."""
    starts = []
    for axis, (n, p, q) in enumerate(zip(shape, sample, patch)):
        need = max(p - n, p - q, 0)
        low, high = -(need // 2), n + need // 2 + need % 2 - p
        if centre is not None:
            starts.append(int(np.clip(int(centre[axis]) - p // 2, low, high)))
        else:
            starts.append(int(np.random.randint(low, high + 1)))
    return starts


# ---------------------------------------------------------------------------------------------------
# Background workers


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork shares the already-imported modules (fast start); elsewhere spawn is the only safe choice.
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "out of memory while building a batch; lower num_workers or the batch size"
    if isinstance(exc, AutosegError):  # already says which file is wrong and how to fix it
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    detail = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {detail[0] if detail else ''}{where}"


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped responding"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return (
                f"it was killed by {name}, most often the operating system's out-of-memory killer; "
                "lower num_workers (--set num_workers=N) or the batch size, or free memory"
            )
        return f"it was killed by {name}"
    return f"it exited with code {exitcode}"


def _worker_main(source: Callable[[int], Any], first: int, stride: int, out: Any, parent_pid: int) -> None:
    """Produce batches ``first, first + stride, ...`` until terminated (or the trainer ``parent_pid``
    dies: killed, it never terminates us); report an exception and stop."""
    exit_with_parent(parent_pid)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    # One BLAS thread too: batchgenerators' rotation is a numpy matrix product, and OpenBLAS's default of
    # one thread per core left a second thread spinning on the core the trainer's math threads need
    # (a worker's CPU per Hippocampus batch: 0.039-0.042 s with two, 0.023-0.026 s with one, equal wall).
    threadpool_limits(1)
    index = first
    try:
        for index in itertools.count(first, stride):
            out.put(("batch", index, source(index)))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the trainer
        out.put(("error", index, _describe_exception(exc)))


class BatchStream:
    """Batches ``start, start + 1, ...`` of a source, from ``num_workers`` processes or in-process (0).

    With workers and ``pin_memory`` a thread of this process receives the batches and copies them into
    page-locked torch tensors ahead of use (as torch's DataLoader does), so the training loop only
    starts an asynchronous host-to-device copy.
    """

    def __init__(
        self,
        source: Callable[[int], dict[str, np.ndarray]],
        start: int = 0,
        num_workers: int = 0,
        prefetch: int = 2,
        timeout_seconds: float = 600.0,
        name: str = "data loading",
        pin_memory: bool = False,
    ) -> None:
        self.source = source
        self.first = self.next_index = start
        self.timeout = timeout_seconds
        self.name = name
        self.workers: list[Any] = []
        self.queues: list[Any] = []
        context = _mp_context()
        for w in range(num_workers):
            out = context.Queue(maxsize=max(1, prefetch))
            process = context.Process(
                target=_worker_main, args=(source, start + w, num_workers, out, os.getpid()), name=f"{name} worker {w}", daemon=True
            )
            process.start()
            self.workers.append(process)
            self.queues.append(out)
        self._pinned: queue_module.Queue[tuple[str, Any]] | None = None
        self._stop = threading.Event()
        self._pin_thread: threading.Thread | None = None
        if pin_memory and self.workers:
            import torch

            # The CUDA device is per thread: pin under this rank's device, not device 0 (as torch's DataLoader).
            cuda_device = torch.cuda.current_device() if torch.cuda.is_available() else None
            self._pinned = queue_module.Queue(maxsize=max(1, prefetch))
            self._pin_thread = threading.Thread(
                target=self._pin_loop, args=(cuda_device,), name=f"{name} pinning", daemon=True
            )
            self._pin_thread.start()

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            if self._pinned is not None:
                kind, payload = self._pinned.get()
                if kind == "error":
                    raise payload
                return payload
            return self._next_batch()
        except TrainingError:
            self.close()
            raise

    def _next_batch(self) -> dict[str, np.ndarray]:
        index = self.next_index
        self.next_index += 1
        if not self.workers:
            try:
                return self.source(index)
            except MemoryError as exc:
                raise TrainingError(f"{self.name}: {_describe_exception(exc)}") from exc
        return self._receive((index - self.first) % len(self.workers), index)

    def _pin_loop(self, cuda_device: int | None) -> None:
        """Thread body: receive batches in order, pin them, hand them over; an error ends the stream."""
        import torch

        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            while not self._stop.is_set():
                batch = {key: torch.from_numpy(value).pin_memory() for key, value in self._next_batch().items()}
                self._hand_over(("batch", batch))
        except TrainingError as exc:
            self._hand_over(("error", exc))
        except BaseException as exc:  # noqa: BLE001 - e.g. pinning failed: reported in the main thread
            self._hand_over(("error", TrainingError(f"{self.name}: pinning a batch failed: {_describe_exception(exc)}")))

    def _hand_over(self, item: tuple[str, Any]) -> None:
        while not self._stop.is_set():
            try:
                self._pinned.put(item, timeout=_POLL_SECONDS)  # type: ignore[union-attr]
                return
            except queue_module.Full:
                continue

    def _receive(self, w: int, index: int) -> dict[str, np.ndarray]:
        process, out = self.workers[w], self.queues[w]
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                kind, got, payload = out.get(timeout=_POLL_SECONDS)
            except queue_module.Empty:
                if self._stop.is_set():
                    raise TrainingError(f"{self.name}: the stream was closed") from None
                if not process.is_alive():
                    raise TrainingError(
                        f"{self.name} worker {w} (pid {process.pid}) died while preparing batch {index}: "
                        f"{_describe_exit(process.exitcode)}"
                    ) from None
                if time.monotonic() > deadline:
                    raise TrainingError(
                        f"{self.name} worker {w} (pid {process.pid}) produced no batch in {self.timeout:g} s; "
                        "it may be stuck reading the data (raise worker_timeout_seconds for very large patches)"
                    ) from None
                continue
            if kind == "error":
                raise TrainingError(f"{self.name} worker {w} failed on batch {got}: {payload}")
            if got != index:  # cannot happen with one ordered queue per worker; guards the invariant
                raise TrainingError(f"{self.name} worker {w} returned batch {got} where {index} was expected")
            return payload

    def close(self) -> None:
        self._stop.set()
        if self._pin_thread is not None and self._pin_thread is not threading.current_thread():
            self._pin_thread.join(timeout=5 * _POLL_SECONDS)
        for process in self.workers:
            if process.is_alive():
                process.terminate()
        for process, out in zip(self.workers, self.queues):
            process.join(timeout=5)
            out.cancel_join_thread()
            out.close()
        self.workers, self.queues = [], []

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validation_workers(train_workers: int) -> int:
    """Processes for pseudo-validation batches: half the training workers (nnU-Net v2's share), none
    when training loads in-process. Validation batches are only cropped, so fewer suffice."""
    return max(1, train_workers // 2) if train_workers > 0 else 0


def batch_to_device(batch: dict[str, Any], device: Any, memory_format: Any) -> tuple[Any, Any]:
    """``(data, target)`` tensors on ``device``; pinned batches (from :class:`BatchStream`'s pinning
    thread) are copied asynchronously, others with a plain blocking copy."""
    import torch

    data, target = (torch.as_tensor(batch[key]) for key in ("data", "target"))
    non_blocking = device.type == "cuda" and data.is_pinned()
    data = data.to(device, non_blocking=non_blocking).contiguous(memory_format=memory_format)
    return data, target.to(device, non_blocking=non_blocking)
