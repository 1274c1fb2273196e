"""Writing outputs safely: atomic NetCDF writes under Ctrl-C, a full disk and killed writers, and the
one-writer lock beside an output."""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import a_dead_pid, break_chunk_index, leftovers
from hybridnde.io import DataError, WriteFailed, open_trajectories, trajectory_dataset, write_netcdf
from hybridnde.output_paths import _host_tag

CASES = Path(__file__).resolve().parents[1] / "cases"


def small_dataset():
    u = np.random.default_rng(0).standard_normal((2, 5, 3))
    return trajectory_dataset(u, np.arange(5) * 0.1, state_dim="component", state_coords=["a", "b", "c"])


def test_ctrl_c_during_a_write_stops_after_it_and_leaves_nothing(tmp_path, monkeypatch):
    """A KeyboardInterrupt inside the NetCDF library left xarray's lock taken: the process hung."""
    original, finished = xr.Dataset.to_netcdf, []

    def interrupted_write(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the library writes
        result = original(self, *args, **kwargs)
        finished.append(True)  # the library's section ran to its end: its locks are released
        return result

    monkeypatch.setattr(xr.Dataset, "to_netcdf", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        write_netcdf(small_dataset(), tmp_path / "out.nc")
    assert finished == [True] and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.fixture(scope="module")
def a_file_read_for_a_while(tmp_path_factory):
    """~20 MB of zlib-compressed values: ~0.1 s to read."""
    values = np.random.default_rng(0).standard_normal((48, 200, 256))
    dataset = trajectory_dataset(values, np.arange(200) * 0.1, state_dim="x", state_coords=np.arange(256) * 0.1)
    return write_netcdf(dataset, tmp_path_factory.mktemp("read") / "big.nc", compression_level=1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("reader", ["open_trajectories", "data_checksum"])
def test_an_interruption_during_a_netcdf_read_is_not_lost(a_file_read_for_a_while, signum, reader):
    """The NetCDF library swallowed a KeyboardInterrupt raised inside a read: Ctrl-C (or the SIGTERM the
    command turns into one) while the truth was loaded or hashed was lost, and the work went on."""
    import threading
    import time

    from hybridnde.checksums import data_checksum
    from hybridnde.interrupts import interrupt_on_signal
    from hybridnde.io import open_trajectories

    read = {"open_trajectories": open_trajectories, "data_checksum": data_checksum}[reader]
    previous = signal.signal(signal.SIGTERM, interrupt_on_signal)  # as the hybridnde command does
    try:
        timer = threading.Timer(0.01, os.kill, (os.getpid(), signum))
        timer.start()
        with pytest.raises(KeyboardInterrupt) as caught:
            read(a_file_read_for_a_while)
            time.sleep(3)  # (a signal that was swallowed never comes)
        timer.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught.value.args == (() if signum == signal.SIGINT else ("SIGTERM",))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_failing_write_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise RuntimeError("NetCDF: HDF error")  # what the library says when the disk fills

    monkeypatch.setattr(xr.Dataset, "to_netcdf", full_disk)
    with pytest.raises(WriteFailed, match=r"out.nc: writing failed \(NetCDF: HDF error\); \d+ MiB are free"):
        write_netcdf(small_dataset(), tmp_path / "out.nc")
    assert leftovers(tmp_path) == []


def test_a_failing_write_is_a_run_time_failure_not_bad_input(tmp_path, monkeypatch, capsys):
    """Exit 1 with the message and no traceback, as a full disk while streaming is: it was DataError,
    exit 2, which says the input is wrong (and made ``hybridnde run`` retry the stage afresh)."""
    from hybridnde.cli import main

    from hybridnde.netcdf_stream import TrajectoryStreamWriter

    def full_disk(self, *args, **kwargs):
        raise RuntimeError("NetCDF: HDF error")
    monkeypatch.setattr(TrajectoryStreamWriter, "commit", full_disk)  # (an adaptive solve's file: written in chunks)
    out = tmp_path / "truth.nc"
    assert main(["simulate", str(CASES / "lorenz63.toml"), "--out", str(out), "--set", "time.integrator=\"dopri5\"",
                 "--set", "time.n_steps=20", "--set", "initial_condition.members=2"]) == 1
    err = capsys.readouterr().err
    assert "truth.nc: writing failed (NetCDF: HDF error)" in err and "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_a_file_larger_than_the_memory_available_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """Reading it all (training, evaluation) would have the OOM killer end the command without a word."""
    from hybridnde import memory

    out = write_netcdf(small_dataset(), tmp_path / "data.nc")
    with open_trajectories(out, load=False) as lazy:
        size = lazy.nbytes
    assert size >= small_dataset()["u"].nbytes
    monkeypatch.setattr(memory, "available_memory", lambda: size - 1)
    with pytest.raises(DataError, match=r"data.nc: its data, .* GiB, do not fit in the .* GiB of memory available; "
                                        r"use a machine with more memory, or a file with fewer members or saves"):
        open_trajectories(out)
    monkeypatch.setattr(memory, "available_memory", lambda: size)
    assert open_trajectories(out)["u"].shape == (2, 5, 3)


def test_a_file_whose_data_cannot_be_read_is_named_as_bad_input(tmp_path):
    """Its header opens but its chunk index is damaged: netCDF4's bare RuntimeError, a traceback at exit 1."""
    out = write_netcdf(small_dataset(), tmp_path / "data.nc", time_chunk=1)
    assert break_chunk_index(out)
    with pytest.raises(DataError, match=r"data.nc: its data cannot be read \(NetCDF: HDF error\); make or copy "):
        open_trajectories(out)


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = a_dead_pid()
    host = _host_tag()  # host name and PID namespace: containers sharing a host name have their own PIDs
    orphan = tmp_path / f".out.nc.{host}.{dead}.x1y2.part"
    alive = tmp_path / f".out.nc.{host}.{os.getpid()}.x3y4.part"  # a writer still running
    elsewhere = tmp_path / f".out.nc.{socket.gethostname()}-1.{dead}.x5y6.part"  # another namespace: kept
    for path in (orphan, alive, elsewhere):
        path.write_bytes(b"partial")
    write_netcdf(small_dataset(), tmp_path / "out.nc")
    assert leftovers(tmp_path) == sorted([alive.name, elsewhere.name, "out.nc"])


def test_a_staging_folder_goes_when_its_block_ends_and_a_killed_writers_with_the_next(tmp_path):
    from hybridnde.output_paths import staging_folder

    orphan = tmp_path / f".figures.{_host_tag()}.{a_dead_pid()}.x1y2.part"  # as a killed evaluate leaves it
    (orphan / "sub").mkdir(parents=True)
    (orphan / "sub" / "error_growth.png").write_bytes(b"drawn")
    with pytest.raises(KeyboardInterrupt), staging_folder(tmp_path / "figures") as staging:
        assert staging.parent == tmp_path and staging.is_dir() and not orphan.exists()
        (staging / "spectrum.png").write_bytes(b"half drawn")
        raise KeyboardInterrupt
    assert leftovers(tmp_path) == []
    # the folders it made go too when nothing was put in them; one that holds a file stays
    with pytest.raises(KeyboardInterrupt), staging_folder(tmp_path / "new" / "figures" / "figures"):
        raise KeyboardInterrupt
    with staging_folder(tmp_path / "made" / "figures" / "figures") as staging:
        (staging / "error_growth.png").write_bytes(b"drawn")
        (staging / "error_growth.png").replace(tmp_path / "made" / "figures" / "error_growth.png")
    assert leftovers(tmp_path) == ["made"] and leftovers(tmp_path / "made" / "figures") == ["error_growth.png"]


def test_of_two_held_signals_the_first_one_is_raised():
    """SIGTERM (a scheduler's time limit) then Ctrl-C while the library works: the interrupt raised once it
    is done is the SIGTERM's, the one received first."""
    from hybridnde.interrupts import interrupt_on_signal, interrupts_deferred

    previous = signal.signal(signal.SIGTERM, interrupt_on_signal)
    try:
        with pytest.raises(KeyboardInterrupt) as caught, interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert caught.value.args == ("SIGTERM",)


@pytest.mark.parametrize("handler", ["ignored", "the application's"])
def test_a_sigint_handler_of_the_application_is_left_alone(tmp_path, handler):
    """Deferring replaced any handler: an ignored SIGINT (a background job) killed the write, and an
    application's own graceful-stop handler was never called. It is called when the signal comes, while
    the library writes, not held until the write is done (it is the application's to decide)."""
    calls, written = [], []
    installed = signal.SIG_IGN if handler == "ignored" else (lambda number, frame: calls.append((number, written[:])))
    previous = signal.signal(signal.SIGINT, installed)
    try:
        original = xr.Dataset.to_netcdf

        def interrupted_write(self, *args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            result = original(self, *args, **kwargs)
            written.append(True)
            return result

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(xr.Dataset, "to_netcdf", interrupted_write)
            write_netcdf(small_dataset(), tmp_path / "out.nc")
        assert (tmp_path / "out.nc").is_file() and signal.getsignal(signal.SIGINT) is installed
        assert calls == ([] if handler == "ignored" else [(signal.SIGINT, [])])
    finally:
        signal.signal(signal.SIGINT, previous)


def test_atomic_path_onto_a_folder_is_a_data_error_before_the_block_runs(tmp_path):
    """os.replace onto a folder was an IsADirectoryError traceback after the work was done."""
    from hybridnde.io import atomic_path

    (tmp_path / "report.md").mkdir()
    ran = []
    with pytest.raises(DataError, match="report.md: is a folder where a file is to be written"):
        with atomic_path(tmp_path / "report.md"):
            ran.append(True)
    assert not ran and [path.name for path in tmp_path.iterdir()] == ["report.md"]


def test_a_trajectory_file_whose_member_labels_repeat_is_refused(tmp_path):
    """Files pair by member label: a repeated label paired one member's truth with another's rollout."""
    from hybridnde.io import open_trajectories

    u = np.zeros((2, 3, 2))
    path = write_netcdf(trajectory_dataset(u, [0.0, 0.1, 0.2], state_dim="x", state_coords=[0.0, 1.0],
                                           members=[4, 4]), tmp_path / "twice.nc")
    with pytest.raises(DataError, match="twice.nc: member labels repeat"):
        open_trajectories(path)
    fine = write_netcdf(trajectory_dataset(u, [0.0, 0.1, 0.2], state_dim="x", state_coords=[0.0, 1.0],
                                           members=[4, 5]), tmp_path / "fine.nc")
    assert open_trajectories(fine)["member"].values.tolist() == [4, 5]


def test_the_longest_accepted_output_name_leaves_room_for_its_siblings_temporary_files(tmp_path):
    """An output name is accepted only if the files written beside it (each through a temporary file
    named after it) fit the file system too: without that margin, the longest accepted name failed with
    Errno 36 at the first rollout checkpoint."""
    from hybridnde.io import atomic_path, check_output_path
    from hybridnde.netcdf_stream import checkpoint_path, partial_path
    from hybridnde.training import checkpoint_path as training_checkpoint_path
    from hybridnde.training.checkpoint import partial_log_path

    def accepted(length):
        try:
            check_output_path(tmp_path / ("a" * (length - 3) + ".nc"))
            return True
        except DataError:
            return False

    longest = max(length for length in range(100, 256) if accepted(length))
    out, closure = tmp_path / ("a" * (longest - 3) + ".nc"), tmp_path / ("a" * (longest - 3) + ".pt")
    for sibling in (out, checkpoint_path(out), partial_path(out), training_checkpoint_path(closure),
                    partial_log_path(closure)):
        with atomic_path(sibling) as temporary:
            temporary.write_bytes(b"x")
        assert sibling.is_file()


def test_an_output_path_refused_for_another_reason_than_length_is_not_told_to_be_shorter(tmp_path, monkeypatch):
    """Every OSError met checking a path was answered "choose a shorter path"; a folder on the way one
    cannot search, or a broken symbolic link where a folder is to be made, needs another path."""
    from hybridnde.io import check_output_path

    locked = tmp_path / "locked"
    real_exists = Path.exists

    def exists(self, *args, **kwargs):
        if locked in (self, *self.parents):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(DataError, match=r"cannot be used \(Permission denied\); choose a path in folders you can open"):
        check_output_path(locked / "t.nc")
    monkeypatch.undo()
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for broken in ("loop_a", "dangling"):  # passed the check, then failed making the folder after the work
        with pytest.raises(DataError, match=f"{broken} is a symbolic link to nothing \\(or a loop\\); choose another"):
            check_output_path(tmp_path / broken / "deeper" / "t.nc")
    assert check_output_path(tmp_path / "dangling") == tmp_path / "dangling"  # the link itself is replaced


def test_output_paths_the_file_system_or_netcdf_cannot_take_are_refused_before_the_work(tmp_path, monkeypatch):
    """A name whose temporary sibling is too long failed after the work (Errno 36), a longer one and a
    non-UTF-8 one (netCDF4's UnicodeEncodeError) with tracebacks; an existing read-only --figures folder
    was tested through its parent and failed writing the first figure."""
    from hybridnde.io import check_output_path

    fits = tmp_path / ("a" * 180 + ".nc")
    assert check_output_path(fits) == fits
    with pytest.raises(DataError, match=r"the name is too long; the temporary files written beside it need up to \d+ of"):
        check_output_path(tmp_path / ("a" * 240 + ".nc"))
    with pytest.raises(DataError, match=r"cannot be used \(File name too long\); choose a shorter path"):
        check_output_path(tmp_path / ("a" * 300) / "t.nc")
    with pytest.raises(DataError, match="not a UTF-8 path"):
        check_output_path(tmp_path / os.fsdecode(b"bad\xffname") / "t.nc")
    figures = tmp_path / "figures"
    figures.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != figures and real_access(path, mode))
    with pytest.raises(DataError, match="--figures .*figures: cannot write in .*figures;"):
        check_output_path(figures, "--figures", folder=True)


def test_a_ctrl_c_while_evaluate_reads_the_files_stops_once_the_reads_are_done(tmp_path, monkeypatch):
    """evaluate_files reads the paired members inside the NetCDF library, which swallowed a Ctrl-C."""
    import hybridnde.evaluate as evaluate

    rollout = write_netcdf(small_dataset(), tmp_path / "rollout.nc")
    reference = write_netcdf(small_dataset(), tmp_path / "reference.nc")
    real, finished = evaluate.align_trajectories, []

    def interrupted_read(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the files are read
        result = real(*args, **kwargs)
        finished.append(True)  # the reads ran to their end: the interrupt was held, not raised inside
        return result

    monkeypatch.setattr(evaluate, "align_trajectories", interrupted_read)
    with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_files(rollout, reference)
    assert finished == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_files_are_read_written_and_hashed_outside_the_main_thread(tmp_path):
    """A library user's worker thread (no signal handler runs there) may read, hash and write files."""
    from hybridnde.checksums import data_checksum
    from hybridnde.io import open_trajectories

    path = write_netcdf(small_dataset(), tmp_path / "t.nc")
    results, errors = [], []

    def work():
        try:
            results.append((open_trajectories(path)["u"].shape, data_checksum(path),
                            write_netcdf(small_dataset(), tmp_path / "again.nc").name))
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == [] and results == [((2, 5, 3), data_checksum(path), "again.nc")]


@pytest.mark.parametrize("number, remedy", [(errno.ENAMETOOLONG, "choose a shorter --out"),
                                            (errno.EACCES, "choose a --out in folders you can open"),
                                            (errno.EPERM, "choose a --out in folders you can open"),
                                            (errno.ELOOP, "choose another --out")])
def test_a_file_beside_the_output_that_cannot_be_checked_is_answered_by_the_cause(tmp_path, monkeypatch, number,
                                                                                 remedy):
    """Every OSError was answered "choose a shorter --out"; only a too-long name is fixed by that."""
    from hybridnde.output_paths import check_not_folders

    def failing_is_dir(self):
        raise OSError(number, os.strerror(number), str(self))

    with monkeypatch.context() as patch, pytest.raises(DataError, match=f"beside it cannot be used .*; {remedy}$"):
        patch.setattr(Path, "is_dir", failing_is_dir)
        check_not_folders([tmp_path / "out.log"], tmp_path / "out.nc")


def test_a_made_up_name_fits_up_to_the_file_systems_limit_counted_in_bytes(tmp_path):
    """The longest name the file system takes is taken; one byte more is refused, and the limit is
    in UTF-8 bytes, not characters (an accented variant label is two bytes a letter)."""
    from hybridnde.output_paths import _name_max, check_name_fits

    limit = _name_max(tmp_path / "x")
    check_name_fits("a" * limit, tmp_path, "the variant folder", fix="shorten it")  # the longest name: taken
    (tmp_path / ("a" * limit)).mkdir()  # as the file system does
    with pytest.raises(DataError, match=f"{limit + 1} characters, more than the {limit} .*; shorten it"):
        check_name_fits("a" * (limit + 1), tmp_path, "the variant folder", fix="shorten it")
    wide = "é" * (limit // 2 + 1)  # fewer characters than the limit, more bytes
    with pytest.raises(OSError):
        (tmp_path / wide).mkdir()
    with pytest.raises(DataError, match=f"{2 * len(wide)} characters, more than the {limit}"):
        check_name_fits(wide, tmp_path, "the variant folder", fix="shorten it")


def test_the_staging_folder_of_a_killed_writer_goes_with_the_next(tmp_path):
    from hybridnde.output_paths import staging_folder

    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        from hybridnde.output_paths import staging_folder
        block = staging_folder({str(tmp_path / "figures" / "figures")!r})
        (block.__enter__() / "error_growth.png").write_bytes(b"half drawn")
        os._exit(9)  # as kill -9: no clean-up
        """)], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert killed.returncode == 9 and len(leftovers(tmp_path / "figures")) == 1
    with staging_folder(tmp_path / "figures" / "figures"):
        pass
    assert leftovers(tmp_path / "figures") == []


def test_atomic_path_writes_beside_its_target_with_the_usual_mode_into_new_folders(tmp_path):
    """Beside the output (a rename across file systems fails after all the work; orphans elsewhere are
    never swept), named so the next writer's sweep finds it, and with the mode umask gives (not
    mkstemp's 0600: colleagues in a shared folder read the outputs)."""
    import stat

    from hybridnde.output_paths import atomic_path

    target = tmp_path / "new" / "sub" / "o.nc"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.name.startswith(".o.nc.")
        assert temporary.name.endswith(".part")
        temporary.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"x" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert write_netcdf(small_dataset(), tmp_path / "another" / "o.nc").is_file()


def test_a_full_disk_is_told_without_a_traceback_however_the_error_is_wrapped():
    from hybridnde.output_paths import disk_full_message

    assert disk_full_message(RuntimeError("HDF error: No space left on device")).endswith(
        "; free some space or choose another --out")  # (HDF5's errors carry no errno)
    hdf5 = RuntimeError("Can't synchronously write data (file write failed: time = Sat Nov 28 20:01:02 2026\n"
                        ", filename = 't.nc', buf = 0x7f00, total write size = 4096, errno = 28, error message = "
                        "'No space left on device')")  # one line, not HDF5's several with addresses
    assert disk_full_message(hdf5) == "no space left on the device (No space left on device); free some space or " \
                                      "choose another --out"
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise RuntimeError("the writer thread failed")  # chained implicitly: __context__ only
    except RuntimeError as wrapped:
        assert disk_full_message(wrapped).startswith("no space left on the device ([Errno 28] full)")
    assert disk_full_message(RuntimeError("something else")) is None
