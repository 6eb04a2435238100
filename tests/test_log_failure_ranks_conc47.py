"""Under ``torchrun`` rank 0 alone writes the training log. A line it failed to write in the middle of an epoch (a
budget re-plan, the watchdog's note; a full disk) stopped rank 0 alone while rank 1 died in its next collective with
a gloo traceback (or waited 6 h under NCCL). The failure is now kept and raised at the epoch's ``on_main``, on every
rank, as the epoch's own writes are."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg.training.monitor import LOG_FILE, Monitor

from test_distributed_conc import two_ranks
from training_helpers import DATASET, data_roots  # noqa: F401 - fixture

# Each rank trains fold 0 for one epoch; at the epoch's start rank 0's log file is replaced by a folder, so the
# line it logs there (as a re-plan would) cannot be written. Each rank records how its run ended.
LOG_FOLDER_FAULT = """
real_epoch = trainer.Trainer.train_epoch

def train_epoch(self, *args):
    if self.context.is_main:
        log = self.run.fold_folder / "training_log.txt"
        log.rename(log.with_name("kept.txt"))
        log.mkdir()
        self.monitor.log("time budget: a line in the middle of the epoch")
    return real_epoch(self, *args)

trainer.Trainer.train_epoch = train_epoch
"""


def test_every_rank_stops_with_rank_0s_failed_log_line(data_roots: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    outcomes, stderr = two_ranks(LOG_FOLDER_FAULT, tmp_path, data_roots["raw"], data_roots["preprocessed"])
    fold = tmp_path / "results" / DATASET / "unet__autosegPlans__3d_fullres" / "fold_0"
    assert outcomes == [f"IsADirectoryError: [Errno 21] Is a directory: '{fold / LOG_FILE}'"] * 2, outcomes
    assert "time budget: a line in the middle of the epoch" in stderr  # shown, though not written


def test_a_failed_log_line_is_shown_kept_and_raised_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 under torchrun: the line reaches stderr, the run goes on to the ranks' next meeting point, which raises
    it (a run of one process raises it at once: test_monitor_log_mend47a.py)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monitor = Monitor(tmp_path / "fold")
    (tmp_path / "fold" / LOG_FILE).mkdir(parents=True)
    monitor.log("first")
    monitor.log("second")
    assert [line.split("  ", 1)[1] for line in capsys.readouterr().err.splitlines()] == ["first", "second"]
    with pytest.raises(IsADirectoryError) as kept:
        monitor.raise_kept()
    assert kept.value.filename == str(tmp_path / "fold" / LOG_FILE)
    monitor.raise_kept()  # once
