"""HDF5 chunks of ``u(member, time, *state)`` encoded by the rank that computed them.

A rollout's file stores ``u`` in chunks of one member by ``time_chunk`` saves, filtered by HDF5's
shuffle then deflate (zlib) when ``output.compression_level > 0``. Compressing is the costliest part
of writing (zlib manages ~60 MB/s on chaotic float64 fields, which hardly shrink), so if rank 0
compressed every rank's saves it would serialise the ensemble: the 2-rank weak-scaling efficiency of
a cheap solver fell to ~75%. Instead each rank encodes its own chunks exactly as HDF5's filters
would, and rank 0 stores the bytes as they are (``H5Dwrite_chunk`` through h5py's
``write_direct_chunk``). The bytes are the filters' output, so any HDF5/netCDF reader decodes them.

The filters, as HDF5 implements them (H5Zshuffle.c, H5Zdeflate.c):

* shuffle: for a chunk of ``n`` elements of ``s`` bytes, byte ``j`` of element ``i`` goes to
  ``j * n + i`` (all first bytes, then all second bytes, ...), which groups the slowly varying
  exponent bytes for zlib;
* deflate: ``zlib.compress`` of that (a zlib stream, as ``compress2``), at the dataset's level.

A partial chunk at the end of the time axis is stored whole, padded with the fill value (NaN), as
HDF5 stores edge chunks.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["ChunkLayout", "EncodedBlock", "encode_block", "decode_chunk", "HDF5_SHUFFLE", "HDF5_DEFLATE"]

#: HDF5 filter identifiers (H5Zpublic.h)
HDF5_DEFLATE, HDF5_SHUFFLE = 1, 2


@dataclass(frozen=True)
class ChunkLayout:
    """How ``u`` is chunked and filtered: the file's writer and every rank's encoder share one.

    ``n_times``: saves in the file; ``time_chunk``: saves per chunk (already clipped to
    ``[1, n_times]``); ``state_size``: values per state; ``dtype``: the stored dtype (little-endian);
    ``compression_level``: zlib level, 0 = no filters at all.
    """

    n_times: int
    time_chunk: int
    state_size: int
    dtype: np.dtype
    compression_level: int

    @classmethod
    def for_output(cls, *, n_times: int, time_chunk: int, state_size: int, dtype, compression_level: int) -> "ChunkLayout":
        if not 0 <= compression_level <= 9:
            raise ValueError(f"compression_level {compression_level}: zlib levels are 0-9")
        return cls(n_times=int(n_times), time_chunk=max(1, min(int(time_chunk), int(n_times))),
                   state_size=int(state_size), dtype=np.dtype(dtype).newbyteorder("<"),
                   compression_level=int(compression_level))

    @property
    def chunk_shape(self) -> tuple[int, int, int]:
        return (1, self.time_chunk, self.state_size)

    @property
    def chunk_bytes(self) -> int:
        """Bytes of one chunk before filtering."""
        return self.time_chunk * self.state_size * self.dtype.itemsize

    @property
    def filters(self) -> tuple[int, ...]:
        """HDF5 filter pipeline of ``u``, in order."""
        return (HDF5_SHUFFLE, HDF5_DEFLATE) if self.compression_level > 0 else ()


@dataclass(frozen=True)
class EncodedBlock:
    """The stored bytes of ``u[member_start:member_start + len(chunks), time_start:...]``: one chunk per
    member, each starting at ``(member_start + i, time_start, 0)``."""

    member_start: int
    time_start: int
    chunks: tuple[bytes, ...]

    def offsets(self):
        for i, payload in enumerate(self.chunks):
            yield (self.member_start + i, self.time_start, 0), payload


def encode_block(values: np.ndarray, member_start: int, time_start: int, layout: ChunkLayout) -> EncodedBlock:
    """Encode ``values: (members, times, state_size)`` (``times <= time_chunk``, ``time_start`` on a chunk
    boundary) into the bytes HDF5 stores for those chunks."""
    members, times = values.shape[:2]
    if values.ndim != 3 or values.shape[2] != layout.state_size:
        raise ValueError(f"values of shape {values.shape}: expected (members, times, {layout.state_size})")
    if time_start % layout.time_chunk or times > layout.time_chunk or time_start + times > layout.n_times:
        raise ValueError(f"saves [{time_start}, {time_start + times}) are not within one chunk of "
                         f"{layout.time_chunk} saves of the file's {layout.n_times}")
    if times == layout.time_chunk:
        padded = np.ascontiguousarray(values, dtype=layout.dtype)
    else:  # an edge chunk is stored at full size; HDF5 would pad with the fill value
        padded = np.full((members, layout.time_chunk, layout.state_size), np.nan, dtype=layout.dtype)
        padded[:, :times] = values
    if layout.compression_level == 0:
        chunks = tuple(row.tobytes() for row in padded)
    else:
        itemsize = layout.dtype.itemsize
        shuffled = np.ascontiguousarray(padded.view(np.uint8).reshape(members, -1, itemsize).transpose(0, 2, 1))
        chunks = tuple(zlib.compress(row, layout.compression_level) for row in shuffled)
    return EncodedBlock(member_start=int(member_start), time_start=int(time_start), chunks=chunks)


def decode_chunk(payload: bytes, layout: ChunkLayout) -> np.ndarray:
    """The inverse of one chunk of ``encode_block``: ``(time_chunk, state_size)`` values."""
    itemsize = layout.dtype.itemsize
    if layout.compression_level:
        shuffled = np.frombuffer(zlib.decompress(payload), dtype=np.uint8)
        raw = np.ascontiguousarray(shuffled.reshape(itemsize, -1).T)
    else:
        raw = np.frombuffer(payload, dtype=np.uint8)
    return raw.view(layout.dtype).reshape(layout.time_chunk, layout.state_size)
