"""A partial file that a kill left damaged, told from a whole one and rebuilt from its chunk journal.

A process stopped while HDF5 writes the partial file's metadata (SIGKILL; ``MPI_Abort`` from another
rank) can leave ``u``'s chunk index half-updated -- a B-tree split whose new node is not yet on disk
-- or newer than the superblock's end of allocation, so that the first read or write past it fails
("addr overflow") and a new chunk would be allocated over an old one. The chunks a checkpoint
covers are intact either way: HDF5 writes a chunk where it allocated it and moves it only when it is
written again, and a resume writes again only what came after its checkpoint.

So the writer notes where each chunk it stores lands (``ChunkLocator``: read back where HDF5
allocates) and, at each checkpoint, appends those chunks to ``.NAME.chunks`` (``ChunkJournal``):
rows of member, first save, byte offset, size and CRC-32 of the stored bytes, 5 little-endian int64
each. The checkpoint records how many rows it covers and their CRC (``RECORD_KEY``), so a checkpoint
costs O(new chunks) however long the run. Like HDF5's flush, the journal is not synced to the disk: it
survives the process, not the machine. A resume checks the index against the journal (``partial_damage``) and, if the file
is damaged, ``rebuild_partial`` makes a new one with the same header and copies the journal's chunks
across, each checked against its CRC.
"""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .io import ResumeRefused
from .output_paths import atomic_path

__all__ = ["RECORD_KEY", "ChunkLocator", "ChunkJournal", "journal_path", "check_chunk_index", "inspect_partial",
           "rebuild_partial", "repair_for_resume"]

log = logging.getLogger(__name__)

#: where a checkpoint keeps what it knows of its partial file (checkpoints of earlier versions: nothing)
RECORD_KEY = "partial_file"

#: how a partial file is most likely damaged, per kind of run (said with the damage)
DAMAGE_CAUSE = {"rollout": "e.g. Ctrl-C under mpiexec, whose ranks abort one another",
                "simulation": "e.g. killed (SIGKILL) while HDF5 wrote to it"}

_ROW = np.dtype("<i8")  # a journal row: 5 of these


def journal_path(path: str | Path) -> Path:
    """The chunk journal of the partial file of output ``path``: ``.NAME.chunks`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.chunks")


class ChunkLocator:
    """Where HDF5 put the chunk it was just handed (``after`` each direct chunk write; ``file_id``: the
    h5py ``FileID``), found by reading the partial file back where HDF5 allocates: at the end of the
    file, or (under 2 KiB) in its block for small raw data, just past the previous chunk; when it
    starts a new block, the rest of the old one becomes free space, which later small chunks (a
    blown-up member's NaNs: a few dozen bytes) fill from its start; a chunk a resume writes again
    (``in_place``: where the interrupted run had it) stays where it was if its size is the same.
    Space that was free after the previous chunk is searched first; a chunk with the bytes of
    another can still be taken for it (harmless: a resume accepts a journal row whose bytes are
    intact where the index has them); ``None``: not found (the index is asked)."""

    SEARCH_BYTES = 1 << 20
    SMALL_BLOCK = 2048  # HDF5's default small-data block size
    LEFTOVERS = 1024  # the most recent kept

    def __init__(self, partial: Path, file_id, in_place: Mapping[tuple[int, int], int] | None = None):
        self._fd, self._file_id = os.open(partial, os.O_RDONLY), file_id
        self._in_place = dict(in_place or {})  # (member, save) -> offset of chunks a resume writes again
        self._end: int | None = None  # of the previous chunk found in order
        self._file_size = file_id.get_filesize()
        self._leftovers: list[int] = []  # where a small-data block was left: free space from there

    def after(self, stored: bytes, key: tuple[int, int]) -> int | None:
        size, file_size = len(stored), self._file_id.get_filesize()  # (the end of allocation, or past it)
        grown, self._file_size = self._file_size, file_size
        again = self._in_place.pop(key, None)  # (of the same size, HDF5 writes it where it was)
        if again is not None and os.pread(self._fd, size, again) == stored:
            return again
        if self._end is not None and os.pread(self._fd, size, self._end) == stored:
            return self._in_order(self._end, size)
        # a new block, or a chunk at the end (a flush gives back the block's rest: the end may be lower)
        low = max(file_size - size - self.SEARCH_BYTES, grown if self._end is None else min(grown, self._end))
        found = os.pread(self._fd, max(0, file_size - low), low).find(stored)
        if found >= 0:
            return self._in_order(low + found, size)
        for index in range(len(self._leftovers) - 1, -1, -1):  # (the newest first)
            start = self._leftovers[index]
            found = os.pread(self._fd, self.SMALL_BLOCK, start).find(stored)
            if found >= 0:
                self._leftovers[index] = start + found + size
                return start + found
        return None

    def _in_order(self, offset: int, size: int) -> int:
        if self._end is not None and offset != self._end:
            self._leftovers = self._leftovers[-self.LEFTOVERS + 1:] + [self._end]
        self._end = offset + size
        return offset

    def close(self) -> None:
        os.close(self._fd)


class ChunkJournal:
    """The chunks of ``u`` stored so far and where, in ``journal_path(path)``; ``note`` each one,
    ``checkpoint`` appends those noted since the last and returns what the checkpoint records."""

    def __init__(self, path: Path, rows: int = 0, crc: int = 0):
        self.path, self.rows, self.crc = path, rows, crc
        self._pending: list[tuple[int, int, int | None, int, int]] = []
        with open(path, "r+b" if rows else "wb") as journal:
            journal.truncate(rows * 5 * _ROW.itemsize)  # (rows past the checkpoint: a run after it wrote them)

    @classmethod
    def resumed(cls, path: Path, record: Mapping[str, Any] | None) -> "ChunkJournal | None":
        """The journal as the checkpoint ``record`` left it, or ``None`` if it is missing or not that."""
        if record is None or "journal_rows" not in record:
            return None
        rows, crc = int(record["journal_rows"]), int(record["journal_crc"])
        try:
            with open(path, "rb") as journal:
                head = journal.read(rows * 5 * _ROW.itemsize)
        except OSError:
            return None
        if len(head) != rows * 5 * _ROW.itemsize or zlib.crc32(head) != crc:
            return None
        return cls(path, rows, crc)

    def amend(self, table: np.ndarray) -> "ChunkJournal":
        """Append ``table``'s rows: where chunks already in the journal are now (a chunk's last row counts).
        Appended, not rewritten: the checkpoint's record still vouches for the rows before them until it
        is rewritten, so a kill in between leaves a journal the resume can use."""
        rows = np.ascontiguousarray(table, dtype=_ROW).tobytes()
        with open(self.path, "ab") as journal:
            journal.write(rows)
        self.rows, self.crc = self.rows + len(table), zlib.crc32(rows, self.crc)
        return self

    def record(self) -> dict[str, int]:
        """What a checkpoint records of the journal: its rows so far and their CRC-32."""
        return {"journal_rows": self.rows, "journal_crc": self.crc}

    def table(self) -> np.ndarray:
        """``(rows, 5)`` int64: member, first save, byte offset, size, CRC-32; a chunk stored twice
        appears once, where it was last stored."""
        with open(self.path, "rb") as journal:
            table = np.frombuffer(journal.read(self.rows * 5 * _ROW.itemsize), dtype=_ROW).reshape(-1, 5)
        if not len(table):
            return table.astype(np.int64)
        _, last = np.unique(table[::-1, :2], axis=0, return_index=True)  # (first in reverse: last stored)
        return table[np.sort(len(table) - 1 - last)].astype(np.int64)

    def note(self, member: int, save: int, offset: int | None, stored: bytes) -> None:
        self._pending.append((member, save, offset, len(stored), zlib.crc32(stored)))

    def checkpoint(self, u, *, status: np.ndarray, blowup_time: np.ndarray, layout: list) -> dict[str, Any]:
        """Append the chunks noted since the last checkpoint (``u``: the h5py dataset, just flushed,
        asked where a chunk is only when the locator did not find it) and return the checkpoint's record."""
        rows = np.array([(m, s, offset if offset is not None else _stored_offset(u, m, s), size, crc)
                         for m, s, offset, size, crc in self._pending], dtype=_ROW).reshape(-1, 5)
        with open(self.path, "ab") as journal:
            journal.write(rows.tobytes())
        self.rows, self.crc, self._pending = self.rows + len(rows), zlib.crc32(rows.tobytes(), self.crc), []
        return self.full_record(status=status, blowup_time=blowup_time, layout=layout)

    def full_record(self, *, status: np.ndarray, blowup_time: np.ndarray, layout: list) -> dict[str, Any]:
        """A checkpoint's whole record: the journal's, ``u``'s layout and the status a rebuild puts back."""
        return {**self.record(), "layout": layout, "status": torch.from_numpy(np.array(status, dtype=np.int8)),
                "blowup_time": torch.from_numpy(np.array(blowup_time, dtype=np.float64))}


def _stored_offset(u, member: int, save: int) -> int:
    info = u.id.get_chunk_info_by_coord((member, save, 0))  # (walks the index: only for writes not seen)
    if info.byte_offset is None:
        raise RuntimeError(f"{u.file.filename}: u's chunk at member {member}, save {save} is missing from its index")
    return int(info.byte_offset)


def _each_chunk(dataset_id, visit: Callable[[Any], None]) -> None:
    if hasattr(dataset_id, "chunk_iter"):  # one pass over the index (get_chunk_info(i) walks it each call)
        dataset_id.chunk_iter(visit)
    else:
        for index in range(dataset_id.get_num_chunks()):
            visit(dataset_id.get_chunk_info(index))


def check_chunk_index(dataset_id, file_size: int) -> None:
    """Raise unless every stored chunk of ``dataset_id`` (an h5py ``DatasetID``) lies inside the file:
    a partial file interrupted while HDF5 wrote its metadata can index chunks past its end, and the
    first write of a resume then fails ("addr overflow") -- again on every later attempt."""
    outside, furthest = [], []

    def visit(chunk) -> None:
        if chunk.byte_offset is None or chunk.byte_offset + chunk.size > file_size:
            outside.append(chunk)
        elif not furthest or chunk.byte_offset + chunk.size > furthest[0].byte_offset + furthest[0].size:
            furthest[:] = [chunk]

    _each_chunk(dataset_id, visit)
    if outside:
        chunk = outside[0]
        raise ValueError(f"{len(outside)} chunk(s) indexed past the file's {file_size} bytes, e.g. "
                         f"{chunk.chunk_offset} at {chunk.byte_offset}+{chunk.size}")
    if furthest:  # inside the file, but HDF5 may have recorded a shorter end of allocation: read it
        dataset_id.read_direct_chunk(furthest[0].chunk_offset)


def _intact(fd: int, offset: int, size: int, crc: int) -> bytes | None:
    """The ``size`` bytes at ``offset`` if their CRC-32 is ``crc``, else ``None``."""
    stored = os.pread(fd, size, offset)
    return stored if len(stored) == size and zlib.crc32(stored) == crc else None


def _readable_index(u) -> dict[tuple[int, int], tuple[int, int]]:
    """(member, first save) -> (byte offset, size) of ``u``'s chunks, as far as its index can be read."""
    indexed: dict[tuple[int, int], tuple[int, int]] = {}
    try:
        _each_chunk(u.id, lambda chunk: indexed.__setitem__(chunk.chunk_offset[:2], (chunk.byte_offset, chunk.size)))
    except Exception:  # (a broken B-tree: what was read before it)
        pass
    return indexed


def inspect_partial(partial: Path, table: np.ndarray | None, *, what: str) -> tuple[str | None, dict]:
    """What is wrong with ``partial``, the partial file of an interrupted ``what`` (``None``: nothing), and
    its index as far as it can be read. Every chunked variable's index must lie inside the file and its
    end of allocation (``status`` and ``blowup_time`` too: HDF5 would allocate ``u``'s next chunks over
    theirs and their next write overwrite them), and each chunk of ``table`` (``ChunkJournal.table``) be
    where the index says, or at least intact there (the journal may name an identical copy). Read-only:
    HDF5 closing a damaged file opened for writing cuts it to its stale end of allocation."""
    import h5py

    try:
        file = h5py.File(partial, "r")
    except OSError as error:
        return f"cannot be reopened ({error})", {}
    with file:
        indexed = _readable_index(file["u"])
        try:
            for name, variable in file.items():
                if variable.chunks:
                    check_chunk_index(variable.id, partial.stat().st_size)
                if name != "u":
                    variable[...]
        except Exception as error:  # (h5py raises several kinds for a broken B-tree)
            return f"is damaged ({error}): it was stopped while writing ({DAMAGE_CAUSE[what]})", indexed
    misplaced = [row for row in (table.tolist() if table is not None else ())
                 if indexed.get((row[0], row[1])) != (row[2], row[3])]
    if misplaced:
        with open(partial, "rb") as source:
            lost = [(m, s) for m, s, _, size, crc in misplaced
                    if indexed.get((m, s), (0, -1))[1] != size or _intact(source.fileno(), indexed[m, s][0], size, crc) is None]
        if lost:
            return (f"is damaged ({len(lost)} chunk(s) of its checkpoint are not in its index as its journal recorded "
                    f"them, e.g. member {lost[0][0]}, save {lost[0][1]})"), indexed
    return None, indexed


def rebuild_partial(partial: Path, table: np.ndarray, indexed: Mapping[tuple[int, int], tuple[int, int]],
                    record: Mapping[str, Any], create: Callable[[Path], None], *, what: str) -> np.ndarray:
    """Replace the damaged ``partial`` by a new file (``create(path)`` makes its header) holding the
    chunks of ``table``, copied byte for byte from where the journal or else the readable ``indexed``
    (``inspect_partial``) has them intact, and the ``record``'s status. Returns the new file's journal
    table; ``ResumeRefused`` (``partial`` left as it was) if a chunk is not intact in either place."""
    with atomic_path(partial) as temporary:
        create(temporary)
        import h5py

        with open(partial, "rb") as source, h5py.File(temporary, "r+") as target:
            u = target["u"]
            for member, save, offset, size, crc in table.tolist():
                for where in (offset, indexed.get((member, save), (offset, 0))[0]):
                    stored = _intact(source.fileno(), where, size, crc)
                    if stored is not None:
                        u.id.write_direct_chunk((member, save, 0), stored)
                        break
                else:
                    raise ResumeRefused(f"{partial}: the partial file of the interrupted {what} is damaged beyond its "
                                        f"chunk journal (u's chunk at member {member}, save {save} is not intact)",
                                        "rerun without --resume")
            target["status"][:] = record["status"].numpy()
            target["blowup_time"][:] = record["blowup_time"].numpy()
            target.flush()
            rebuilt = _readable_index(u)
    return np.array([(m, s, *rebuilt[m, s], crc) for m, s, _, _, crc in table.tolist()], dtype=np.int64).reshape(-1, 5)


def repair_for_resume(partial: Path, journal_file: Path, record: Mapping[str, Any] | None,
                      create: Callable[[Path], None], *, what: str, layout: list, check_layout: Callable[[list], None]
                      ) -> tuple[ChunkJournal, dict[tuple[int, int], int], dict[str, Any] | None]:
    """Make the partial file of an interrupted ``what`` fit to go on: check it against its journal
    (``journal_file``, if it is the one ``record`` vouches for) and rebuild it if it is damaged (``record``: the checkpoint's; ``create``: makes a new
    file's header; ``check_layout(record["layout"])`` raises if the case now wants another ``u``, which
    is ``layout``). Returns the journal to go on with, where ``u``'s chunks are (a resume writes those
    past the checkpoint again: ``ChunkLocator``'s ``in_place``), and, when rows were added to the
    journal, the record its checkpoint must now hold (else ``None``)."""
    journal = ChunkJournal.resumed(journal_file, record)
    table = journal.table() if journal else None
    damage, indexed = inspect_partial(partial, table, what=what)
    if damage:
        if table is None:
            raise ResumeRefused(f"{partial}: the partial file of the interrupted {what} {damage}" + (
                f"; its chunk journal {journal_file} is missing or not its checkpoint's" if record else ""),
                "rerun without --resume")
        check_layout(record["layout"])
        table = rebuild_partial(partial, table, indexed, record, create, what=what)
        log.warning("%s: the partial file of the interrupted %s %s; rebuilt from the %d chunk(s) its journal recorded",
                    partial, what, damage, len(table))
        return journal.amend(table), {}, {**record, **journal.record()}  # (the new file: the journal's chunks)
    in_place = {key: offset for key, (offset, _) in indexed.items()}
    if table is None:  # a whole file without a usable journal (lost, or a checkpoint of an earlier version):
        # a new one from its index, each chunk read once for its CRC
        journal = ChunkJournal(journal_file)
        with open(partial, "rb") as source:
            journal.amend(np.array([(m, s, offset, size, zlib.crc32(os.pread(source.fileno(), size, offset)))
                                    for (m, s), (offset, size) in sorted(indexed.items())],
                                   dtype=np.int64).reshape(-1, 5))
        import h5py

        with h5py.File(partial, "r") as file:
            status, blowup_time = file["status"][...], file["blowup_time"][...]
        log.info("%s: a new chunk journal, from its index (%d chunks)", partial, journal.rows)
        return journal, in_place, journal.full_record(status=status, blowup_time=blowup_time, layout=layout)
    if all(indexed[m, s] == (offset, size) for m, s, offset, size, _ in table.tolist()):
        return journal, in_place, None
    # rows that named an identical copy, or a rebuild's chunks before its record was rewritten (a kill):
    # inspect_partial found each intact where the index has it
    moved = np.array([indexed[m, s] != (offset, size) for m, s, offset, size, _ in table.tolist()])
    table[:, 2:4] = [indexed[m, s] for m, s in table[:, :2].tolist()]
    return journal.amend(table[moved]), in_place, {**record, **journal.record()}
