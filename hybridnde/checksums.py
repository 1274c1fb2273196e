"""Checksums of the files outputs are made from: of their bytes (``file_checksum``), or of the data they
hold (``data_checksum``: what ``hybridnde run``, training checkpoints and rollouts record, so a truth
simulated again with the same numbers keeps what was made from it), and the checks of a recorded
checksum against a file now (``records_data``).
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .errors import DataError, reading_data_of
from .interrupts import interrupts_deferred

__all__ = ["file_checksum", "present_file_checksum", "data_checksum", "records_data", "recorded_data_checksum", "DATA_ATTRIBUTES",
           "DECODING_ATTRIBUTES"]


def file_checksum(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: the global attributes that say what a file's numbers are; the others say when, where, how fast and
#: by which version it was written (``history``, ``wall_seconds``, ``platform``, ``source``, ...)
DATA_ATTRIBUTES = ("config_checksum", "closure_checksum")
#: a variable's attributes that change the numbers its stored values decode to (CF packing, fill
#: values, time units)
DECODING_ATTRIBUTES = ("scale_factor", "add_offset", "_FillValue", "missing_value", "units", "calendar")


def data_checksum(path: str | Path, *, block_bytes: int = 1 << 23) -> str:
    """SHA-256 of what a NetCDF file holds: each variable's name, dimensions, type (byte order aside),
    shape, decoding attributes (``DECODING_ATTRIBUTES``) and stored values, read in blocks of about
    ``block_bytes``, and the global ``DATA_ATTRIBUTES``. Not the bytes: a truth simulated again with the
    same numbers has a new ``history``, and maybe other compression, but the same data checksum, so
    what was made from it stays valid."""
    import netCDF4

    digest = hashlib.sha256()
    try:
        dataset = netCDF4.Dataset(path)
    except OSError as error:
        raise DataError(f"{path}: not a readable NetCDF file ({error})") from None
    with dataset:
        for name in DATA_ATTRIBUTES:
            if name in dataset.ncattrs():
                digest.update(f"{name}={dataset.getncattr(name)}\n".encode())
        for name in sorted(dataset.variables):
            variable = dataset.variables[name]
            variable.set_auto_maskandscale(False)  # the stored values; their decoding is in the attributes
            variable.set_var_chunk_cache(size=1 << 22)  # read once, in order: not netCDF's 64 MiB a variable
            text = variable.dtype is str or np.dtype(variable.dtype).kind in "OUS"
            kind = "str" if text else np.dtype(variable.dtype).newbyteorder("<").str
            decoding = {key: np.asarray(variable.getncattr(key)).tolist() for key in DECODING_ATTRIBUTES
                        if key in variable.ncattrs()}
            digest.update(f"{name}{variable.dimensions}{kind}{variable.shape}{decoding}\n".encode())
            for values in _blocks(variable, block_bytes, path):
                values = np.asarray(values)
                if text:  # strings (component names): their text, each ended
                    digest.update("".join(f"{item}\x1f" for item in values.ravel()).encode())
                else:  # little-endian bytes whatever the file stores (a copy only for big-endian data)
                    little = values.dtype.newbyteorder("<")
                    digest.update(np.ascontiguousarray(values if values.dtype == little else values.astype(little)))
    return digest.hexdigest()


def _blocks(variable, block_bytes: int, path: str | Path):
    """A netCDF4 variable's values in C order, in blocks of about ``block_bytes``: whole rows of its
    first dimension, or parts of one row along the second where a row is larger. (A Ctrl-C is held
    while a block is read: the library would swallow it, ``interrupts``.)"""
    def read(key):
        with interrupts_deferred(), reading_data_of(path):
            return variable[key]

    if variable.ndim == 0:
        yield read(...)
        return
    itemsize = getattr(variable.dtype, "itemsize", 8)  # vlen strings: ~8
    row_bytes = itemsize * math.prod(variable.shape[1:])
    if row_bytes <= block_bytes or variable.ndim == 1:
        rows = max(1, block_bytes // max(1, row_bytes))
        for start in range(0, variable.shape[0], rows):
            yield read(slice(start, start + rows))
        return
    columns = max(1, block_bytes // max(1, itemsize * math.prod(variable.shape[2:])))
    for row in range(variable.shape[0]):
        for start in range(0, variable.shape[1], columns):
            yield read((row, slice(start, start + columns)))


def present_file_checksum(path: str | Path) -> str:
    """``file_checksum`` of ``path``, or ``""`` where there is no file."""
    return file_checksum(path) if Path(path).is_file() else ""


def records_data(recorded: str | None, path: str | Path, data_sum: str, *,
                 bytes_sum: Callable[[], str] | None = None) -> bool:
    """Whether ``recorded`` (what an output or checkpoint keeps of the file ``path``) is of the data there
    now: their ``data_checksum`` ``data_sum``, or -- as earlier versions recorded -- the file's bytes,
    hashed only then (``bytes_sum``: where the caller keeps that checksum already)."""
    if not recorded:
        return False
    return recorded == data_sum or recorded == (bytes_sum or (lambda: present_file_checksum(path)))()


def recorded_data_checksum(summary: Mapping[str, Any]) -> str | None:
    """The checksum of its training data a closure's metadata ``data`` (``TrainingData.summary``) keeps:
    of the data, or of the file's bytes in closures trained before data checksums."""
    return summary.get("data_sha256") or summary.get("sha256") or None
