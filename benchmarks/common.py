"""Shared helpers of the benchmark scripts: the nnU-Net venv, timed runs, peak RSS, disk size, the doc.

Both tools are measured in the same run on the same machine, each run alternating between them and the
best (minimum) of the repeats kept, because the machine these scripts run on is often shared: the
minimum is the run least disturbed by others. Results go into ``docs/benchmarks.md``, one section per
script, each with the exact commands, both tools' numbers and their ratio, the date and the machine.
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from autoseg.utils.atomic import atomic_path, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT = Path(os.environ.get("AUTOSEG_BENCH_DATA", REPO_ROOT.parent / "shared" / "data"))
HIPPOCAMPUS = "Dataset004_Hippocampus"
NNUNET_VENV = Path(os.environ.get("NNUNET_VENV", REPO_ROOT / ".bench" / "nnunet-venv"))
DOC = REPO_ROOT / "docs" / "benchmarks.md"
RSS_POLL_SECONDS = 0.2  # sampling period of the process tree's resident memory
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
DOC_HEADER = (
    "# Benchmarks: autoseg against nnU-Net v2\n\n"
    "Written by the scripts in `benchmarks/` (run on demand, never in CI). Each section is the latest\n"
    "output of one script: the exact commands, both tools measured in the same run on the same machine,\n"
    "and the ratio nnU-Net / autoseg for times and sizes (above 1: autoseg is faster or smaller).\n"
    "nnU-Net v2 runs from its own virtual environment (`bash benchmarks/setup_nnunet.sh`).\n"
)


# --------------------------------------------------------------------------------------- nnU-Net venv
@functools.cache
def nnunet_venv() -> Path:
    """The nnU-Net v2 venv, created by ``setup_nnunet.sh`` on first use (idempotent)."""
    subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "setup_nnunet.sh")], check=True, stdout=sys.stderr)
    return NNUNET_VENV


def nnunet_command(name: str) -> str:
    """Absolute path of one of nnU-Net's console scripts (``nnUNetv2_extract_fingerprint``, ...)."""
    return str(nnunet_venv() / "bin" / name)


def nnunet_env(raw: Path, preprocessed: Path, results: Path, threads: int) -> dict[str, str]:
    """nnU-Net's three roots, set only in its subprocess's environment."""
    env = thread_env(threads)
    env.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(preprocessed), nnUNet_results=str(results))
    return env


def autoseg_env(raw: Path, preprocessed: Path, results: Path, threads: int) -> dict[str, str]:
    """autoseg's three roots, set only in its subprocess's environment (nnU-Net's are removed)."""
    env = thread_env(threads)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env.pop(var, None)
    env.update(AUTOSEG_RAW=str(raw), AUTOSEG_PREPROCESSED=str(preprocessed), AUTOSEG_RESULTS=str(results))
    return env


def thread_env(threads: int) -> dict[str, str]:
    """The current environment with every math library limited to ``threads`` threads per process."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "nnUNet_n_proc_DA"):
        env[var] = str(threads)
    return env


def autoseg_command() -> list[str]:
    """The autoseg CLI of the Python running this script (the editable install)."""
    return [sys.executable, "-m", "autoseg"]


# ------------------------------------------------------------------------------------------- datasets
@contextmanager
def temporary_raw_root(dataset: str = HIPPOCAMPUS) -> Iterator[Path]:
    """A temporary raw root holding ``dataset`` as real folders of symlinks to the shared files.

    Only the files are links: every folder (and ``dataset.json``, copied) is the benchmark's own, so no
    tool can create or delete anything in the read-only shared data.
    """
    source = DATA_ROOT / dataset
    if not (source / "dataset.json").is_file():
        raise SystemExit(f"{source}: dataset not found; set AUTOSEG_BENCH_DATA to the folder holding {dataset}")
    with tempfile.TemporaryDirectory(prefix="autoseg-bench-raw-") as tmp:
        target = Path(tmp) / dataset
        target.mkdir()
        shutil.copy2(source / "dataset.json", target / "dataset.json")
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            if (source / sub).is_dir():
                (target / sub).mkdir()
                for file in sorted((source / sub).iterdir()):
                    (target / sub / file.name).symlink_to(file)
        yield Path(tmp)


def work_folder(stack: ExitStack, keep_in: Path | None, name: str) -> Path:
    """A fresh folder for a run's outputs: inside ``keep_in`` (kept, ``--work-dir``) or temporary,
    deleted when ``stack`` closes."""
    if keep_in is not None:
        keep_in.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=keep_in))
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"autoseg-{name}-")))
    print(f"outputs in {work}", file=sys.stderr)
    return work


def warm_file_cache(folder: Path) -> None:
    """Read every file once so that neither tool pays the first cold read from disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                while handle.read(1 << 22):
                    pass


def augmentation_cpu_seconds(spec: Any, batches: int, on_batch: Callable[[dict[str, Any]], None] | None = None) -> float:
    """CPU seconds one data worker spends per training batch (sampling, augmentation) of ``spec`` (a
    ``SamplingSpec``), in this process on one thread, every training case opened before timing (a long
    run's steady state). ``on_batch`` sees each batch outside the timed part."""
    import torch
    from threadpoolctl import threadpool_limits

    from autoseg.training.data_loading import TRAIN_STREAM, BatchSource

    source = BatchSource(spec, seed=0, stream=TRAIN_STREAM)
    for case in spec.case_ids:
        source._case(case)  # opened (and its class locations parsed) once per worker in a real run
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # as in a data worker (training/data_loading.py: _worker_main): one torch and one BLAS thread
        with threadpool_limits(1):
            return _mean_batch_cpu(source, batches, on_batch)
    finally:
        torch.set_num_threads(threads)


def _mean_batch_cpu(source: Any, batches: int, on_batch: Callable[[dict[str, Any]], None] | None) -> float:
    """Mean process CPU seconds per batch of ``source``'s first ``batches`` batches."""
    spent = 0.0
    for index in range(batches):
        start = time.process_time()
        batch = source(index)
        spent += time.process_time() - start
        if on_batch is not None:
            on_batch(batch)
    return spent / batches


# ----------------------------------------------------------------------------------- timed processes
@dataclass
class Measurement:
    """One timed command: wall time, peak RSS summed over its process tree, exit code."""

    wall_s: float
    peak_rss_bytes: int
    returncode: int
    output_tail: str


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses: parse after its last ')'.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from one snapshot of /proc)."""
    children = _children_map()
    pids, stack = [], [root_pid]
    while stack:
        pids.append(stack.pop())
        stack.extend(children.get(pids[-1], []))
    return pids


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of ``root_pid`` and all its descendants, summed (as ``top`` would add them)."""
    total = 0
    for pid in process_tree(root_pid):
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * PAGE_BYTES
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_measured(command: Sequence[str], env: dict[str, str], cwd: Path | None = None) -> Measurement:
    """Run ``command``, timing it and sampling its process tree's RSS every ``RSS_POLL_SECONDS``."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_rss_bytes(process.pid))
            time.sleep(RSS_POLL_SECONDS)
        wall = time.perf_counter() - start
        log.seek(0)
        tail = log.read().decode(errors="replace")[-3000:]
    return Measurement(wall, peak, process.returncode, tail)


def run_sequence(commands: Sequence[Sequence[str]], env: dict[str, str]) -> list[Measurement]:
    """Run commands one after the other, stopping at the first failure."""
    results = []
    for command in commands:
        results.append(run_measured(command, env))
        if results[-1].returncode != 0:
            break
    return results


def combined(measurements: Sequence[Measurement]) -> Measurement:
    """Several commands as one: times added, the highest peak, the first failure's exit code."""
    failed = [m for m in measurements if m.returncode != 0]
    return Measurement(
        wall_s=sum(m.wall_s for m in measurements),
        peak_rss_bytes=max(m.peak_rss_bytes for m in measurements),
        returncode=failed[0].returncode if failed else 0,
        output_tail=(failed[0] if failed else measurements[-1]).output_tail,
    )


def check(measurement: Measurement, what: str) -> Measurement:
    """Stop the benchmark when a measured command failed: a failed run has no meaningful time."""
    if measurement.returncode != 0:
        raise SystemExit(f"{what} failed (exit {measurement.returncode}):\n{measurement.output_tail}")
    return measurement


def alternate(jobs: dict[str, Callable[[], Measurement]], repeats: int) -> dict[str, Measurement]:
    """Run every job ``repeats`` times, alternating between them, and keep each job's fastest run.

    Alternating spreads a slow spell of the shared machine over both tools instead of one.
    """
    best: dict[str, Measurement] = {}
    for round_index in range(repeats):
        for name, job in jobs.items():
            result = job()
            print(f"  round {round_index + 1}: {name}: {fmt_seconds(result.wall_s)}, "
                  f"peak RSS {fmt_bytes(result.peak_rss_bytes)}", file=sys.stderr)
            if name not in best or result.wall_s < best[name].wall_s:
                best[name] = result
    return best


def folder_size_bytes(folder: Path) -> int:
    """Disk usage of a folder as ``du`` counts it (allocated blocks, links not followed)."""
    total = 0
    for path in [folder, *folder.rglob("*")]:
        stat = path.lstat()
        total += stat.st_blocks * 512
    return total


# ------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    with open("/proc/cpuinfo") as handle:
        match = re.search(r"^model name\s*:\s*(.+)$", handle.read(), re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def machine_line() -> str:
    """Date, cores, CPU model and load: what a reader needs to judge the numbers."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"{now}; `nproc` = {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), CPU: {cpu_model()}, "
        f"Python {platform.python_version()}; load average at the end (1, 5, 15 min): {load}"
    )


def code_version() -> str:
    """The short commit of the code measured, with "+changes" when the tree differs from it (or
    "unknown" outside a git checkout): rows measured with different code must not read as one series.
    Changes under ``docs/`` do not count: benchmarks write their results there, and a run's own first
    record must not mark every later run of the same code as changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit, changes = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changes else "")


# ---------------------------------------------------------------------------------------------- docs
def fmt_seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def fmt_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def ratio(nnunet: float, autoseg: float) -> str:
    return f"{nnunet / autoseg:.2f}x" if autoseg > 0 else "n/a"


def save_figure(fig: Any, path: Path) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(key: str, title: str, body: str, machine: str | None = None, doc: Path = DOC) -> None:
    """Replace (or append) the section ``key`` of ``doc`` (``docs/benchmarks.md``); other sections are kept.

    A section runs from its ``<!-- bench:KEY -->`` marker to the next marker or the end of the file.
    ``machine`` describes where the figures were measured (default: this machine, now).
    """
    marker = f"<!-- bench:{key} -->"
    text = doc.read_text() if doc.is_file() else DOC_HEADER
    section = f"{marker}\n## {title}\n\n_{machine or machine_line()}_\n\n{body.strip()}\n"
    pattern = re.compile(re.escape(marker) + r".*?(?=<!-- bench:|\Z)", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(doc, text.rstrip("\n") + "\n")
    print(f"written: {doc} (section {key})", file=sys.stderr)

