"""Trajectories <-> CF-style NetCDF through xarray, written atomically (``output_paths``).

Schema (docs/netcdf.md): ``u(member, time, x)`` for fields or ``u(member, time, component)`` for
ODE states, ``status(member)`` with CF flags, ``blowup_time(member)``; global attributes carry the
package version, the solver, the closure checksum and the full case as TOML text.
"""
from __future__ import annotations

import contextvars
import functools
import datetime
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DataError, ResumeRefused, WriteFailed, reading_data_of
from .interrupts import interrupts_deferred
from . import memory
from .output_paths import (atomic_path, check_not_folders, check_output_path, disk_full_message,
                           warn_if_disk_short)

__all__ = [
    "DataError", "ResumeRefused", "WriteFailed", "STATUS_FLAGS", "VARIABLE_ATTRS", "trajectory_dataset", "write_netcdf", "package_version",
    "open_trajectories", "atomic_path", "netcdf_encoding", "check_output_path", "check_not_folders",
    "platform_description", "utc_now", "warn_if_disk_short", "disk_full_message", "load_error_text", "COMMAND_LINE",
    "history_line", "write_failure",
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


#: the command whose work runs, as ``hybridnde.cli.main`` sets it (``hybridnde simulate case.toml ...``):
#: ``history`` records it, as CF (2.6.2) recommends; ``None`` when the package is called from Python
COMMAND_LINE: contextvars.ContextVar[str | None] = contextvars.ContextVar("hybridnde_command_line", default=None)


def utc_now() -> str:
    """The time now, UTC, ISO 8601 to the second (``history`` attributes)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def history_line(what: str) -> str:
    """A line of a file's ``history``: ``"<UTC time> <what> by hybridnde <version>: <command line>"``
    (the command where ``COMMAND_LINE`` has one)."""
    command = COMMAND_LINE.get()
    return f"{utc_now()} {what} by hybridnde {package_version()}" + (f": {command}" if command else "")


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
    dataset.attrs.update({
        "Conventions": "CF-1.10",
        "title": title,
        "source": f"hybridnde {package_version()}; solver: {solver}; closure checksum: {closure_checksum}",
        "history": history_line("created"),
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

def load_error_text(error: BaseException) -> str:
    """A ``torch.load`` failure in a few words: the OS's reason, or the error's kind (torch's own text for
    a foreign pickle suggests ``weights_only=False``, which is not the fix for a damaged file)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return type(error).__name__

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
            raise write_failure(path, error, dataset.nbytes) from error
    return path


def write_failure(path: Path, error: BaseException, nbytes: int) -> WriteFailed:
    """The ``WriteFailed`` of an output ``path`` of ``nbytes`` (before compression) whose write raised
    ``error``: the free space of its file system and what to do."""
    free = shutil.disk_usage(path.parent).free
    return WriteFailed(f"{path}: writing failed ({error}); {free / 2**20:.0f} MiB are free on its file system and "
                       f"the file needs about {nbytes / 2**20:.0f} MiB before compression: free some space or choose "
                       "another --out")


@interrupts_deferred()  # (a Ctrl-C raised inside the library's read was swallowed: interrupts.py)
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
        if dataset.sizes["member"] == 0:
            raise DataError(f"{path}: holds no members; give a file with at least one")
        if "incomplete" in dataset.attrs:  # a stopped run's .NAME.partial: unwritten saves would read as blow-ups
            raise DataError(f"{path}: an unfinished file ({dataset.attrs['incomplete']})",
                            "finish it, then use the file it becomes")
        check_time_coordinate(dataset, path)
        if "member" in dataset.coords and len(np.unique(dataset["member"].values)) < dataset.sizes["member"]:
            raise DataError(f"{path}: member labels repeat; each member needs its own label (members pair files "
                            "by label)")
    except DataError:
        dataset.close()
        raise
    if load:
        needed, available = dataset.nbytes, memory.available_memory()  # (from the shapes: nothing is read yet)
        if available is not None and needed > available:
            dataset.close()
            raise DataError(f"{path}: its data, {needed / 2**30:.3g} GiB, do not fit in the {available / 2**30:.3g} GiB "
                            "of memory available", "use a machine with more memory, or a file with fewer members or saves")
        try:
            with reading_data_of(path):
                dataset.load()
        finally:
            dataset.close()
    return dataset


def check_time_coordinate(dataset, path: Path) -> None:
    """The samples' times: a ``time`` coordinate variable, finite and strictly increasing. Without one,
    the samples would be paired and spaced by position (0, 1, 2, ...), whatever their real times."""
    if "time" not in dataset.variables:
        raise DataError(f"{path}: u has a time dimension but the file has no time coordinate variable (the "
                        "samples' times); write the times as a coordinate time(time), as `hybridnde simulate` "
                        "and `hybridnde rollout` do")
    if dataset["time"].dtype.kind in "mM":  # CF units "days since ...", "seconds": nanoseconds as numbers
        raise DataError(f"{path}: time is decoded as {'dates' if dataset['time'].dtype.kind == 'M' else 'durations'} "
                        f"(units {dataset['time'].encoding.get('units', '?')!r}), but these systems' time is "
                        "nondimensional: write the times as plain numbers with units \"1\", as hybridnde's own files do")
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
