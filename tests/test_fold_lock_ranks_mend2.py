"""Under ``torchrun`` only rank 0 takes the fold lock: a refused fold stopped rank 0 alone, and the other ranks went
on to wait at a barrier (6 h under NCCL). The refusal is broadcast; every rank raises it. So is a raw ``OSError`` of
rank 0 making the fold folder (no permission, a name too long): the other ranks waited in the broadcast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autoseg

pytest.importorskip("fcntl")
REPO = str(Path(autoseg.__file__).resolve().parents[1])

HOLD = ("import sys; from autoseg.utils.atomic import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")
# Each rank enters the fold lock as train_fold does, then a barrier (as _start's first collective).
RANKS = """
import sys
from pathlib import Path
from types import SimpleNamespace
from autoseg.cli import environment_error_message
from autoseg.errors import TrainingError
from autoseg.training import run as run_module
from autoseg.training.distributed import barrier, init_distributed, shutdown
from autoseg.training.run import _fold_held
run_module._refuse_folders_named_as_files = lambda run: None  # a stand-in run: no files to check
fold, out = Path(sys.argv[1]), Path(sys.argv[2])
run = SimpleNamespace(fold_folder=fold, fold=0)
context = init_distributed("cpu")
try:
    with _fold_held(run, context):
        barrier(context)
        outcome = "trained"
except TrainingError as exc:
    outcome = str(exc)
except OSError as exc:  # the line the command line prints for it
    outcome = environment_error_message(exc)
(out / f"rank{context.rank}.txt").write_text(outcome)
shutdown(context)
"""


def _ranks_outcomes(tmp_path: Path, fold: Path) -> list[str]:
    """What each of two torchrun ranks entering ``fold``'s lock as train_fold does ended with."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--log-dir", str(tmp_path / "torchelastic"), str(script), str(fold), str(tmp_path)]
    # Before the fixes rank 1 waited at the barrier (or in the broadcast) for rank 0, gone: the run never ended.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}  # this checkout, not another install's
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]


def test_every_rank_is_refused_a_fold_being_trained(tmp_path: Path) -> None:
    fold = tmp_path / "model" / "fold_0"
    fold.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fold)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        outcomes = _ranks_outcomes(tmp_path, fold)
    finally:
        holder.communicate("")
    refusal = (f"{fold}: fold 0 is being trained by process {holder.pid} right now; two runs of one fold write over "
               "each other's checkpoints, log and validation: wait for that run to end (or stop it and resume it with "
               "--continue)")
    if not Path("/proc/locks").is_file():
        refusal = refusal.replace(f"process {holder.pid}", "another process")
    assert outcomes == [refusal, refusal]


def test_every_rank_gets_rank_0s_error_making_the_fold_folder(tmp_path: Path) -> None:
    """A fold folder rank 0 cannot make (here a model folder name longer than the file system takes; as root no
    permission is ever denied) raised a raw OSError on rank 0 alone: rank 1 waited for the broadcast for ever."""
    model = tmp_path / ("m" * 300)
    outcomes = _ranks_outcomes(tmp_path, model / "fold_0")
    error = (f"{model}/fold_0: File name too long; a file or folder name there is longer than the file system allows "
             "(most take 255 bytes a name); choose shorter names")
    assert outcomes == [error, error]
