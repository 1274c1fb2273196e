"""One writer per output: an advisory lock beside it, ``.NAME.lock``, held while a run writes.

Two runs given the same ``--out`` would otherwise remove each other's partial file and checkpoint
and keep writing into what they believe is theirs; a later ``--resume`` then trusts a checkpoint that
describes another file (members silently NaN). The lock is ``flock``-based: the kernel releases it
when its holder dies (``kill -9`` included), so a stale lock file never blocks anyone (another user's
is locked through a read-only descriptor), and a second run is refused at once, naming the holder.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from .io import DataError

__all__ = ["lock_path", "output_lock", "remove_held_lock_file"]

log = logging.getLogger(__name__)


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _removed(path: Path) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:  # another user's file in a sticky folder
        return False
    return True


def _acquire(path: Path, output: Path) -> int:
    """The locked file's descriptor (``path``, the lock of ``output``); ``DataError`` naming the
    holder when another run has it."""
    while True:
        writable = True
        try:  # 0o666 less the umask, as the outputs: everyone who may write the output may lock it
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: a read-only descriptor locks as well
            writable = False
            try:
                descriptor = os.open(path, os.O_RDONLY)
            except OSError as error:
                raise DataError(f"{path}: cannot open this lock file ({error.strerror}); remove it if no run "
                                "is writing the output, or give another --out") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(descriptor)
            raise DataError(f"{output}: {holder} is writing it; wait for that run to end (or stop it), or give "
                            "another --out") from None
        except OSError as error:
            if not writable:  # NFS locks only files open for writing: replace another user's stale file
                os.close(descriptor)
                if _removed(path):
                    continue
                raise DataError(f"{path}: another user's lock file, which this file system cannot lock from here "
                                f"({error.strerror or error}); remove it if no run is writing the output, or give "
                                "another --out") from None
            # a file system without locks (Lustre mounted without -o flock, some NFS)
            log.warning("%s: cannot lock (%s) on this file system; nothing stops a second run from writing the same "
                        "output, so give each run its own --out", path, error.strerror or error)
            break
        # the holder before us may have removed the file between our open and our lock: lock the file
        # that is there now, or two runs would each hold a lock on a different inode
        try:
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if current and not writable and _removed(path):
            current = False  # another user's stale file, ours to replace: its text would name a dead holder
        if current:
            break
        os.close(descriptor)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with contextlib.suppress(OSError):  # who holds it, for the next one's message (not on a read-only descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()} (since {started})\n".encode(), 0)
    return descriptor


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold ``.NAME.lock`` beside ``path`` for the block; raises ``DataError`` at once when another
    run holds it. The lock file is removed on the way out."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    descriptor = _acquire(lock, Path(path))
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError):  # gone already, or another user's in a sticky folder: harmless
            os.unlink(lock)  # while still locked: a newcomer then opens a fresh file (see _acquire)
        os.close(descriptor)


def remove_held_lock_file(path: str | Path) -> None:
    """Remove the lock file of ``path`` that another process of this job holds and cannot remove itself:
    under MPI the output lock is rank 0's, and a rank that fails aborts the job, killing rank 0 inside a
    collective before its exit handlers run (its lock file was left behind)."""
    with contextlib.suppress(OSError):
        os.unlink(lock_path(path))
