"""Streaming a rollout (or a simulation) into one CF NetCDF file, chunk by chunk, with restart checkpoints.

The file has the schema of ``io.trajectory_dataset`` (docs/netcdf.md): its variable and global
attributes are taken from a zero-length dataset built by that function, so both writers agree.
``u(member, time, *state)`` is created at full size (the time axis is known in advance) by
netCDF4, with chunks of one member by ``output.time_chunk`` times and HDF5's shuffle + zlib filters.
While streaming, the file is open through h5py, and chunks arrive already encoded by the rank that
computed them (``chunk_codec``): rank 0 stores their bytes as they are (``write_direct_chunk``), so
compression is spread over the ranks instead of serialising them on rank 0.

While running, the data go to ``.NAME.partial`` beside the output; a checkpoint is that file
flushed to disk plus ``.NAME.checkpoint`` (written atomically) with what a restart needs and a
journal of the chunks flushed, ``.NAME.chunks`` (``partial_repair``: a resume rebuilds a partial
file a kill left damaged from it). Only a complete file is renamed to ``NAME``.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .chunk_codec import ChunkLayout, EncodedBlock, encode_block
from .interrupts import interrupts_deferred
from .io import DataError, ResumeRefused, atomic_path, load_error_text, trajectory_dataset
from .output_paths import remove_orphans
from .partial_repair import RECORD_KEY, ChunkJournal, ChunkLocator, journal_path, repair_for_resume

__all__ = ["TrajectoryStreamWriter", "partial_path", "checkpoint_path", "write_checkpoint", "read_checkpoint",
           "read_partial_attribute", "remove_restart_files", "has_restart_files", "CHECKPOINT_FORMAT"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hybridnde-rollout-checkpoint/1"

#: HDF5 chunk cache while streaming: ``u``'s chunks bypass it, only the small variables use it
CHUNK_CACHE_BYTES = 1 << 20

#: writes and checkpoints that may wait for the writer thread (each holds one batch's chunk)
QUEUE_DEPTH = 4


def partial_path(path: str | Path) -> Path:
    """Where the file grows until it is complete: ``.NAME.partial`` beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


#: global attribute ``incomplete`` of a partial file (gone once it is complete): until then only the
#: members of finished batches have their final ``u`` and ``status``
INCOMPLETE = ("rollout in progress or interrupted: u and status are final only for the members of finished batches "
              "(`hybridnde rollout ... --resume` continues it)")


def checkpoint_path(path: str | Path) -> Path:
    """The restart state that goes with ``partial_path(path)``."""
    path = Path(path)
    return path.with_name(f".{path.name}.checkpoint")


class TrajectoryStreamWriter:
    """Writes ``u(member, time, *state)`` of a rollout chunk by chunk (rank 0 only).

    Writes and checkpoints run in order on one background thread, so rank 0 steps its next chunk
    while the last ones are stored; at most ``QUEUE_DEPTH`` jobs wait, which bounds the memory they
    hold. ``write_encoded`` takes chunks encoded elsewhere (``chunk_codec.encode_block`` on the rank
    that computed them, with this writer's ``layout``); ``write`` encodes on the writer thread.
    Arrays handed to ``write`` must not be changed afterwards. ``flush`` waits for the queue; a
    failure on the thread is raised by the next call.

    Args:
        path: the final ``.nc`` file; it appears only on ``commit``.
        members: (member,) global member indices; times: (time,) save times.
        state_dim: ``"x"`` or ``"component"``, with ``state_coords`` its values.
        dtype: numpy dtype of ``u``; attrs: global attributes (title, solver, checksums, case TOML, ...).
        resume: reopen an existing partial file instead of creating it (checked against its chunk
            journal and rebuilt if a kill damaged it: ``partial_repair``).
        record: the resumed checkpoint's ``partial_repair.RECORD_KEY`` entry (``None``: it has none).
        incomplete: the partial file's ``incomplete`` attribute (what it is and how it continues).
        what: the kind of run, in messages (``"rollout"`` or ``"simulation"``).
    """

    def __init__(self, path: str | Path, *, members: np.ndarray, times: np.ndarray, state_dim: str,
                 state_coords: Any, state_shape: Sequence[int], dtype: np.dtype, title: str, solver: str,
                 closure_checksum: str, case_toml: str, extra_attrs: Mapping[str, Any], compression_level: int,
                 time_chunk: int, resume: bool = False, incomplete: str = INCOMPLETE, what: str = "rollout",
                 record: Mapping[str, Any] | None = None):
        self.path, self.what = Path(path), what
        self.partial = partial_path(self.path)
        self.n_members, self.n_times = len(members), len(times)
        self.layout = ChunkLayout.for_output(n_times=self.n_times, time_chunk=time_chunk,
                                             state_size=int(np.prod(state_shape)), dtype=dtype,
                                             compression_level=compression_level)

        def create(target: Path) -> None:
            template = trajectory_dataset(np.zeros((len(members), 0, *state_shape), dtype=dtype), [],
                                          state_dim=state_dim, state_coords=state_coords, members=members,
                                          title=title, solver=solver, closure_checksum=closure_checksum,
                                          case_toml=case_toml, extra_attrs=extra_attrs)
            import netCDF4

            with netCDF4.Dataset(target, "w", format="NETCDF4") as dataset:
                self._create(dataset, template, np.asarray(times, dtype=np.float64), state_dim, state_shape,
                             np.dtype(dtype), incomplete)
        if not resume:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                create(self.partial)
            except BaseException:
                self.partial.unlink(missing_ok=True)
                raise
        self.file = self._open_for_streaming(resume, record, create)  # (and, resuming, self._journal)
        if not resume:  # where each chunk lands (partial_repair)
            self._journal = ChunkJournal(journal_path(self.path))
        self.u = self.file["u"]
        self._start_thread()

    def _open_for_streaming(self, resume: bool, record: Mapping[str, Any] | None, create: Callable[[Path], None]):
        import h5py

        in_place: dict = {}
        if resume:
            self._journal, in_place, new_record = repair_for_resume(
                self.partial, journal_path(self.path), record, create, what=self.what, layout=self._layout(),
                check_layout=lambda layout: self._check_layout(tuple(layout), resume=True))
            if new_record:  # (the journal says where the chunks are now: so must its checkpoint)
                state = torch.load(checkpoint_path(self.path), weights_only=True)
                write_checkpoint(self.path, {**{key: value for key, value in state.items() if key != "format"},
                                             RECORD_KEY: new_record})
        try:
            file = h5py.File(self.partial, "r+", rdcc_nbytes=CHUNK_CACHE_BYTES)
        except OSError:
            if not resume:
                self.partial.unlink(missing_ok=True)
            raise
        u = file["u"]
        plist = u.id.get_create_plist()
        filters = tuple(plist.get_filter(i)[0] for i in range(plist.get_nfilters()))
        try:
            self._check_layout((u.shape[:2], u.chunks, filters, u.dtype.str), resume=resume)
        except BaseException:
            file.close()
            if not resume:
                self.partial.unlink(missing_ok=True)
            raise
        self._locator = ChunkLocator(self.partial, file.id, in_place)
        return file

    def _layout(self) -> list:
        """What ``u`` must be: (members, times), chunk shape, filters, dtype (as a checkpoint records it)."""
        return [[self.n_members, self.n_times], list(self.layout.chunk_shape), list(self.layout.filters),
                self.layout.dtype.str]

    def _check_layout(self, found: tuple, *, resume: bool) -> None:
        found = [list(part) if isinstance(part, (list, tuple)) else part for part in found]
        wanted = self._layout()
        if found == wanted:
            return
        if not resume:
            raise RuntimeError(f"{self.partial}: netCDF4 created u as {found}, not {wanted}")
        raise ResumeRefused(f"{self.partial}: holds u with (members x times, chunks, filters, dtype) {found}, "
                            f"the case now asks for {wanted} (output.time_chunk, output.compression_level "
                            "or compute.dtype changed)", "rerun with the settings it was started with, or "
                            "without --resume")

    def _create(self, dataset, template, times, state_dim, state_shape, dtype, incomplete):
        layout = self.layout
        compression = (dict(zlib=True, complevel=layout.compression_level, shuffle=True)
                       if layout.compression_level > 0 else {})
        dataset.createDimension("member", self.n_members)
        dataset.createDimension("time", self.n_times)
        dataset.createDimension(state_dim, int(state_shape[-1]))
        # coordinates: no _FillValue (CF), contiguous, as io.write_netcdf leaves them
        coordinates = {"member": template["member"].values, "time": times, state_dim: template[state_dim].values}
        for name, values in coordinates.items():
            kind = str if values.dtype.kind in "US" else values.dtype
            variable = dataset.createVariable(name, kind, (name,), fill_value=False)
            variable[:] = values.astype(object) if kind is str else values
        # the fill value is what chunk_codec pads edge chunks with
        dataset.createVariable("u", layout.dtype, ("member", "time", state_dim), fill_value=dtype.type(np.nan),
                               chunksizes=layout.chunk_shape, endian="little", **compression)
        status = dataset.createVariable("status", np.int8, ("member",), **compression)
        blowup_time = dataset.createVariable("blowup_time", np.float64, ("member",), fill_value=np.nan, **compression)
        status[:] = template["status"].values
        blowup_time[:] = template["blowup_time"].values
        for name in ("member", "time", state_dim, "u", "status", "blowup_time"):
            attrs = {key: value for key, value in template[name].attrs.items() if key != "_FillValue"}
            dataset.variables[name].setncatts(attrs)
        dataset.setncatts({**template.attrs, "incomplete": incomplete})

    # -- the background thread ------------------------------------------------------------------
    def _start_thread(self) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="netcdf-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._failure is None:  # after a failure, later jobs would write on a broken state
                    job()
            except BaseException as failure:  # handed to the caller by _check
                self._failure = failure
            finally:
                self._jobs.task_done()

    def _check(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"writing {self.partial} failed: {self._failure}") from self._failure

    def _submit(self, job: Callable[[], None]) -> None:
        while True:
            self._check()
            try:
                self._put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def _put(self, job: Callable[[], None] | None, **options) -> None:
        # Ctrl-C or SIGTERM held while queueing: a KeyboardInterrupt raised inside the queue's notify()
        # (after it released the writer's waiter, before it removed it) left a stale waiter, the next
        # notify woke that one instead, and close() hung in join() (CPython's gh-92530 fix covers only
        # an unlocked stale waiter; the writer had re-taken this one's lock)
        with interrupts_deferred():
            self._jobs.put(job, **options)

    def flush(self) -> None:
        """Wait until every submitted write and checkpoint is done."""
        self._jobs.join()
        self._check()

    # -- jobs -------------------------------------------------------------------------------------
    def write(self, member_start: int, time_start: int, values: np.ndarray) -> None:
        """Queue ``values: (members, times, *state)`` for ``u[member_start:, time_start:]`` (whole chunks
        along time, or the last one), encoded on the writer thread."""
        def job():
            flat = values.reshape(values.shape[0], values.shape[1], -1)
            self._store(encode_block(flat, member_start, time_start, self.layout))
        self._submit(job)

    def write_encoded(self, block: EncodedBlock) -> None:
        """Queue chunks that ``chunk_codec.encode_block`` encoded with ``self.layout``."""
        self._submit(lambda: self._store(block))

    def _store(self, block: EncodedBlock) -> None:
        if block.time_start >= self.n_times or block.member_start + len(block.chunks) > self.n_members:
            raise ValueError(f"chunks at member {block.member_start}, save {block.time_start} lie outside u "
                             f"{(self.n_members, self.n_times)}")
        for offset, payload in block.offsets():
            self.u.id.write_direct_chunk(offset, payload)
            self._journal.note(offset[0], offset[1], self._locator.after(payload, offset[:2]), payload)

    def _write_status(self, status: np.ndarray, blowup_time: np.ndarray) -> None:
        self.file["status"][:] = np.asarray(status, dtype=np.int8)
        self.file["blowup_time"][:] = np.asarray(blowup_time, dtype=np.float64)

    def checkpoint(self, status: np.ndarray, blowup_time: np.ndarray, payload: Mapping[str, Any]) -> None:
        """Queue a checkpoint after the writes before it: status, flush to disk, then the restart state
        (a kill in between leaves the previous checkpoint valid)."""
        status, blowup_time = np.array(status), np.array(blowup_time)

        def job():
            self._write_status(status, blowup_time)
            self.file.flush()
            record = self._journal.checkpoint(self.u, status=status, blowup_time=blowup_time, layout=self._layout())
            write_checkpoint(self.path, {**payload, RECORD_KEY: record})
        self._submit(job)

    def close(self) -> None:
        """Finish the queued jobs, stop the thread, close, and keep the partial file (a checkpoint may
        refer to it)."""
        if self._thread.is_alive():
            self._put(None)
            self._thread.join()
        if self.file:  # an h5py File is false once closed
            self.file.close()
            self._locator.close()

    def commit(self, status: np.ndarray, blowup_time: np.ndarray, attrs: Mapping[str, Any], *,
               history: str = "") -> Path:
        """Write the final ``status``/``blowup_time`` and global ``attrs`` (``history``: a line added to
        the file's), drop the ``incomplete`` mark, close, and rename the complete file into place."""
        self.flush()
        self.close()
        self._check()
        import netCDF4

        with netCDF4.Dataset(self.partial, "a") as dataset:
            dataset.variables["status"][:] = np.asarray(status, dtype=np.int8)
            dataset.variables["blowup_time"][:] = np.asarray(blowup_time, dtype=np.float64)
            dataset.setncatts(dict(attrs))
            if history:
                dataset.setncattr("history", f"{dataset.getncattr('history')}\n{history}")
            if "incomplete" in dataset.ncattrs():  # (partial files of earlier versions have none)
                dataset.delncattr("incomplete")
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        self.close()
        for leftover in (self.partial, journal_path(self.path)):
            leftover.unlink(missing_ok=True)


def write_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Atomically write the restart state of the rollout whose output is ``path`` (tensors and plain data)."""
    with atomic_path(checkpoint_path(path)) as temporary:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, temporary)


def read_partial_attribute(path: str | Path, name: str, *, what: str = "rollout") -> str | None:
    """A text attribute of the partial file of ``path`` (e.g. ``case_toml``, the case it was started
    with); ``None`` when it has no such attribute, ``ResumeRefused`` when the file cannot be read
    (``what``: the kind of run, in the message)."""
    import h5py

    try:
        with h5py.File(partial_path(path), "r") as file:
            value = file.attrs.get(name)
    except OSError as error:
        raise ResumeRefused(f"{partial_path(path)}: the partial file of the interrupted {what} cannot be read "
                            f"({error})", "rerun without --resume") from None
    return value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)


def read_checkpoint(path: str | Path, *, what: str = "rollout",
                    needs_partial: Callable[[Mapping[str, Any]], bool] | None = None) -> dict[str, Any] | None:
    """The restart state for output ``path``, or ``None`` if there is none, or its partial file is gone
    and it needs it (``needs_partial(payload)``; default: every checkpoint does); ``what``: the kind of
    run, in messages."""
    state_file, partial = checkpoint_path(path), partial_path(path)
    if not state_file.is_file():
        return None

    def without_partial() -> None:
        log.warning("%s has no partial file %s beside it; starting from the beginning", state_file, partial)

    if not partial.is_file() and needs_partial is None:  # (said before reading a checkpoint it cannot use)
        return without_partial()
    try:
        payload = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or foreign file: both mean it cannot be trusted
        raise DataError(f"{state_file}: not a readable {what} checkpoint ({load_error_text(error)})",
                        "delete it or rerun without --resume") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(f"{state_file}: not a {CHECKPOINT_FORMAT} file", "delete it or rerun without --resume")
    if not partial.is_file() and needs_partial(payload):
        return without_partial()
    return payload


def has_restart_files(path: str | Path) -> bool:
    """Whether a stopped rollout to ``path`` left what ``--resume`` continues: its checkpoint and the
    partial file beside it (a checkpoint alone starts from the beginning)."""
    return checkpoint_path(path).is_file() and partial_path(path).is_file()


def remove_restart_files(path: str | Path) -> None:
    for leftover in (checkpoint_path(path), partial_path(path), journal_path(path)):
        leftover.unlink(missing_ok=True)
    remove_orphans(partial_path(path))  # (a rebuild's new partial file, its writer killed)
