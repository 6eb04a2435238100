"""Idle cores from /proc/stat, the math threads a CPU fold trains with (``math_threads``), and that the
trainer applies them only while the fold runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoseg.errors import TrainingError
from autoseg.training import train_fold
from autoseg.training.config import resolve_config
from autoseg.training import math_threads
from autoseg.training.math_threads import ThreadChoice, applied, choose_math_threads, recount_at_epoch_end
from autoseg.training.trainer import Trainer
from autoseg.utils import cpu_load
from autoseg.utils.cpu_load import available_cores, idle_cores, idle_cores_between, threads_for_idle_cores

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

# These tests read the machine's idle cores: alone (tests/parallel_runs.py).
pytestmark = pytest.mark.exclusive

CPU = torch.device("cpu")
#               user nice system idle iowait irq softirq steal
BEFORE = ("cpu  300 0 100 1000 0 0 0 0 0 0\n"
          "cpu0 100 0 50 500 0 0 0 0 0 0\n"
          "cpu1 200 0 50 500 0 0 0 0 0 0\n"
          "intr 1 2 3\n")
# cpu0 idle for 100 jiffies (80 idle + 20 iowait) of 100; cpu1 busy 75 of 100 (25 idle).
AFTER = ("cpu  500 0 100 1300 20 0 0 0 0 0\n"
         "cpu0 100 0 50 580 20 0 0 0 0 0\n"
         "cpu1 275 0 50 525 0 0 0 0 0 0\n"
         "intr 4 5 6\n")


def test_idle_cores_between_two_readings_by_hand() -> None:
    assert idle_cores_between(BEFORE, AFTER) == pytest.approx(1.0 + 0.25)
    assert idle_cores_between(BEFORE, AFTER, {0}) == pytest.approx(1.0)  # iowait counts as idle
    assert idle_cores_between(BEFORE, AFTER, {1}) == pytest.approx(0.25)
    assert idle_cores_between(BEFORE, BEFORE) is None  # no time passed
    assert idle_cores_between("intr 1\n", "intr 2\n") is None  # no CPU lines
    assert idle_cores_between(BEFORE, AFTER, {7}) is None  # CPUs the readings do not list


@pytest.mark.parametrize(("limit", "idle", "logical", "expected"), [
    (2, 2.0, 2, 2),  # quiet 2-core machine
    (2, 1.0, 2, 1),  # one core busy: one thread on the free one
    (2, 1.6, 2, 2),  # a light load rounds up
    (2, 0.05, 2, 1),  # every core busy: still one thread
    (8, 16.0, 16, 8),  # torch's count (physical cores) is the ceiling on a hyperthreaded machine
    (8, 8.0, 16, 4),  # half the hardware threads idle: half the cores' threads
    (1, 2.0, 2, 1),  # OMP_NUM_THREADS=1 is never raised
    (4, None, 4, 4),  # unknown (no /proc/stat): torch's count
])
def test_threads_for_idle_cores(limit: int, idle: float | None, logical: int, expected: int) -> None:
    assert threads_for_idle_cores(limit, idle, logical) == expected


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux's /proc/stat")
def test_idle_cores_sees_busy_loops_on_every_core() -> None:
    cores = available_cores()
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        busy = idle_cores(1.0)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    assert busy is not None and busy < 0.5 * cores


def test_choose_math_threads_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: 1.0)
        monkeypatch.setattr(cpu_load, "available_cores", lambda: 2)
        assert choose_math_threads("auto", CPU, deterministic=False) == ThreadChoice(1, 2, 1.0, 2)
        samples = iter([0.4, 1.9])  # a spike in the first half second: the second look wins
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: next(samples))
        assert choose_math_threads("auto", CPU, deterministic=False) == ThreadChoice(2, 2, 1.9, 2)
        samples = iter([1.9])  # quiet at once: one look only (next() would fail on a second)
        assert choose_math_threads("auto", CPU, deterministic=False) == ThreadChoice(2, 2, 1.9, 2)
        samples = iter([None])  # no /proc/stat: torch's count, and no second look
        assert choose_math_threads("auto", CPU, deterministic=False) == ThreadChoice(2, 2, None, 2)
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: 1.0)
        assert choose_math_threads("auto", CPU, deterministic=True) == ThreadChoice(2, 2)  # reruns sum alike
        assert choose_math_threads(3, CPU, deterministic=False) == ThreadChoice(3, 2)  # a number is taken as set
        torch.set_num_threads(1)
        assert choose_math_threads("auto", CPU, deterministic=False) == ThreadChoice(1, 1)  # nothing to lower
        assert choose_math_threads("auto", torch.device("cuda"), deterministic=False) is None
        for bad in (0, -1, "many", True):
            with pytest.raises(TrainingError, match=r"math_threads must be >= 1 or 'auto', got"):
                choose_math_threads(bad, CPU, deterministic=False)
    finally:
        torch.set_num_threads(before)
    assert ThreadChoice(1, 2, 1.04, 2).describe() == "1 of 2 math threads (1.0 of 2 CPUs idle at the start)"
    assert ThreadChoice(3, 2).describe() == "3 math threads"


def test_config_accepts_auto_or_a_number() -> None:
    assert resolve_config("unet", [])["math_threads"] == "auto"
    assert resolve_config("unet", ["math_threads=1"])["math_threads"] == 1
    with pytest.raises(TrainingError, match=r"--set math_threads=.*expected"):
        resolve_config("unet", ["math_threads=[1]"])


def test_applied_sets_threads_inside_the_block_only() -> None:
    before = torch.get_num_threads()
    with applied(ThreadChoice(1, before)):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), applied(ThreadChoice(1, before)):
        raise RuntimeError("a failing fold")
    assert torch.get_num_threads() == before
    with applied(None):
        assert torch.get_num_threads() == before


def test_a_fold_trains_with_the_idle_cores_and_gives_the_threads_back(
        results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    seen = []
    monkeypatch.setattr(cpu_load, "idle_cores", lambda: 1.0)  # one of two cores held by another process
    monkeypatch.setattr(cpu_load, "available_cores", lambda: 2)
    real_fit = Trainer.fit

    def fit(trainer: Trainer) -> None:  # record the threads the loop runs with
        seen.append(torch.get_num_threads())
        real_fit(trainer)

    monkeypatch.setattr(Trainer, "fit", fit)
    try:
        train_fold(DATASET, "3d_fullres", "all", epochs=1, workers=0,
                   overrides=["iterations_per_epoch=2", "val_iterations_per_epoch=1", "mixed_precision=off"])
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    log = (results / DATASET / "unet__autosegPlans__3d_fullres" / "fold_all" / "training_log.txt").read_text()
    assert "1 of 2 math threads (1.0 of 2 CPUs idle at the start)" in log


def test_the_threads_follow_the_idle_cores_at_each_epoch_end(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu_load, "available_cores", lambda: 2)
    start = ThreadChoice(1, 2, 1.0, 2)  # auto chose 1 of 2 threads: another process held a core
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: 1.9)  # that process has ended
        assert recount_at_epoch_end(start, 30.0) == ThreadChoice(2, 2, 1.9, 2) and torch.get_num_threads() == 2
        assert recount_at_epoch_end(start, 30.0) is None  # the count agrees with the threads: nothing to do
        samples = iter([0.9, 1.0])  # load arrived (seen twice, so not a spike)
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: next(samples))
        assert recount_at_epoch_end(start, 30.0) == ThreadChoice(1, 2, 1.0, 2) and torch.get_num_threads() == 1
        monkeypatch.setattr(cpu_load, "idle_cores", lambda: 1.9)
        assert recount_at_epoch_end(start, 5.0) is None and torch.get_num_threads() == 1  # short epochs: no pause
        assert recount_at_epoch_end(ThreadChoice(1, 2), 30.0) is None  # a number (or --deterministic): kept
        assert recount_at_epoch_end(None, 30.0) is None  # off the CPU
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert ThreadChoice(2, 2, 1.9, 2).describe("at the end of epoch 3") == (
        "2 of 2 math threads (1.9 of 2 CPUs idle at the end of epoch 3)")


def test_a_fold_raises_its_threads_when_the_other_process_ends(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(2)
    samples = iter([1.0, 1.0, 2.0, 2.0])  # the start (twice: some busy), then the end of epoch 1
    monkeypatch.setattr(cpu_load, "idle_cores", lambda: next(samples, 2.0))
    monkeypatch.setattr(cpu_load, "available_cores", lambda: 2)
    monkeypatch.setattr(math_threads, "RECOUNT_MIN_EPOCH_SECONDS", 0.0)
    seen = []
    real_epoch = Trainer.train_epoch

    def train_epoch(trainer: Trainer, *args):  # the threads each epoch trains with
        seen.append(torch.get_num_threads())
        return real_epoch(trainer, *args)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    try:
        train_fold(DATASET, "3d_fullres", "all", epochs=2, workers=0,
                   overrides=["iterations_per_epoch=2", "val_iterations_per_epoch=1", "mixed_precision=off"])
        assert seen == [1, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    log = (results / DATASET / "unet__autosegPlans__3d_fullres" / "fold_all" / "training_log.txt").read_text()
    assert "math threads now 2 of 2 math threads (2.0 of 2 CPUs idle at the end of epoch 1)" in log

