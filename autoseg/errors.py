"""User-facing error types.

Every error a user can cause is raised as one of these, with the file, the problem and the fix in
the message. The CLI prints the message on one line and exits with ``exit_code``; nothing else
ever reaches the user as a traceback.
"""

from __future__ import annotations

import errno


class AutosegError(Exception):
    """Base class of all errors caused by user input or environment; exit code 2."""

    exit_code: int = 2


class DatasetError(AutosegError):
    """The raw dataset (dataset.json, images, labels) is missing or malformed."""


class FingerprintError(AutosegError):
    """A fingerprint is missing, unreadable or inconsistent with its dataset."""


class PlanError(AutosegError):
    """A plans file is missing, malformed, or a requested configuration cannot be planned."""


class PreprocessingError(AutosegError):
    """Preprocessing of one or more cases failed."""


class NetworkError(AutosegError):
    """An unknown network or a topology the network cannot be built from."""


class TrainingError(AutosegError):
    """Training cannot start or continue (bad config override, missing data, dead worker...)."""


class InferenceError(AutosegError):
    """Prediction failed for a model folder or one or more input cases."""


class EvaluationError(AutosegError):
    """Predictions and references cannot be compared (missing files, geometry mismatch...)."""


class ModelFileError(AutosegError):
    """An exported model file is tampered, incomplete or incompatible."""


class UsageError(AutosegError):
    """A command-line value is malformed (a duration, a fold, an override)."""


# torch's CPU allocator reports a failed allocation as a RuntimeError, not a MemoryError:
# "[enforce fail at alloc_cpu.cpp:127] ... DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes".
CPU_ALLOCATION_FAILURE = "can't allocate memory"
# GPU memory running out that torch raises as a plain RuntimeError, not its OutOfMemoryError: a CUDA kernel
# or the caching allocator failing ("CUDA error: out of memory"), the MPS backend ("MPS backend out of memory"),
# and torch before 2.x ("CUDA out of memory. Tried to allocate ...").
GPU_ALLOCATION_FAILURES = ("CUDA error: out of memory", "MPS backend out of memory", "CUDA out of memory")
GPU_MEMORY_FIX = "re-plan with a smaller --gpu-memory (smaller patch/batch) or use a GPU with more memory"
# How a command that ran out of RAM needs less; the others take fewer worker processes (-np) where they
# have them, else a machine with more RAM.
RAM_FIXES = {
    "train": "train with a smaller --set batch_size=N or --set patch_size=[...], fewer data workers (--workers), or "
             "plan for this machine with autoseg plan ... --budget",
    "predict": "predict on a machine with more RAM, or with --no-tta / fewer folds",
}
WORKERS_RAM_FIX = "use fewer worker processes (-np) or a machine with more RAM"
MORE_RAM_FIX = "use a machine with more RAM"


def is_gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says GPU memory ran out: torch's OutOfMemoryError, or a plain RuntimeError with CUDA's
    or MPS's out-of-memory wording (which were reported as internal errors)."""
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and any(failure in str(exc) for failure in GPU_ALLOCATION_FAILURES))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: a MemoryError (Python, numpy), GPU memory running out (see
    ``is_gpu_out_of_memory``), torch's CPU allocator failing, which raises a plain RuntimeError, or the system
    refusing memory to a call (ENOMEM, e.g. starting worker processes: an OSError)."""
    return (isinstance(exc, MemoryError) or is_gpu_out_of_memory(exc)
            or (isinstance(exc, RuntimeError) and CPU_ALLOCATION_FAILURE in str(exc))
            or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM))


def memory_error_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message; torch's CPU allocator's from its complaint on, past the source
    location it starts with ("[enforce fail at alloc_cpu.cpp:127] err == 0.")."""
    first = (str(exc).strip().splitlines() or [""])[0]
    start = first.find(CPU_ALLOCATION_FAILURE) if first.startswith("[enforce fail") else -1
    return first[start:] if start >= 0 else first


def out_of_memory_message(exc: BaseException, command: str, takes_workers: bool) -> str | None:
    """One line for memory running out in ``command`` (with a -np option when ``takes_workers``), which is
    no bug: what ran out and how to need less; None for any other error. torch's CPU allocator failing
    ended as 'internal error ... this is a bug', and export-model was told to use -np, which it lacks."""
    if not is_out_of_memory(exc):
        return None
    first = memory_error_line(exc)
    detail = f" ({first})" if first else ""
    if is_gpu_out_of_memory(exc):
        return f"out of GPU memory{detail}; {GPU_MEMORY_FIX}"
    fix = RAM_FIXES.get(command, WORKERS_RAM_FIX if takes_workers else MORE_RAM_FIX)
    return f"out of memory (RAM){detail}; {fix}"
