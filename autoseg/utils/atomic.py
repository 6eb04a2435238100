"""Atomic writes: a result file is either absent, the old version, or complete; never half-written.

Write to a temporary name in the same folder, flush and fsync, then ``os.replace`` (atomic on POSIX and
Windows when source and target are on one file system), then fsync the folder so the rename itself
survives a power loss (POSIX; Windows cannot open a folder for fsync). The rename alone makes a write
atomic against a killed process; the fsyncs add durability against power loss, and bulk writers that
can redo their work (the preprocessed store, hundreds of small files) skip them with ``durable=False``.

A temporary's name carries its writer (``.<name>.<host>-<pid>-<random>.tmp<suffix>``), so a rerun after
kill -9 removes the leftovers of dead writers on this machine (``remove_stale_temporaries``) without
touching those of a run still writing into the same folder.

The temporary file is created with mode 0666 and ``O_EXCL``, so the kernel applies the process's umask
as for any new file; the umask is never read or changed (``os.umask`` is process-wide: changing it,
even for a moment, races with other threads creating files).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Any, Iterator

TEMP_ATTEMPTS = 100  # random names tried before giving up (a clash is a 1 in 2^64 event)
# This machine in temporary names: PIDs mean nothing on another host sharing the folder (NFS).
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{16}\.tmp")


# Bytes a temporary's name adds to its target's (dots, host, pid, random, ".tmp", the format's ending):
# beyond this a name the file system takes (255 bytes) would give a temporary it refuses.
TEMP_NAME_OVERHEAD = 64
NAME_MAX_BYTES = 255


def temporary_tag(name: str) -> str:
    """The target's name as its temporaries carry it: itself, or for a name too long to carry (a case id of
    200 characters) its first 100 characters, ``~`` and a hash of the whole."""
    if len(name.encode()) <= NAME_MAX_BYTES - TEMP_NAME_OVERHEAD:
        return name
    return f"{name[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _create_temporary(target: Path, suffix: str, folder: bool = False) -> Path:
    """A new empty file (or ``folder``) ``.<name>.<host>-<pid>-<random>.tmp<suffix>`` beside ``target``, with
    the umask's permissions; the name lets ``remove_stale_temporaries`` tell a dead writer's leftovers."""
    for _ in range(TEMP_ATTEMPTS):
        tmp = target.parent / f".{temporary_tag(target.name)}.{HOST_TAG}-{os.getpid()}-{secrets.token_hex(8)}.tmp{suffix}"
        try:
            if folder:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666))
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only or forbidden folder: named by the target, never by a hidden name
            raise OSError(exc.errno, exc.strerror, str(target)) from None
        return tmp
    raise FileExistsError(f"{target.parent}: no free temporary name after {TEMP_ATTEMPTS} attempts")


def require_writable(folder: str | os.PathLike[str]) -> None:
    """Raise the ``OSError`` that writing a file in the existing ``folder`` would raise (a read-only file
    system, no permission), naming the folder: such a folder passed ``mkdir(exist_ok=True)``, so predict and
    ensemble computed every case and then refused each one, naming its temporary file. A probe file is
    created and removed (named as a temporary: a killed run's is removed by ``remove_stale_temporaries``)."""
    folder = Path(folder)
    try:
        probe = _create_temporary(folder / "write-check", "")
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
    probe.unlink()


def format_suffix(name: str) -> str:
    """The ending a writer picks the format by, in lower case: the last suffix, with the one before it when
    the last is ``.gz`` (``.nii.gz``). Not every dot part: a dotted name (a DICOM UID as case id) repeated
    itself in its temporary's suffix, past the file system's 255 bytes."""
    suffixes = Path(name).suffixes
    keep = 2 if len(suffixes) > 1 and suffixes[-1].lower() == ".gz" else 1
    return "".join(suffixes[-keep:]).lower()


def staging_folder(target: str | os.PathLike[str]) -> Path:
    """A new hidden folder beside ``target`` in which to build it before renaming it into place; a killed
    run's staging folder is removed by the next ``remove_stale_temporaries`` of that parent folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _create_temporary(target, "", folder=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name keeps the target's suffix in lower case (``suffix`` overrides it) so that writers
    that pick the format from the extension (SimpleITK, numpy) behave: ITK refuses to write ``.NII.GZ``
    or ``.Nii.gz``, which a dataset's ``file_ending`` may spell, though it reads them. On error the temporary file is removed
    and ``path`` is untouched. ``durable=False`` skips the fsyncs.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(target, suffix if suffix is not None else format_suffix(target.name))
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)
        yield tmp
        _keep_mode(tmp, mode)
        if durable:
            _fsync(tmp)
        if _space_left(target.parent) == 0:
            # SimpleITK's gzip writer ignores a failed write: on a full disk it left a cut-short .nii.gz
            # (4 KB of 11) that predict reported as written, exit 0. A file that emptied the disk is suspect.
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        os.replace(tmp, target)
    except BaseException as exc:
        full = disk_full_error(exc, target)  # asked before the temporary's blocks are freed
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if full is not None:
            raise full from exc
        raise
    if durable and os.name == "posix":
        _fsync(target.parent)


def _keep_mode(tmp: Path, mode: int) -> None:
    """Give ``tmp`` back the umask's permissions it was created with when its writer replaced the file:
    safetensors (0.8) writes a file of its own with mode 0600 and renames it over the temporary, so every
    checkpoint and model weight file came out readable by its owner only (a colleague or a service account
    could not read the model), unlike every other result."""
    if tmp.is_file() and stat.S_IMODE(tmp.stat().st_mode) != mode:
        os.chmod(tmp, mode)


FULL_BELOW_BYTES = 1 << 20  # a file system with less space left counts as full when a write into it failed


def disk_full_error(exc: BaseException, target: Path) -> OSError | None:
    """``OSError(ENOSPC, target)`` when ``exc`` came from a full disk, else None.

    A write that fills the disk fails without a file name (``OSError: [Errno 28] No space left on device``
    from ``write()``), or not as an ``OSError`` at all (SimpleITK, torch and blosc2 raise ``RuntimeError``),
    or naming the source of a copy (``shutil.copyfile``), so the user learnt neither which folder is full
    nor that the disk was the cause. An error whose text names the full disk is taken at its word;
    otherwise the file system is asked, while the failed temporary still holds the blocks it got, whether
    space is left: an error with less than ``FULL_BELOW_BYTES`` left there is reported as a full disk."""
    if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM, exit: never re-labelled
        return None
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        code = exc.errno  # named after the write's target: a copy's error names its source first
    elif isinstance(exc, OSError) and exc.filename is not None:
        return None  # already names its file (a read-only folder, a missing permission...)
    elif (code := _named_disk_full_code(str(exc))) is None:
        free = _space_left(target.parent)
        if free is None or free >= FULL_BELOW_BYTES:
            return None
        code = errno.ENOSPC
    return OSError(code, os.strerror(code), str(target))


def _space_left(folder: Path) -> int | None:
    """Bytes this process may still write on ``folder``'s file system (root may use the reserve); None
    where it cannot be asked (Windows, a vanished folder)."""
    try:
        stats = os.statvfs(folder)
    except (AttributeError, OSError):
        return None
    free = stats.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else stats.f_bavail
    return free * stats.f_frsize


def _named_disk_full_code(text: str) -> int | None:
    """ENOSPC or EDQUOT when an error's text names it: safetensors' Rust writer says ``(os error 28)`` and
    removes its partial file, so the space it found is free again and ``statvfs`` cannot tell."""
    for code in (errno.ENOSPC, errno.EDQUOT):
        if f"(os error {code})" in text or os.strerror(code) in text:
            return code
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only (POSIX; never called on Windows)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], target_name: str | None = None) -> list[Path]:
    """Delete temporaries (files and staging folders) in ``folder`` (for ``target_name`` only, if given) whose writer, a process on
    this machine, no longer runs: what a killed run left. Returns them. A no-op off POSIX."""
    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(".*.tmp*"):
        match = TEMP_NAME.match(path.name)
        if match is None or match["host"] != HOST_TAG or (target_name is not None and match["target"] != temporary_tag(target_name)):
            continue
        if not _process_alive(int(match["pid"])):
            if path.is_dir() and not path.is_symlink():  # a staging folder (staging_folder)
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


def holder_text(pid: int | None) -> str:
    """A lock holder as messages name it: ``process <pid>``, or ``another process`` where its pid is unknown (0, None)."""
    return f"process {pid}" if pid else "another process"


class FolderLocked(Exception):
    """``folder_lock(wait=False)`` found ``folder`` locked by another process: ``pid`` (None where unknown)."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        super().__init__(f"{folder}: locked by {holder_text(pid)}")
        self.folder, self.pid = folder, pid


# Descriptors of the locks this process holds: a forked child (a data loading worker) shares them, and a child
# outliving its parent (killed) kept the lock held; children close their copies (the parent keeps the lock).
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def holds_lock(folder: str | os.PathLike[str]) -> bool:
    """This process holds ``folder``'s lock itself (training's own validation loads its fold's checkpoint): a check of
    who holds it must not name this process as another."""
    try:
        lock_file = os.stat(Path(folder) / LOCK_FILE)
    except OSError:
        return False
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(fd), lock_file):
                return True
    return False


# Hidden (every listing of results, store and predictions skips dot files); an exclusive holder removes it on leaving.
LOCK_FILE = ".autoseg.lock"


def lock_key(path: str | os.PathLike[str]) -> str:
    """``path``'s ``<major>:<minor>:<inode>`` as ``/proc/locks`` names a locked file (its sixth field)."""
    info = os.stat(path)
    return f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"


def lock_holder(folder: str | os.PathLike[str]) -> int | None:
    """The process holding the ``flock`` on ``folder``'s lock file, read from ``/proc/locks`` (Linux); None where
    unknown."""
    holders = _flock_holders(Path(folder) / LOCK_FILE) or []
    return next((pid for _, pid in holders if pid > 0), None)


def exclusive_holder(folder: str | os.PathLike[str]) -> int | None:
    """The pid of the process holding ``folder``'s lock exclusively (0 where unknown), None where none does. Shared
    holders do not count: a check of whether a fold is being trained takes a shared lock for an instant, and a
    ``train`` starting then was refused as 'being trained by' the checker. Read from ``/proc/locks`` (Linux), which
    locks nothing; elsewhere a shared lock is tried, which only an exclusive holder refuses."""
    path = Path(folder) / LOCK_FILE
    holders = _flock_holders(path)
    if holders is None:
        return _refuses_shared_lock(path)
    return next((pid for kind, pid in holders if kind == "WRITE"), None)


def shared_holder(folder: str | os.PathLike[str]) -> int | None:
    """The pid of a process holding ``folder``'s lock shared (0 where unknown; ``autoseg preprocess`` holds a store's
    for its whole run, until the references are copied), None where none does or where ``/proc/locks`` cannot tell
    (off Linux): asked without locking."""
    holders = _flock_holders(Path(folder) / LOCK_FILE) or []
    return next((pid for kind, pid in holders if kind == "READ"), None)


def _flock_holders(path: Path) -> list[tuple[str, int]] | None:
    """``(READ or WRITE, pid or 0)`` of each ``flock`` granted on the file ``path`` (none where it is missing), read from
    ``/proc/locks``; None where that cannot be read."""
    try:
        where = lock_key(path)
    except OSError:  # no lock file: nobody holds the lock (an exclusive holder removes it on leaving)
        return []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    return [(fields[3], int(fields[4]) if fields[4].isdigit() else 0) for fields in map(str.split, lines)
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == where]


def _refuses_shared_lock(path: Path) -> int | None:
    """0 where the lock file ``path`` refuses a shared ``flock`` (an exclusive holder), else None."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # closing the descriptor releases it
    except OSError as exc:
        return 0 if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    finally:
        os.close(fd)


_warned_no_lock: set[int] = set()  # errnos already warned about: one warning per kind, not one per saved case


def _warn_unlocked(folder: str | os.PathLike[str], exc: OSError) -> None:
    """Say once that a file system without ``flock`` (ENOLCK, ENOSYS, EOPNOTSUPP) runs this process unlocked."""
    if exc.errno not in _warned_no_lock:
        _warned_no_lock.add(exc.errno)
        print(f"warning: {folder}: its file system cannot lock files ({exc.strerror}); going on without the lock "
              "that keeps two runs from writing there at once", file=sys.stderr, flush=True)


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of the lock file ``path``, made if missing. In a folder this process may only read (a
    read-only store), an existing one is opened to read (``flock`` needs no write access); with none there,
    None: no lock, as none can have been taken there by anyone who could not make it either."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None


def _locked_file(folder: str | os.PathLike[str], operation: int) -> int | None:
    """A descriptor of ``folder``'s lock file locked with ``operation``, or None where the file system has no
    ``flock``. A lock file removed (or replaced) while we waited is locked again: a lock on it excluded nobody."""
    import fcntl

    path = Path(folder) / LOCK_FILE
    while True:
        fd = _open_lock_file(path)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, operation)
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return fd
        except BlockingIOError:
            os.close(fd)
            raise FolderLocked(Path(folder), lock_holder(folder)) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                _warn_unlocked(folder, exc)
                return None
            if exc.errno != errno.ESTALE:  # ESTALE: removed by its holder on another NFS client; lock a new one
                raise
            continue
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], wait: bool = True, shared: bool = False) -> Iterator[None]:
    """Exclusive lock on a folder: ``flock`` on its hidden regular file ``LOCK_FILE``, removed by an exclusive holder
    as it leaves (a folder's own descriptor cannot be flocked over NFS, where folds train on several hosts); released by
    the kernel when a holder is killed. Off POSIX, or on a file system without ``flock`` (one warning), no lock.
    ``shared``: a lock many holders share, which excludes only the exclusive one (writers of separate files).
    ``wait=False`` raises ``FolderLocked`` (naming the holder) instead of waiting for another process's lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = _locked_file(folder, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    if fd is None:
        yield
        return
    _HELD_LOCKS.add(fd)
    holder = os.getpid()
    try:
        yield
    finally:
        if os.getpid() == holder:  # a forked child leaving the block closed its copy at the fork
            _HELD_LOCKS.discard(fd)
            if not shared:
                _remove_lock_file(folder, fd)
            os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def folder_lock_saying_waits(folder: str | os.PathLike[str], holders: str) -> Iterator[None]:
    """``folder_lock(folder)``, saying once on stderr, naming the holder, when another process holds it: a silent
    wait of minutes (for ``holders``, what takes that lock, e.g. ``another find-best of the dataset``) looked like
    a hang."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(folder, wait=False))
        except FolderLocked as locked:
            print(f"waiting for {holder_text(locked.pid)} ({holders}) to release {folder}", file=sys.stderr, flush=True)
            stack.enter_context(folder_lock(folder))
        yield


def _remove_lock_file(folder: str | os.PathLike[str], fd: int) -> None:
    """Remove the lock file while its exclusive lock is still held, so that no folder a run wrote into (predictions,
    a fold) keeps it: a process waiting on it then finds it gone and locks a new one (``_locked_file``)."""
    path = Path(folder) / LOCK_FILE
    with contextlib.suppress(OSError):
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()


def _fsync(path: Path) -> None:
    """fsync a file or (POSIX) a folder; file systems that refuse it (some network mounts) are skipped."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2, durable: bool = True) -> None:
    """Write ``obj`` as JSON (insertion order; ``indent=None`` writes one compact line)."""
    separators = (",", ":") if indent is None else None
    atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators, allow_nan=True) + "\n", durable)
