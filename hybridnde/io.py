"""Trajectories <-> CF-style NetCDF through xarray, written atomically.

Schema (docs/netcdf.md): ``u(member, time, x)`` for fields or ``u(member, time, component)`` for
ODE states, ``status(member)`` with CF flags, ``blowup_time(member)``; global attributes carry the
package version, the solver, the closure checksum and the full case as TOML text.
"""
from __future__ import annotations

import contextlib
import functools
import datetime
import errno
import glob
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .config.fields import ConfigError

__all__ = [
    "DataError", "ResumeRefused", "STATUS_FLAGS", "VARIABLE_ATTRS", "trajectory_dataset", "write_netcdf", "package_version",
    "open_trajectories", "atomic_path", "netcdf_encoding", "check_output_path", "check_not_folders",
    "platform_description", "utc_now", "warn_if_disk_short", "disk_full_message", "load_error_text",
]

log = logging.getLogger(__name__)

#: member status values (CF flag_values / flag_meanings)
STATUS_FLAGS: dict[str, int] = {"ok": 0, "blew_up": 1, "nonfinite_input": 2}

#: CF metadata of every variable and coordinate, in one table (pyqg style)
VARIABLE_ATTRS: dict[str, dict[str, Any]] = {
    "u": {"long_name": "state", "units": "1"},
    # no axis = "T": CF (4, 4.4) reads that as a time coordinate, whose units must be "<unit> since
    # <date>"; these systems' time is nondimensional, so "1", a plain coordinate
    "time": {"long_name": "time", "units": "1"},
    "x": {"long_name": "position on the periodic domain", "units": "1", "axis": "X"},
    "component": {"long_name": "state component"},
    # (CF checkers ask every coordinate for units); "realization": CF's name for an ensemble axis
    "member": {"long_name": "global ensemble member index", "units": "1", "standard_name": "realization"},
    "status": {"long_name": "member status",
               "flag_values": np.array(list(STATUS_FLAGS.values()), dtype=np.int8),
               "flag_meanings": " ".join(STATUS_FLAGS)},
    "blowup_time": {"long_name": "time at which the member blew up (NaN if it did not)", "units": "1"},
}


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (``history`` attributes)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class DataError(ValueError):
    """An input file (data, initial conditions, checkpoint) that cannot be used; names the file."""


class ResumeRefused(DataError, ConfigError):
    """A checkpoint that the run asked to resume does not fit it (another case, input or run); names
    what differs. ``hybridnde run`` starts such a stage afresh, a single command stops (exit 2)."""


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    """``"0.1.0"``, and where the package runs from a git checkout the commit it runs
    (``"0.1.0 (git e1f64eb0c2a1-dirty)"``; ``-dirty``: tracked files changed): outputs name the code
    that made them, which the version alone does not while it is developed."""
    from . import __version__

    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return __version__
    # read-only: `git describe --dirty` refreshes the index (takes index.lock, racing a commit in the
    # same checkout); status with optional locks off does not
    environment = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*arguments: str) -> str:
        return subprocess.run(["git", "-C", str(source), *arguments], capture_output=True, text=True, timeout=10,
                              check=False, env=environment).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(commit) and bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return f"{__version__} (git {commit}{'-dirty' if dirty else ''})" if commit else __version__


def platform_description(device: Any) -> str:
    """What computed the values, for the ``platform`` attribute: the last bits of a trajectory depend on
    the torch build, the device and the thread count (reductions and FFTs split work by threads)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = platform.processor() or platform.machine() or "unknown processor"
    return (f"torch {torch.__version__} on {device} ({hardware}), {torch.get_num_threads()} torch thread(s); "
            f"numpy {np.__version__}; Python {platform.python_version()}")


def trajectory_dataset(u: np.ndarray, times: Sequence[float], *, state_dim: str, state_coords: Any,
                       members: Sequence[int] | None = None, status: np.ndarray | None = None,
                       blowup_time: np.ndarray | None = None, title: str = "", solver: str = "",
                       closure_checksum: str = "none", case_toml: str = "",
                       extra_attrs: Mapping[str, Any] | None = None):
    """An ``xarray.Dataset`` in the hybridnde schema.

    Args:
        u: (member, time, *state) trajectories.
        state_dim: ``"x"`` (fields) or ``"component"`` (ODE states), with ``state_coords`` its values.
        members: global member indices (default ``0..n-1``).
    """
    import xarray as xr

    u = np.asarray(u)
    n_members = u.shape[0]
    members = np.arange(n_members) if members is None else np.asarray(members)
    if status is None:
        status = np.zeros(n_members, dtype=np.int8)
    if blowup_time is None:
        blowup_time = np.full(n_members, np.nan)
    coords = {"member": ("member", members.astype(np.int64)), "time": ("time", np.asarray(times, dtype=np.float64)),
              state_dim: (state_dim, np.asarray(state_coords) if state_dim == "x" else np.asarray(state_coords, dtype=str))}
    dataset = xr.Dataset(
        {"u": (("member", "time", state_dim), u),
         "status": ("member", np.asarray(status, dtype=np.int8)),
         "blowup_time": ("member", np.asarray(blowup_time, dtype=np.float64))},
        coords=coords)
    for name, attrs in VARIABLE_ATTRS.items():
        if name in dataset.variables:
            dataset[name].attrs.update(attrs)
    now = utc_now()
    dataset.attrs.update({
        "Conventions": "CF-1.10",
        "title": title,
        "source": f"hybridnde {package_version()}; solver: {solver}; closure checksum: {closure_checksum}",
        "history": f"{now} created by hybridnde {package_version()}",
        "closure_checksum": closure_checksum,
        "case_toml": case_toml,
    })
    dataset.attrs.update(dict(extra_attrs or {}))
    return dataset


def netcdf_encoding(dataset, *, compression_level: int = 4, time_chunk: int = 64) -> dict[str, dict]:
    """zlib compression and chunking along ``time`` (whole members' states per chunk)."""
    encoding: dict[str, dict] = {}
    for name, variable in dataset.data_vars.items():
        spec: dict[str, Any] = {}
        if compression_level > 0 and variable.dtype.kind in "fiu":
            spec.update(zlib=True, complevel=compression_level, shuffle=True)
        if variable.ndim and "time" in variable.dims:
            spec["chunksizes"] = tuple(max(1, min(size, time_chunk if dim == "time" else (1 if dim == "member" else size)))
                                       for dim, size in zip(variable.dims, variable.shape))
        encoding[name] = spec
    for name in dataset.coords:
        if dataset[name].dtype.kind == "f":
            encoding[name] = {"_FillValue": None}  # CF: coordinate variables have no missing values
    return encoding


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    Nothing partial is ever visible under ``path``; the temporary file is removed on failure.
    """
    path = Path(path)
    if path.is_dir():  # (commands check their outputs first; this is the last guard, before the work)
        raise DataError(f"{path}: is a folder where a file is to be written; move it away or choose another output")
    path.parent.mkdir(parents=True, exist_ok=True)
    host = _host_tag()
    _remove_orphans(path, host)
    owner = f"{host}.{os.getpid()}"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{owner}.", suffix=".part", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual mode
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


#: zlib saves ~10 % on chaotic float states: an output this many times the free space cannot fit
DISK_REFUSAL_FACTOR = 4.0


def warn_if_disk_short(path: str | Path, raw_bytes: int, what: str, *, fix: str | None = None,
                       warn: bool = True) -> bool:
    """Log a warning (and return ``True``) when the file system of ``path`` has less free space than
    ``raw_bytes``, the size of what ``what`` writes before compression (zlib saves ~10 % on chaotic
    states: measured 0.88-0.90 on the ks_l22 files), so that a full disk is not first met at the end.
    With ``fix`` (the keys to change, in words) ``DataError`` instead when the size is more than
    ``DISK_REFUSAL_FACTOR`` times the free space; ``warn=False``: no warning (other MPI ranks)."""
    ancestor = _existing_ancestor(Path(path).parent)
    try:
        free = shutil.disk_usage(ancestor).free
    except OSError:
        return False
    if free >= raw_bytes:
        return False
    if fix is not None and raw_bytes > DISK_REFUSAL_FACTOR * free:
        raise DataError(f"{what} writes {raw_bytes / 2**30:.3g} GiB to {ancestor} before compression (which saves "
                        f"~10% on chaotic states), more than {DISK_REFUSAL_FACTOR:g}x the {free / 2**30:.3g} GiB free "
                        f"there; {fix}")
    if warn:
        log.warning("%s writes up to %.3g GiB to %s (before compression, which saves ~10%% on chaotic states); "
                    "only %.3g GiB are free there: it may fail when the disk fills (free some space, or choose another "
                    "--out)", what, raw_bytes / 2**30, ancestor, free / 2**30)
    return True


def load_error_text(error: BaseException) -> str:
    """A ``torch.load`` failure in a few words: the OS's reason, or the error's kind (torch's own text for
    a foreign pickle suggests ``weights_only=False``, which is not the fix for a damaged file)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return type(error).__name__


def disk_full_message(failure: BaseException) -> str | None:
    """What to tell the user when ``failure`` or what caused it (the rollout's writer thread and HDF5
    wrap it) is a full disk or an exceeded quota -- a message without a traceback -- else ``None``."""
    seen: set[int] = set()
    error: BaseException | None = failure
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or \
                "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return f"no space left on the device ({error}); free some space or choose another --out"
        error = error.__cause__ or error.__context__
    return None


def check_output_path(path: str | Path, option: str = "--out", *, folder: bool = False,
                      inputs: dict[str, str | Path] | None = None) -> Path:
    """``DataError`` now, before any work, unless ``path`` can become an output file (``folder``: a folder).

    The path may not exist yet (missing parent folders are created when it is written), but it must
    not be a folder (a file), its nearest existing ancestor (a folder's own self) must be a writable
    folder, and it must not be one of the command's ``inputs`` (``{key naming it: path}``), which it
    would replace. Its name must leave room for the temporary file beside it (``atomic_path``), and it
    must be UTF-8 (NetCDF and HDF5 store names as UTF-8).
    """
    path = Path(path)
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeError:
        raise DataError(f"{option} {str(path)!r}: not a UTF-8 path, which NetCDF and HDF5 need; choose a name in "
                        "UTF-8") from None
    try:
        return _check_output_path(path, option, folder=folder, inputs=inputs)
    except OSError as error:  # a name or path too long for the file system, say
        raise DataError(f"{option} {path}: cannot be used ({error.strerror or error}); choose a shorter path") \
            from None


def _check_output_path(path: Path, option: str, *, folder: bool, inputs: dict[str, str | Path] | None) -> Path:
    if not folder:  # atomic_path writes ".NAME.<host>.<pid>.<random>.part" beside it first, and beside it
        # its siblings' (".NAME.checkpoint", "<stem>.checkpoint.pt", ...: up to 16 more) from any rank's pid
        temporary = len(os.fsencode(f".{path.name}.{_host_tag()}.")) + len("1234567.12345678.part") + 16
        limit = _name_max(path)
        if temporary > limit:
            raise DataError(f"{option} {path}: the name is too long; the temporary files written beside it need "
                            f"up to {temporary} of the file system's {limit} characters: shorten it by "
                            f"{temporary - limit}")
    for key, source in (inputs or {}).items():
        if source and (path.resolve() == Path(source).resolve()
                       or path.exists() and Path(source).exists() and os.path.samefile(path, source)):
            raise DataError(f"{option} {path}: is the input file {key}, which the output would replace; "
                            "give another name")
    if path.exists() and path.is_dir() != folder:
        kind, wanted = ("a file", "a folder") if folder else ("a folder", "a file name")
        raise DataError(f"{option} {path}: is {kind}; give {wanted}")
    ancestor = _existing_ancestor(path if folder else path.parent)  # an existing folder: written into itself
    if not ancestor.is_dir():
        raise DataError(f"{option} {path}: {ancestor} is a file, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DataError(f"{option} {path}: cannot write in {ancestor}; choose a folder you can write to")
    try:  # permission bits do not tell everything (root, read-only or pseudo file systems): try it
        with tempfile.TemporaryFile(dir=ancestor):  # unnamed where the OS allows: nothing is left behind
            pass
    except OSError as error:
        raise DataError(f"{option} {path}: cannot write in {ancestor} ({error.strerror or error}); choose a "
                        "folder you can write to") from None
    return path


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (where a missing folder would be made)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _name_max(path: Path) -> int:
    """The longest file name the file system at ``path`` takes (255 where it does not say)."""
    try:
        return int(os.pathconf(_existing_ancestor(path.parent), "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # (no pathconf on Windows)
        return 255


def check_not_folders(paths: Iterable[Path], out: str | Path, option: str = "--out") -> None:
    """``DataError`` now, before any work, when a file the command writes beside or under its output
    ``out`` (a log, a checkpoint, a report) is a folder: it failed at the end, the work done."""
    for path in paths:
        try:
            is_folder = path.is_dir()
        except OSError as error:  # a name too long for the file system, say
            raise DataError(f"{option} {out}: {path.name} beside it cannot be used ({error.strerror or error}); "
                            f"choose a shorter {option}") from None
        if is_folder:
            raise DataError(f"{option} {out}: {path} is a folder where this command writes a file; move it away or "
                            f"choose another {option}")


def _host_tag() -> str:
    """This host and PID namespace (containers sharing a host name have their own PIDs): where a PID
    in a temporary file's name can be asked whether it still runs."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}-{namespace}"


def _remove_orphans(path: Path, host: str) -> None:
    """Temporary files of ``path`` left by writers on this ``host`` (``_host_tag``) that were killed
    (``kill -9`` gives ``atomic_path`` no chance to clean up): their process is gone, so nothing will
    finish them."""
    for orphan in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}.*.part"):
        pid = orphan.name[len(f".{path.name}.{host}."):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                orphan.unlink()
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise ``KeyboardInterrupt``: raised inside the
    NetCDF library's locked section it left xarray's lock taken, and the process hung at close."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # SIGINT ignored, or handled by the host application: theirs to decide
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def write_netcdf(dataset, path: str | Path, *, compression_level: int = 4, time_chunk: int = 64) -> Path:
    """Write ``dataset`` to ``path`` (NetCDF-4, zlib) through a temporary file and a rename. A Ctrl-C
    during the write stops the command once the library is out of it (the temporary file goes)."""
    path = Path(path)
    with atomic_path(path) as temporary, interrupts_deferred():
        try:
            dataset.to_netcdf(temporary, engine="netcdf4", format="NETCDF4",
                              encoding=netcdf_encoding(dataset, compression_level=compression_level,
                                                       time_chunk=time_chunk))
        except (OSError, RuntimeError) as error:  # the HDF5 library reports a full disk as "HDF error"
            free = shutil.disk_usage(path.parent).free
            raise DataError(f"{path}: writing failed ({error}); {free / 2**20:.0f} MiB are free on its file system "
                            f"and the file needs about {dataset.nbytes / 2**20:.0f} MiB before compression: free "
                            "some space or choose another --out") from error
    return path


def open_trajectories(path: str | Path, *, load: bool = True):
    """Open a hybridnde NetCDF file, checking the schema; ``DataError`` names what is missing."""
    import xarray as xr

    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.nc"))[:3]
        hint = f" (it holds {', '.join(inside)})" if inside else ""
        raise DataError(f"{path}: is a folder, not a NetCDF file; pass a file in it{hint}")
    if not path.is_file():
        raise DataError(f"{path}: no such file; create it with `hybridnde simulate` or `hybridnde rollout`")
    try:
        dataset = xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable NetCDF file ({error})") from None
    if "u" not in dataset or dataset["u"].dims[:2] != ("member", "time"):
        dataset.close()
        raise DataError(f"{path}: expected a variable u(member, time, x|component), the hybridnde schema")
    try:
        _check_time_coordinate(dataset, path)
        if "member" in dataset.coords and len(np.unique(dataset["member"].values)) < dataset.sizes["member"]:
            raise DataError(f"{path}: member labels repeat; each member needs its own label (members pair files "
                            "by label)")
    except DataError:
        dataset.close()
        raise
    if load:
        dataset.load()
        dataset.close()
    return dataset


def _check_time_coordinate(dataset, path: Path) -> None:
    """The samples' times: a ``time`` coordinate variable, finite and strictly increasing. Without one,
    the samples would be paired and spaced by position (0, 1, 2, ...), whatever their real times."""
    if "time" not in dataset.variables:
        raise DataError(f"{path}: u has a time dimension but the file has no time coordinate variable (the "
                        "samples' times); write the times as a coordinate time(time), as `hybridnde simulate` "
                        "and `hybridnde rollout` do")
    times = np.asarray(dataset["time"].values, dtype=np.float64)
    if not np.isfinite(times).all():
        raise DataError(f"{path}: the time coordinate holds {int((~np.isfinite(times)).sum())} non-finite "
                        "value(s); every sample needs its time: regenerate the file")
    steps = np.diff(times)
    if (steps <= 0).any():
        at = int(np.argmax(steps <= 0))
        raise DataError(f"{path}: time must increase from sample to sample, but time[{at}] = {times[at]:.6g} is "
                        f"followed by {times[at + 1]:.6g}; sort the file by time (xarray: dataset.sortby('time')) "
                        "without repeated times, or regenerate it")
