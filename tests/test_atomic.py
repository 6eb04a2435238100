"""Atomic writes: complete or absent, never half-written, with normal permissions."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, read_image, write_image
from autoseg.utils.atomic import atomic_path, atomic_write_json, require_writable
from autoseg.utils.duration import parse_duration
from autoseg.errors import UsageError


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_written_files_get_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", [1])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644


def test_a_writer_that_replaces_the_temporary_keeps_the_umask_permissions(tmp_path: Path) -> None:
    """safetensors writes its own 0600 file over the temporary: checkpoints were readable by their owner only."""
    import torch

    from autoseg.utils.weights_file import save_weights

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "own.bin") as tmp:
            fd = os.open(tmp.with_name("private"), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            os.replace(tmp.with_name("private"), tmp)
        save_weights(tmp_path / "checkpoint.safetensors", {"w": torch.zeros(2), "metadata": {"v": 1}})
    finally:
        os.umask(old)
    for name in ("own.bin", "checkpoint.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_compact_json(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "c.json", {"a": [1, 2]}, indent=None)
    assert (tmp_path / "c.json").read_text() == '{"a":[1,2]}\n'


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("90s", 90), ("45", 45), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30x", "-5", "0", "m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_permissions_come_from_the_kernel_and_the_umask_is_never_touched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what any new file gets under this process's umask

    def forbidden(mask: int) -> int:
        raise AssertionError("os.umask changes the mask of every thread")

    monkeypatch.setattr(os, "umask", forbidden)
    atomic_write_json(tmp_path / "a.json", [1])
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="folders are fsynced on POSIX only")
@pytest.mark.parametrize("durable", [True, False])
def test_the_folder_is_fsynced_after_the_rename(durable: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "r.json"
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?"
        synced.append((path, target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic_write_json(target, {"v": 1}, durable=durable)
    if not durable:
        assert synced == []
        return
    assert len(synced) == 2
    (file_path, renamed_before_file_sync), (folder_path, renamed_before_folder_sync) = synced
    assert ".r.json." in file_path and not renamed_before_file_sync  # the temporary, before the rename
    assert folder_path == str(tmp_path) and renamed_before_folder_sync  # the folder, after the rename


@pytest.mark.skipif(os.name != "posix", reason="stale temporaries are recognised on POSIX only")
def test_only_the_temporaries_of_dead_writers_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    from autoseg.utils.atomic import HOST_TAG, remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    names = {
        "dead": f".a.json.{HOST_TAG}-{dead_pid}-{'0' * 16}.tmp.json",
        "alive (this process)": f".a.json.{HOST_TAG}-{os.getpid()}-{'1' * 16}.tmp.json",
        "other machine": f".a.json.0badc0de-{dead_pid}-{'2' * 16}.tmp.json",
        "dead, other target": f".b.json.{HOST_TAG}-{dead_pid}-{'3' * 16}.tmp.json",
        "not ours": ".a.json.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    assert remove_stale_temporaries(tmp_path, "a.json") == [tmp_path / names["dead"]]
    assert remove_stale_temporaries(tmp_path) == [tmp_path / names["dead, other target"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[k] for k in ("alive (this process)", "other machine", "not ours"))


def test_a_dead_runs_staging_folder_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """find-best's merged cross-validation and import-model build a folder beside their target; a run
    killed while building it left a hidden folder that no later run removed."""
    import subprocess
    import sys

    from autoseg.utils.atomic import remove_stale_temporaries, staging_folder

    live = staging_folder(tmp_path / "crossval_folds_0_1")
    (live / "case.nii.gz").write_text("building")
    assert live.is_dir() and live.name.startswith(".crossval_folds_0_1.") and live.parent == tmp_path
    assert remove_stale_temporaries(tmp_path) == []  # its writer (this process) runs
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    dead = tmp_path / live.name.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    live.rename(dead)
    assert remove_stale_temporaries(tmp_path, "crossval_folds_0_1") == [dead] and not dead.exists()


@pytest.mark.parametrize("name", ["case.NII.GZ", "case.NII", "case.NRRD"])
def test_upper_case_endings_are_written(name: str, tmp_path: Path) -> None:
    """ITK reads ``.NII.GZ`` but refuses to write it: the temporary is named in lower case, the result as asked."""
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.name.endswith(name.split(".", 1)[1].lower()) and tmp.name.startswith(f".{name}.")
        tmp.write_bytes(b"x")
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_image(array, Geometry.default(array.shape), tmp_path / name)
    assert np.array_equal(read_image(tmp_path / name)[0], array)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("ending", [".nii.gz", ".npz", ".json", ".nrrd"])
def test_a_long_dotted_name_is_written(ending: str, tmp_path: Path) -> None:
    """A DICOM UID as case id (``1.2.840.113619....nii.gz``, 150 characters): the temporary repeated every dot
    part as its suffix, so its name passed the file system's 255 bytes and the write failed ("File name too
    long") though the result's name is legal. The suffix is the format's ending only."""
    name = "1.2.840.113619.2.55.3." * 6 + "604688119" + ending
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.name.endswith(f".tmp{ending}") and len(tmp.name) < 255
        tmp.write_bytes(b"x")
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    if ending in (".nii.gz", ".nrrd"):
        write_image(array, Geometry.default(array.shape), tmp_path / name)
        assert np.array_equal(read_image(tmp_path / name)[0], array)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("length", [190, 220, 248])
def test_a_name_near_the_file_systems_limit_is_written_and_its_dead_temporaries_found(length: int, tmp_path: Path) -> None:
    """A legal name of up to 255 bytes: its temporary (about 45 bytes more) was refused as 'File name too
    long'; a long name is carried shortened, and stale-temporary cleanup for that target still finds it."""
    import subprocess
    import sys

    from autoseg.utils.atomic import remove_stale_temporaries

    name = "c" * (length - len(".nii.gz")) + ".nii.gz"
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_image(array, Geometry.default(array.shape), tmp_path / name)
    assert np.array_equal(read_image(tmp_path / name)[0], array) and [p.name for p in tmp_path.iterdir()] == [name]
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / name) as tmp:
            assert len(tmp.name.encode()) <= 255
            live = tmp.name
            raise RuntimeError("killed")
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    dead = tmp_path / live.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    dead.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path, "other.nii.gz") == []
    assert remove_stale_temporaries(tmp_path, name) == [dead]


def _full_statvfs(path: object) -> os.statvfs_result:
    """statvfs of a file system with no block left for this user."""
    return os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))


@pytest.mark.skipif(not hasattr(os, "statvfs"), reason="POSIX statvfs")
@pytest.mark.parametrize(
    "cause",
    [
        OSError(28, "No space left on device"),  # write() fails without a file name
        OSError(28, "No space left on device", "/raw/labelsTr/a.nii.gz", None, "/pre/.a.tmp"),  # shutil.copyfile names its source
        RuntimeError("ITK ERROR: NiftiImageIO: could not write"),  # SimpleITK / torch / blosc2
    ],
)
def test_a_full_disk_is_reported_as_such_at_the_target(cause: Exception, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out" / "case.nii.gz"
    monkeypatch.setattr(os, "statvfs", _full_statvfs)
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise cause
    assert info.value.errno == 28 and info.value.filename == str(target)
    assert info.value.__cause__ is cause
    assert list(target.parent.iterdir()) == []


def test_errors_on_a_disk_with_space_are_not_relabelled(tmp_path: Path) -> None:
    cause = RuntimeError("a bug")
    with pytest.raises(RuntimeError) as info:
        with atomic_path(tmp_path / "x.json"):
            raise cause
    assert info.value is cause
    denied = PermissionError(13, "Permission denied", str(tmp_path / "elsewhere"))
    with pytest.raises(PermissionError) as info2:
        with atomic_path(tmp_path / "x.json"):
            raise denied
    assert info2.value is denied


def test_a_writer_that_names_the_full_disk_and_frees_its_blocks_is_believed(tmp_path: Path) -> None:
    """safetensors' Rust writer removes its partial file, so the disk has room again when it is asked."""
    cause = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    target = tmp_path / "checkpoint_best.safetensors"
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise cause
    assert info.value.errno == 28 and info.value.filename == str(target) and info.value.__cause__ is cause


@pytest.mark.skipif(not hasattr(os, "statvfs"), reason="POSIX statvfs")
def test_a_write_that_left_the_disk_full_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SimpleITK's gzip writer ignores a failed write: on a full disk it cut a .nii.gz short without an error."""
    target = tmp_path / "case.nii.gz"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "statvfs", _full_statvfs)
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"cut short")
    assert info.value.errno == 28 and info.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"] and target.read_bytes() == b"old"


def refuse_writes_in(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every new file in ``folder`` fail as on a read-only file system (root's tests cannot chmod it)."""
    open_file = os.open

    def refuse(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if flags & os.O_CREAT and Path(path).parent == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open_file(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)


def test_an_unwritable_folder_is_named_and_a_writable_one_left_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kept.txt").write_text("keep")
    require_writable(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]
    refuse_writes_in(tmp_path, monkeypatch)
    with pytest.raises(OSError) as raised:
        require_writable(tmp_path)
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(tmp_path)


def test_a_refused_write_names_its_target_not_the_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate into a read-only folder named '.summary.json.<host>-<pid>-<random>.tmp.json', a file that never existed."""
    refuse_writes_in(tmp_path, monkeypatch)
    with pytest.raises(OSError) as raised:
        atomic_write_json(tmp_path / "summary.json", {})
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(tmp_path / "summary.json")
