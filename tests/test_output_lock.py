"""The output lock (``.NAME.lock``): one writer per output, the holder named to the next, and the
races and file systems that would let two writers in."""
from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import leftovers
from hybridnde.io import DataError
from hybridnde.output_lock import lock_path, output_lock


def owned_by_another_user(monkeypatch, lock, *, removable: bool) -> None:
    """Make the file now at ``lock`` another user's: it opens only read-only, and (``removable=False``:
    a sticky folder) cannot be removed."""
    theirs = os.stat(lock).st_ino
    real_open, real_unlink = os.open, os.unlink

    def as_another_user(path, flags, *mode):
        if str(path) == str(lock) and flags & (os.O_RDWR | os.O_WRONLY) and \
                os.path.exists(path) and os.stat(path).st_ino == theirs:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    def sticky_unlink(path, *args, **kwargs):
        if not removable and str(path) == str(lock) and os.stat(path).st_ino == theirs:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", as_another_user)
    monkeypatch.setattr(os, "unlink", sticky_unlink)


def test_the_output_lock_refuses_a_second_writer_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "rollout.nc"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from hybridnde.output_lock import output_lock
        with output_lock({str(out)!r}):
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DataError, match=rf"rollout.nc: process {holder.pid} on .* is writing it"), output_lock(out):
            pass
    finally:
        holder.kill()  # kill -9: no clean-up runs, the kernel drops the lock
        holder.wait()
    assert lock_path(out).exists()  # left behind by the killed holder, yet no obstacle
    with output_lock(out):
        assert "process" in lock_path(out).read_text()
    assert not lock_path(out).exists()


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    """Lustre without -o flock answers ENOLCK or ENOSYS: the run must not fail for want of a lock."""
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with output_lock(tmp_path / "out.nc"):
        pass
    assert "cannot lock (No locks available)" in caplog.text and leftovers(tmp_path) == []


@pytest.mark.parametrize("sticky", [False, True], ids=["own folder", "sticky folder"])
def test_another_users_stale_lock_file_is_replaced_or_locked_read_only(tmp_path, monkeypatch, sticky):
    """A stale lock file of another user (mode 0644 before) gave a PermissionError traceback; locked
    read-only, its text then named the dead holder to the next run. It is replaced where the folder
    allows; in a sticky folder it is locked through a read-only descriptor."""
    out = tmp_path / "out.nc"
    lock_path(out).write_text("process 1 on elsewhere\n")
    owned_by_another_user(monkeypatch, lock_path(out), removable=not sticky)
    with output_lock(out):
        text = lock_path(out).read_text()
        # the next run is told who writes: us where the file could be replaced
        with pytest.raises(DataError, match="is writing it"), output_lock(out):
            pass
    assert (text == "process 1 on elsewhere\n") == sticky
    assert lock_path(out).exists() == sticky




def test_outputs_that_share_a_stem_have_their_own_locks(tmp_path):
    with output_lock(tmp_path / "a.nc"), output_lock(tmp_path / "a.pt"):
        assert lock_path(tmp_path / "a.nc") != lock_path(tmp_path / "a.pt")
        with pytest.raises(DataError, match=r"is writing it; wait .*, or give another --out"):
            with output_lock(tmp_path / "a.nc"):
                pass


def test_a_holder_that_wrote_nothing_is_named_another_process(tmp_path):
    out = tmp_path / "out.nc"
    held = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)  # an open file of its own: flock conflicts
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DataError, match=r"out.nc: another process is writing it; wait"), output_lock(out):
            pass
    finally:
        os.close(held)


def test_the_lock_file_names_only_its_holder_and_has_the_outputs_mode(tmp_path):
    """A dead holder's longer text is replaced, not written over (the next refusal named both); the
    file's mode is 0666 less the umask, as the outputs': everyone who may write the output may lock it."""
    out = tmp_path / "out.nc"
    lock_path(out).write_text("process 123456789 on a-dead-holders-long-host-name (since 2026-01-01T00:00:00)\n")
    with output_lock(out):
        assert lock_path(out).read_text().startswith(f"process {os.getpid()} on ")
        assert lock_path(out).read_text().count("\n") == 1
    lock_path(out).unlink(missing_ok=True)
    previous = os.umask(0o027)
    try:
        with output_lock(out):
            mode_027 = os.stat(lock_path(out)).st_mode & 0o777
        os.umask(0o002)
        with output_lock(out):
            mode_002 = os.stat(lock_path(out)).st_mode & 0o777
    finally:
        os.umask(previous)
    assert (mode_027, mode_002) == (0o640, 0o664)


@pytest.mark.parametrize("newcomer", [False, True], ids=["removed", "replaced by a newcomer"])
def test_a_lock_file_removed_between_open_and_lock_is_not_the_one_held(tmp_path, monkeypatch, newcomer):
    """The holder before us removes its file on the way out, maybe between our open and our flock; a
    newcomer may lock a new file there. Held on the removed inode, two runs would write the output: the
    file there now is locked (or its holder named) instead."""
    out = tmp_path / "out.nc"
    lock_path(out).write_text("process 1 on the holder before\n")
    real_flock, opened = fcntl.flock, []

    def holder_leaves_first(descriptor, operation):
        if not opened:
            os.unlink(lock_path(out))
            if newcomer:
                opened.append(os.open(lock_path(out), os.O_RDWR | os.O_CREAT))
                os.write(opened[0], b"process 2 on the newcomer\n")
                real_flock(opened[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                opened.append(None)
        return real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", holder_leaves_first)
    try:
        if newcomer:
            with pytest.raises(DataError, match="process 2 on the newcomer is writing it"), output_lock(out):
                pass
        else:
            with output_lock(out):
                assert lock_path(out).read_text().startswith(f"process {os.getpid()} on ")
                with pytest.raises(DataError, match=f"process {os.getpid()} on .* is writing it"), output_lock(out):
                    pass
    finally:
        if opened and opened[0] is not None:
            os.close(opened[0])


@pytest.mark.parametrize("removable", [True, False], ids=["own folder", "sticky folder"])
def test_another_users_lock_file_on_nfs_is_replaced_or_refused_by_name(tmp_path, monkeypatch, removable):
    """NFS locks only files open for writing (flock on a read-only descriptor fails with EBADF):
    another user's stale lock file is replaced where the folder allows, else the refusal says why."""
    out = tmp_path / "out.nc"
    lock_path(out).write_text("process 1 on elsewhere\n")
    owned_by_another_user(monkeypatch, lock_path(out), removable=removable)
    real_flock = fcntl.flock

    def nfs_flock(descriptor, operation):
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", nfs_flock)
    if removable:
        with output_lock(out):
            assert lock_path(out).read_text().startswith(f"process {os.getpid()} on ")
    else:
        with pytest.raises(DataError, match=r"another user's lock file, which this file system cannot lock from "
                                            r"here \(Bad file descriptor\); remove it if no run"), output_lock(out):
            pass
        assert lock_path(out).read_text() == "process 1 on elsewhere\n"
