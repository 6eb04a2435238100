"""What a training run shows and leaves behind: progress bar, text log, metrics.jsonl, progress.png.

The metrics history lives in the checkpoint; ``metrics.jsonl`` and ``progress.png`` are rewritten from
it every epoch (atomically), so after a resume they hold exactly the epochs the checkpoint holds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from autoseg.training.distributed import launched_by_torchrun
from autoseg.utils.atomic import atomic_path, atomic_write_text

LOG_FILE = "training_log.txt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "progress.png"

# Iterations excluded from speed measurements (allocation, oneDNN / cuDNN kernel selection).
WARMUP_ITERATIONS = 2
# Redraws of the bar per second. Rich's default of 10 costs about 1.3 ms of CPU per redraw on the 2-core
# AMD EPYC, 1.3% of a core that the math threads share; at 2 the bar still moves and costs a fifth of that.
BAR_REFRESH_PER_SECOND = 2


def _bar_enabled() -> bool:
    return sys.stderr.isatty() or os.environ.get("AUTOSEG_PROGRESS") == "1"


def set_aside_log(folder: Path) -> Path | None:
    """Rename an earlier run's log in ``folder`` to ``training_log.<its last write>.txt`` (``-2``, ... where that
    name is taken) so that a new run starts its own: appended to, it mixed the two runs. Returns the new name."""
    log = Path(folder) / LOG_FILE
    if not log.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(log.stat().st_mtime))
    kept, n = log.with_name(f"{log.stem}.{stamp}{log.suffix}"), 1
    while kept.exists():
        n += 1
        kept = log.with_name(f"{log.stem}.{stamp}-{n}{log.suffix}")
    log.rename(kept)
    return kept


class Monitor:
    """Rank 0's window on training; every method is a no-op on other ranks (``active=False``)."""

    def __init__(self, folder: Path, active: bool = True) -> None:
        self.folder = Path(folder)
        self.active = active
        self.logged = False  # whether this run wrote a line into the log yet
        self.kept: OSError | None = None  # the first failed write of a log line, until raise_kept
        self._progress: Progress | None = None
        self._task: Any = None

    def log(self, message: str) -> None:
        """Show ``message`` and append it to the log. A failed write (a full disk) is shown and raised at once in a
        run of one process; under torchrun it is kept, the line still shown, and raised by ``raise_kept`` at the next
        point where the ranks meet: raised here, in the middle of an epoch (a budget re-plan, the watchdog's thread),
        it stopped rank 0 alone while the others waited for it in their next collective (6 h under NCCL). Kept in one
        process, the run trained on to the end of the epoch (hours) with its log unwritable; a line of another thread
        (the watchdog's) is kept there too, as raised in it, it would stop that thread, not the run."""
        if not self.active:
            return
        try:
            line = self._append(message)
        except OSError as exc:
            self.kept = self.kept or exc
            line = _stamped(message)
        if self._progress is not None and self._progress.live.is_started:
            self._progress.console.print(line)
        else:
            print(line, file=sys.stderr, flush=True)
        if not launched_by_torchrun() and threading.current_thread() is threading.main_thread():
            self.raise_kept()  # a thread's (the watchdog's) is raised by the run's next raise_kept

    def _append(self, message: str) -> str:
        """Append ``message``, time-stamped, to the log; returns the line. A path of bytes that are not UTF-8 (a folder
        named in Latin-1) is written escaped, as stderr shows it: strict UTF-8 stopped training with an internal
        UnicodeEncodeError at the first line naming it."""
        line = _stamped(message)
        self.folder.mkdir(parents=True, exist_ok=True)  # on first use: a refused run leaves no folder
        with open(self.folder / LOG_FILE, "a", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(line + "\n")
        self.logged = True
        return line

    def raise_kept(self) -> None:
        """Raise the kept failure of a log line's write, once: called on rank 0 inside ``on_main`` (the epoch's
        writes, the end of training, the final validation), so that every rank stops with it."""
        kept, self.kept = self.kept, None
        if kept is not None:
            raise kept

    @contextlib.contextmanager
    def stop_logged(self) -> Iterator[None]:
        """Write the error that stops the run as the log's last line, then let it go on: it reached stderr only,
        and the log of a run stopped by a full disk or a dead worker just ended after its last epoch. Only once
        this run has logged (a refusal before it leaves no log), not echoed (the CLI prints the error), and best
        effort: the full disk that stopped the run may refuse this line too, which must not mask the error."""
        try:
            yield
        except BaseException as exc:
            if self.active and self.logged:
                with contextlib.suppress(OSError, ValueError):
                    self._append(f"stopped by an error: {_named(exc)}")
            raise

    def start(self, total_iterations: int, done: int) -> None:
        """Start the bar: loss, pseudo-Dice, iterations per second and ETA over the whole run."""
        if not self.active or not _bar_enabled():
            return
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  pseudo-Dice {task.fields[dice]}  {task.fields[speed]:.2f} it/s  eta"),
            TimeRemainingColumn(),
            refresh_per_second=BAR_REFRESH_PER_SECOND,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=total_iterations, completed=done, epoch=0, loss=math.nan, dice="-", speed=0.0)

    def update(self, iteration: int, total: int, epoch: int, loss: float, speed: float, dice: float | None) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=iteration, total=total, epoch=epoch, loss=loss, speed=speed, dice=_shown(dice))

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log_epoch(self, row: dict[str, Any], improved: bool, total_iterations: int, kind: str) -> None:
        """Two lines per epoch: losses, pseudo-Dice and speed; the pseudo-Dice of each class (or region)."""
        self.log(
            f"epoch {row['epoch']}: train loss {_shown(row['train_loss'])}, val loss {_shown(row['val_loss'])}, pseudo-Dice "
            f"{_shown(row['pseudo_dice'])} (EMA {_shown(row['pseudo_dice_ema'])}{', new best' if improved else ''}), lr "
            f"{row['learning_rate']:.2e}, {row['epoch_seconds']:.1f} s, iteration {row['iteration']}/{total_iterations}"
        )
        self.log(f"epoch {row['epoch']}: pseudo-Dice per {kind}: "
                 + ", ".join(f"{name} {_shown(value)}" for name, value in row["pseudo_dice_per_class"].items()))
        self.raise_kept()  # written inside the epoch's on_main: this epoch's failed lines stop every rank here

    def write_history(self, history: Sequence[dict[str, Any]]) -> None:
        """``metrics.jsonl`` (one JSON object per epoch) and ``progress.png``."""
        if not self.active:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))
        plot_progress(history, self.folder / PLOT_FILE)


def _stamped(message: str) -> str:
    """A log line: the local time, then ``message``."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}"


def _named(exc: BaseException) -> str:
    """An exception as the log names it: its type, then its message where it has one (an interrupt has none)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _shown(value: float | None) -> str:
    """A metric for the log: four decimals, '-' where there is none."""
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _series(history: Sequence[dict[str, Any]], key: str) -> list[float]:
    """One metric per epoch for plotting, NaN (a gap) where it is null."""
    return [math.nan if row.get(key) is None else row[key] for row in history]


def plot_progress(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Losses with pseudo-Dice and its EMA, learning rate, and epoch time, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_lr, ax_time) = plt.subplots(3, 1, figsize=(10, 12))
    ax_loss.plot(epochs, _series(history, "train_loss"), color="b", label="train loss")
    ax_loss.plot(epochs, _series(history, "val_loss"), color="r", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_dice = ax_loss.twinx()
    ax_dice.plot(epochs, _series(history, "pseudo_dice"), color="g", linestyle=":", label="pseudo-Dice")
    ax_dice.plot(epochs, _series(history, "pseudo_dice_ema"), color="g", label="pseudo-Dice (EMA)")
    ax_dice.set_ylabel("pseudo-Dice")
    lines = ax_loss.get_legend_handles_labels()[0] + ax_dice.get_legend_handles_labels()[0]
    ax_loss.legend(lines, [line.get_label() for line in lines], loc="center right")
    ax_lr.plot(epochs, [row["learning_rate"] for row in history], color="b")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate (end of epoch)")
    ax_time.plot(epochs, [row["epoch_seconds"] for row in history], color="b")
    ax_time.set_xlabel("epoch")
    ax_time.set_ylabel("epoch time (s)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


class WarmTimer:
    """Times the warm iterations of each epoch: from the third iteration of a run's (or resumed run's)
    first epoch, from the first of every later epoch (allocation and kernel selection excluded).

    The pace leaves out the slowest timed iteration: one pause (a garbage collection, another process on
    the core for a moment) in the budget probe's 10 iterations, 10x slower than the rest, made the mean
    1.9x the real pace and the re-plan cut the schedule by almost half."""

    def __init__(self, first_iteration: int) -> None:
        self.first_iteration = first_iteration
        self.started: float | None = None
        self.since = 0
        self.index = 0
        self.probed = False
        self._last_mark = 0.0  # when the iteration now running began (once timing started)
        self._slowest = 0.0  # the slowest finished timed iteration of this epoch

    def new_epoch(self) -> None:
        self.started, self.index = None, 0

    def restart(self, iteration: int) -> None:
        """Time this epoch's iterations from ``iteration`` on (after a pause that is not training, such
        as the probe's re-plan timing the validation network)."""
        if self.started is not None:
            self._start(iteration)

    def before_iteration(self, iteration: int) -> None:
        if self.index == WARMUP_ITERATIONS or (self.index == 0 and iteration - self.first_iteration >= WARMUP_ITERATIONS):
            self._start(iteration)
        elif self.started is not None:
            now = time.monotonic()
            self._slowest, self._last_mark = max(self._slowest, now - self._last_mark), now
        self.index += 1

    def _start(self, iteration: int) -> None:
        self.started, self.since = time.monotonic(), iteration
        self._last_mark, self._slowest = self.started, 0.0

    def warm_iterations(self, iteration: int) -> int:
        """This epoch's timed (warm) iterations up to ``iteration``."""
        return iteration - self.since if self.started is not None else 0

    def warm_seconds(self) -> float:
        """Seconds since this epoch's timed iterations began (0 before)."""
        return time.monotonic() - self.started if self.started is not None else 0.0

    def seconds_per_iteration(self, iteration: int) -> float | None:
        """Mean seconds of this epoch's warm iterations up to ``iteration``, the slowest left out once
        there are two or more (the one running now counts up to now); None before any."""
        warm = self.warm_iterations(iteration)
        if not warm:
            return None
        if warm == 1:
            return self.warm_seconds()
        slowest = max(self._slowest, time.monotonic() - self._last_mark)
        return (self.warm_seconds() - slowest) / (warm - 1)

    def iterations_per_second(self, iteration: int) -> float:
        seconds = self.seconds_per_iteration(iteration)
        return 1.0 / seconds if seconds else 0.0

    def probe_done(self, iteration: int, probe_iterations: int, max_seconds: float = math.inf) -> bool:
        """True once: after the run's warm-up and ``probe_iterations`` timed iterations, or sooner when
        the timed iterations so far (at least one) took ``max_seconds``."""
        if self.probed or self.started is None:
            return False
        counted = iteration - self.first_iteration >= probe_iterations + WARMUP_ITERATIONS
        slow = iteration > self.since and time.monotonic() - self.started >= max_seconds
        self.probed = counted or slow
        return self.probed
