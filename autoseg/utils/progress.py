"""Progress bars and the parallel map every stage uses over cases.

``parallel_map`` runs one function over many cases in worker processes, shows a progress bar, and
turns each failure into a ``Failure`` naming the case and the cause, including a worker killed by the
operating system (usually out of memory), which Python otherwise reports as a broken pool for every
case still queued.
"""

from __future__ import annotations

import multiprocessing
import numbers
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from autoseg.utils.cpu_load import available_cores
from autoseg.utils.worker_exit import exit_with_parent

T = TypeVar("T")

WORKER_DIED = (
    "the worker process died (killed by the operating system, most often for running out of memory); "
    "retry with fewer workers (-np) or on a machine with more RAM"
)


@dataclass
class Failure:
    """A case that failed: ``key`` names it, ``message`` says why (one line)."""

    key: str
    message: str


def progress_bar(disable: bool | None = None) -> Progress:
    """A rich progress bar with count, elapsed time and ETA, written to stderr.

    Disabled when stderr is not a terminal unless ``AUTOSEG_PROGRESS=1`` (so logs and CI stay clean).
    """
    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("AUTOSEG_PROGRESS") == "1")
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


def track(items: Sequence[T], description: str) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(items))
        for item in items:
            yield item
            bar.advance(task)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    if isinstance(exc, MemoryError):
        return "out of memory; retry with fewer workers (-np) or on a machine with more RAM"
    from autoseg.errors import AutosegError

    if isinstance(exc, AutosegError):
        return detail
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def default_workers() -> int:
    """Worker processes by default: the CPU cores available to this process."""
    return available_cores()


MAX_STAGE_WORKERS_PER_CORE = 4  # as training's num_workers: more processes per core only wait for each other


def most_stage_workers() -> int:
    """The most worker processes a stage's ``num_workers`` (``-np``) may ask for on this machine: ``-np 100000``
    started one process per case (a thousand for a thousand cases) until memory ran out."""
    return MAX_STAGE_WORKERS_PER_CORE * available_cores()


def stage_workers(num_workers: int | None, error: Callable[[str], Exception]) -> int:
    """Worker processes for a stage's ``num_workers``: None is every core available, 0 and 1 run in this
    process. From Python a negative count (joblib's -1 for 'every core') or a fraction ran in one process
    without a word (the CLI refuses them); ``error`` is the stage's error type. A count beyond
    ``most_stage_workers`` is lowered to it: ``-np 100000`` started one process per case, while nnU-Net's habitual
    ``-np 8`` on a one-core machine should still run (the CLI says so in a note)."""
    if num_workers is None:
        return default_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
        raise error(f"num_workers {num_workers!r}: give a whole number from 0 (0 or 1: in this process), or None for "
                    "every core available")
    return min(int(num_workers), most_stage_workers())


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork is fastest where safe (Linux); spawn elsewhere.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def parallel_map(
    func: Callable[..., Any],
    items: Sequence[tuple[str, tuple[Any, ...]]],
    num_workers: int,
    description: str,
    stop_on: tuple[type[Exception], ...] = (),
) -> tuple[dict[str, Any], list[Failure]]:
    """Run ``func(*args)`` for every ``(key, args)`` and return ``({key: result}, failures)``.

    With ``num_workers <= 1`` everything runs in this process (easy debugging). Failures never stop
    the other cases, except an error of a type in ``stop_on`` (a full disk fails every later case too),
    which is raised at once, the cases not yet started left undone. If a worker is killed, the cases it
    may have held are re-run one at a time in a fresh single-worker pool so the one that kills its worker
    is named exactly.
    """
    results: dict[str, Any] = {}
    failures: list[Failure] = []
    if not items:
        return results, failures
    # No more workers than cases: a fork pool starts them all at once, and verify -np 100000 on 3 cases started
    # thousands of processes before the machine refused more.
    num_workers = min(num_workers, len(items))
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(items))
        if num_workers <= 1:
            for key, args in items:
                try:
                    results[key] = func(*args)
                except stop_on:
                    raise
                except Exception as exc:  # noqa: BLE001 - reported per case
                    failures.append(Failure(key, _describe(exc)))
                bar.advance(task)
            return results, failures
        suspects = _run_pool(func, items, num_workers, results, failures, lambda: bar.advance(task), stop_on)
        for key, args in suspects:  # isolate the case(s) that kill their worker
            _run_pool(func, [(key, args)], 1, results, failures, lambda: bar.advance(task), stop_on, isolate=True)
    return results, failures


def _run_pool(
    func: Callable[..., Any],
    items: Iterable[tuple[str, tuple[Any, ...]]],
    num_workers: int,
    results: dict[str, Any],
    failures: list[Failure],
    advance: Callable[[], None],
    stop_on: tuple[type[Exception], ...] = (),
    isolate: bool = False,
) -> list[tuple[str, tuple[Any, ...]]]:
    """Run items in a pool; return the items lost to a dead worker (empty when ``isolate``)."""
    pending = list(items)
    lost: list[tuple[str, tuple[Any, ...]]] = []
    # Workers die with this process: killed by SIGKILL or SIGTERM it cannot tell them to stop.
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=_mp_context(),
                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures: dict[Future[Any], tuple[str, tuple[Any, ...]]] = {}
        # Keep at most 2 tasks per worker queued so a dead worker loses few cases.
        while pending or futures:
            while pending and len(futures) < 2 * num_workers:
                key, args = pending.pop(0)
                try:
                    futures[pool.submit(func, *args)] = (key, args)
                except BrokenProcessPool:
                    pending.insert(0, (key, args))
                    break
            if not futures:
                lost.extend(pending)
                break
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                key, args = futures.pop(future)
                try:
                    results[key] = future.result()
                except BrokenProcessPool:
                    if isolate:
                        failures.append(Failure(key, WORKER_DIED))
                        advance()
                    else:
                        lost.append((key, args))
                    continue
                except stop_on:
                    for queued in futures:  # the running ones finish before the pool closes
                        queued.cancel()
                    raise
                except Exception as exc:  # noqa: BLE001 - reported per case
                    failures.append(Failure(key, _describe(exc)))
                advance()
            if lost and not isolate:
                # The pool is broken: everything still queued is lost too; re-run those in isolation.
                lost.extend(futures.values())
                lost.extend(pending)
                futures.clear()
                pending.clear()
                break
    return lost
