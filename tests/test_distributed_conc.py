"""Under ``torchrun`` rank 0 alone prepares the fold's folders, writes the run files and validates; an error there
(a reference segmentation damaged, a full disk, a cascade without its previous stage's predictions) stopped rank 0
alone while the other ranks waited for it at their next collective (6 h under NCCL). Every rank now stops with rank
0's error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_fold_lock_ranks_mend2 import REPO
from test_training_locks import FAST
from training_helpers import DATASET, data_roots  # noqa: F401 - fixture

# Each rank trains fold 0 for one epoch and records how the run ended (the line the command line prints for it, with
# the type of an OSError); a test puts its own fault between the head and the tail.
RANKS_HEAD = """
import errno, os, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from autoseg.errors import AutosegError
from autoseg.training import train_fold, trainer
"""
RANKS_TAIL = """
try:
    train_fold(sys.argv[2], "3d_fullres", 0, epochs=1, workers=0, overrides=sys.argv[3:])
    outcome = "trained"
except AutosegError as exc:
    outcome = str(exc)
except OSError as exc:
    outcome = f"{type(exc).__name__}: {exc}"
(Path(sys.argv[1]) / f"rank{os.environ['RANK']}.txt").write_text(outcome)
"""


def two_ranks(fault: str, tmp_path: Path, raw: Path, preprocessed: Path) -> tuple[list[str], str]:
    """Train fold 0 for one epoch under torchrun with two ranks, ``fault`` run in each before training; each rank's
    outcome (rank 0 first) and torchrun's stderr."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_HEAD + fault + RANKS_TAIL)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--log-dir",
               str(tmp_path / "torchelastic"), str(script), str(tmp_path), DATASET, *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO, "AUTOSEG_RAW": str(raw),
           "AUTOSEG_PREPROCESSED": str(preprocessed), "AUTOSEG_RESULTS": str(tmp_path / "results")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)], done.stderr


def test_every_rank_stops_with_rank_0s_validation_error(data_roots: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(data_roots["preprocessed"], preprocessed)
    gt = preprocessed / DATASET / "gt_segmentations"
    for reference in gt.iterdir():  # damaged, not deleted (train refuses missing ones before it trains): rank 0's
        reference.write_bytes(b"not an image")  # final validation cannot read them to score its predictions
    outcomes, _ = two_ranks("", tmp_path, data_roots["raw"], preprocessed)
    assert outcomes[0] == outcomes[1] and " cases could not be evaluated: " in outcomes[0], outcomes
    assert f"{gt}/" in outcomes[0], outcomes  # naming the damaged references



# Rank 0's checkpoint writes fail as on a full disk.
FULL_DISK = """
def full(path, checkpoint):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

trainer.write_checkpoint = full
"""


def test_every_rank_stops_with_rank_0s_checkpoint_error(data_roots: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """Was: rank 0 failing to write a checkpoint (a full disk) stopped alone; rank 1 died in its next collective
    with a gloo traceback. Both now stop with rank 0's error."""
    outcomes, _ = two_ranks(FULL_DISK, tmp_path, data_roots["raw"], data_roots["preprocessed"])
    fold = tmp_path / "results" / DATASET / "unet__autosegPlans__3d_fullres" / "fold_0"
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("OSError: [Errno 28] No space left on device: ") and str(fold) in outcomes[0], outcomes
