"""Two runs at once on one fold or one shared folder: the second ``autoseg train`` of a fold is refused, naming
the process that holds it; a killed holder leaves no lock behind (the kernel drops a ``flock``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg.errors import TrainingError
from autoseg.training import train_fold
from autoseg.utils.atomic import LOCK_FILE

from training_helpers import DATASET, data_roots, results  # noqa: F401 - fixtures

FAST = ["val_iterations_per_epoch=2", "mixed_precision=off"]
MODEL = "unet__autosegPlans__3d_fullres"
HOLD = ("import sys; from autoseg.utils.atomic import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()")


def _holder(folder: Path) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock until its stdin closes (or it is killed); returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_run_of_a_fold_is_refused_and_a_killed_one_leaves_no_lock(results: Path) -> None:  # noqa: F811
    fold = results / DATASET / MODEL / "fold_0"
    fold.mkdir(parents=True)
    proc = _holder(fold)
    try:
        with pytest.raises(TrainingError) as info:
            train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=FAST)
        assert str(info.value) == (
            f"{fold}: fold 0 is being trained by process {proc.pid} right now; two runs of one fold write over each "
            "other's checkpoints, log and validation: wait for that run to end (or stop it and resume it with "
            "--continue)"
        )
        assert [p.name for p in fold.iterdir()] == [LOCK_FILE]  # the refused run wrote nothing; the holder's lock file
    finally:
        proc.kill()  # kill -9: nothing releases the lock but the kernel
        proc.wait()
    train_fold(DATASET, "3d_fullres", 0, epochs=1, workers=0, overrides=FAST)
    assert (fold / "checkpoint_final.safetensors").is_file()
    assert not [p.name for p in fold.iterdir() if "lock" in p.name.lower()]  # the lock file went with the lock


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path: Path) -> None:
    """A data loading worker (forked while the fold was held) outliving the run kept the fold locked: the next run
    of the fold was refused though none was training."""
    import multiprocessing

    from autoseg.utils.atomic import FolderLocked, folder_lock

    context = multiprocessing.get_context("fork")
    started, release = context.Event(), context.Event()

    def worker() -> None:  # runs after the fork's handlers
        started.set()
        release.wait()

    with folder_lock(tmp_path):
        child = context.Process(target=worker)
        child.start()
    try:
        started.wait()
        assert child.is_alive()
        with folder_lock(tmp_path, wait=False):
            pass
        with folder_lock(tmp_path), pytest.raises(FolderLocked) as info:
            with folder_lock(tmp_path, wait=False):
                pass
        assert info.value.pid == os.getpid() and str(info.value) == f"{tmp_path}: locked by process {info.value.pid}"
    finally:
        release.set()
        child.join()


def test_handing_on_and_clearing_hold_the_next_stage_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a fold's copy into predicted_next_stage/ and its record, another fold starting afresh read the old
    record (naming itself) and deleted the new copy; both now run under the folder's lock, which another process
    sees held by this one at those moments."""
    from autoseg.training import cascade
    from autoseg.utils.atomic import lock_holder

    handed, validation = tmp_path / cascade.NEXT_STAGE_FOLDER, tmp_path / "fold_0" / "validation"
    validation.mkdir(parents=True)
    (validation / "a.nii.gz").write_bytes(b"fold 0's map")
    handed.mkdir()
    (handed / "a.nii.gz").write_bytes(b"fold 1's old map")
    cascade.record_handed_on(handed, "a", "1", None)
    seen: list[tuple[str, int | None, bytes]] = []
    record, fold_of = cascade.record_handed_on, cascade.handing_fold

    def recording(predictions: Path, case_id: str, fold: str, split: str | None) -> None:
        seen.append(("record", lock_holder(predictions), (predictions / f"{case_id}.nii.gz").read_bytes()))
        record(predictions, case_id, fold, split)

    def reading(predictions: Path, case_id: str) -> str | None:
        seen.append(("read", lock_holder(predictions), b""))
        return fold_of(predictions, case_id)

    monkeypatch.setattr(cascade, "record_handed_on", recording)
    monkeypatch.setattr(cascade, "handing_fold", reading)
    cascade.hand_on(handed, validation / "a.nii.gz", "a", "0", "digest")
    cascade.clear_handed_on(handed, ["a"], "1", tmp_path / "fold_1" / "validation", ".nii.gz")  # fold 1 afresh
    assert seen == [("record", os.getpid(), b"fold 0's map"), ("read", os.getpid(), b"")]
    assert (handed / "a.nii.gz").read_bytes() == b"fold 0's map"  # fold 0's copy stays: its record names fold 0
    cascade.clear_handed_on(handed, ["a"], "0", validation, ".nii.gz")  # fold 0 afresh removes its own
    assert sorted(p.name for p in handed.iterdir()) == []


def test_a_child_forked_inside_a_lock_leaves_it_without_closing_another_file(tmp_path: Path) -> None:
    """A child forked inside ``folder_lock`` has closed its copy of the lock at the fork; leaving the block it closed
    that descriptor number again, which by then named another of its files."""
    from autoseg.utils.atomic import folder_lock

    with folder_lock(tmp_path):
        pid = os.fork()
        if pid == 0:
            other = os.open(os.devnull, os.O_RDONLY)  # takes the lowest free number: the lock's, closed at the fork
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.fstat(other)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0


def test_the_cascade_reads_each_handed_on_copy_with_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cascade fold starting while a lowres fold hands a case on saw the new copy with the old record (another
    fold's, on another split) and refused the case as stale; it now checks under predicted_next_stage/'s lock."""
    from autoseg.training import cascade
    from autoseg.utils.atomic import lock_holder

    handed = tmp_path / cascade.NEXT_STAGE_FOLDER
    handed.mkdir()
    (handed / "a.nii.gz").write_bytes(b"a map")
    holders: list[int | None] = []

    def stale(predictions: Path, *args: object) -> str:
        holders.append(lock_holder(predictions))
        return "checked"

    monkeypatch.setattr(cascade, "_stale_handing", stale)
    with pytest.raises(TrainingError, match=r"a\.nii\.gz: previous-stage prediction of a fold that no longer validates "
                                            r"this case \(checked\)"):
        cascade.prepare_previous_stage(handed, tmp_path / "cache", tmp_path / "store", ["a"], {}, "3d_fullres", ".nii.gz")
    assert holders == [os.getpid()]
