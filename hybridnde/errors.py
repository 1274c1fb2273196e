"""The errors that name a bad input file or a checkpoint that does not fit -- the CLI turns both, and
``ConfigError``, into exit 2 with the message and no traceback -- and an output that could not be
written (exit 1, a run-time failure, also without a traceback)."""
from __future__ import annotations

import contextlib
from pathlib import Path

from .config.fields import ConfigError

__all__ = ["DataError", "ResumeRefused", "WriteFailed", "reading_data_of"]


class DataError(ValueError):
    """An input file (data, initial conditions, checkpoint) that cannot be used; names the file.

    ``problem`` is what is wrong, ``fix`` what the user of the command can do (the message is both): a
    caller that does the fix itself, as ``hybridnde run`` starting a stage afresh, says ``problem`` alone."""

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem


class ResumeRefused(DataError, ConfigError):
    """A checkpoint that the run asked to resume does not fit it (another case, input or run); names
    what differs. ``hybridnde run`` starts such a stage afresh, a single command stops (exit 2)."""


class WriteFailed(RuntimeError):
    """An output file the library could not write (a full disk, a quota, a file system error); names the
    file, the free space and what to do. Not bad input: the same command can succeed elsewhere."""


@contextlib.contextmanager
def reading_data_of(path: str | Path):
    """Turn a failed read of a file's data into ``DataError`` naming ``path``: a file whose header opens
    but whose data do not (a damaged chunk: netCDF4 raises ``RuntimeError: NetCDF: HDF error``) is bad
    input, not a crash."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        raise DataError(f"{path}: its data cannot be read ({error})", "make or copy the file again") from None
