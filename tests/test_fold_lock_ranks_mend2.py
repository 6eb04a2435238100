"""Under ``torchrun`` only rank 0 takes the fold lock: a refused fold stopped rank 0 alone, and the other ranks went
on to wait at a barrier (6 h under NCCL). The refusal is broadcast; every rank raises it."""

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
from autoseg.errors import TrainingError
from autoseg.training import run as run_module
from autoseg.training.distributed import barrier, init_distributed, shutdown
from autoseg.training.run import _fold_held
run_module._refuse_folders_named_as_files = lambda run: None  # a stand-in run: no files to check
fold = Path(sys.argv[1])
run = SimpleNamespace(fold_folder=fold, fold=0)
context = init_distributed("cpu")
try:
    with _fold_held(run, context):
        barrier(context)
        outcome = "trained"
except TrainingError as exc:
    outcome = str(exc)
(fold.parent / f"rank{context.rank}.txt").write_text(outcome)
shutdown(context)
"""


def test_every_rank_is_refused_a_fold_being_trained(tmp_path: Path) -> None:
    fold = tmp_path / "model" / "fold_0"
    fold.mkdir(parents=True)
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(fold)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "--log-dir", str(tmp_path / "torchelastic"), str(script), str(fold)]
        # Before the fix rank 1 waited at the barrier for rank 0, gone: the run never ended.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}  # this checkout, not another install's
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    finally:
        holder.communicate("")
    assert done.returncode == 0, done.stderr[-3000:]
    refusal = (f"{fold}: fold 0 is being trained by process {holder.pid} right now; two runs of one fold write over "
               "each other's checkpoints, log and validation: wait for that run to end (or stop it and resume it with "
               "--continue)")
    if not Path("/proc/locks").is_file():
        refusal = refusal.replace(f"process {holder.pid}", "another process")
    assert [(tmp_path / "model" / f"rank{r}.txt").read_text() for r in (0, 1)] == [refusal, refusal]
