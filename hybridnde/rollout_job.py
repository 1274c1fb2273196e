"""The ``hybridnde rollout`` job: a case and a closure -> one streamed NetCDF file, on 1 or R ranks.

Phases, on every rank:

1. **Set-up** (nothing written yet): device, closure, host solver, this rank's initial states,
   batches, and on rank 0 the output file or the checkpoint to resume. Any failure is shared with
   every rank (``distributed.agree``), so bad input stops the whole job with exit 2 and no file.
2. **Run**: each rank advances its batches one output chunk per round and compresses its chunks
   (``chunk_codec``) while it steps the next round; rank 0 gathers the encoded chunks, stores them
   and, every ``rollout.checkpoint_every`` steps, writes a checkpoint. A rank that fails logs its
   error and aborts the job (``MPI_Abort``), so no rank hangs.
3. **Commit**: rank 0 writes the members' status and renames the complete file into place
   (the file itself: ``rollout_output``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time as wallclock
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .chunk_codec import encode_block
from .config import CaseConfig, ConfigError
from .distributed import (Communicator, agree, idle_ranks_warning, rank_batches, rank_device, require_same,
                          world)
from .checksums import data_checksum
from .io import (STATUS_FLAGS, check_output_path, disk_full_message, history_line, platform_description,
                 warn_if_disk_short)
from .interrupts import interrupts_deferred
from .netcdf_stream import TrajectoryStreamWriter, checkpoint_path, remove_restart_files
from .output_lock import output_lock
from .progress import PROGRESS_LOG_SECONDS, progress_bar
from .rollout_inputs import check_closure_fits, initial_states, load_rollout_closure
from .rollout_resume import (ROLLOUT_SECTIONS, JobRecord, checked_checkpoint, resume_identity, rollout_checksum,
                             written_elsewhere)
from .rollout import (BatchRunner, BatchState, OutputChunk, SaveSchedule, auto_batch_size, batch_bounds,
                      check_chunk_memory)
from .rollout_output import (RolloutSummary, chunk_layout, finished_output, leave_only_what_resumes, member_status,
                             start_output)
from .systems import build_host_solver, resolve_dtype
from .threads import torch_threads

__all__ = ["run_rollout", "RolloutSummary", "rollout_checksum", "ROLLOUT_SECTIONS"]

log = logging.getLogger(__name__)

#: said when a rollout stops with a checkpoint kept (launcher, and what it may change)
RESUME_HINT = "rollout stopped; `%shybridnde rollout ... --resume` continues from the last checkpoint%s"


@dataclass
class RolloutSetup:
    """One rank's rollout, set up before anything is written (``_prepare``)."""

    solver: Any
    closure_checksum: str
    schedule: SaveSchedule
    batch_size: int
    batches: list[tuple[int, int]]
    mine: list[tuple[int, int]]
    member_ids: np.ndarray
    u0: torch.Tensor
    first_position: int
    checkpoint: dict | None
    identity: dict[str, Any] | None = None  # what rank 0's checkpoints record (rollout_resume); on every rank
    run_id: str = ""
    writer: TrajectoryStreamWriter | None = None


#: what every rank of a job must have read alike (``resume_identity``'s keys but the thread count, which
#: changes only last bits), and what each key stands for in the error
RANK_IDENTITY = {"config_checksum": "case (after --set)", "closure_checksum": "closure",
                 "initial_conditions_checksum": "initial conditions", "batch_size": "batch size",
                 "n_saves": "number of saves",
                 # not in the case checksum (a resume may change it), but each rank decides by it when
                 # to hand rank 0 its batches' states for a checkpoint
                 "checkpoint_every": "rollout.checkpoint_every"}


def _prepare(case: CaseConfig, out: Path, closure_path: str | Path | None, closure: Callable | None, resume: bool,
             comm: Communicator, held: contextlib.ExitStack) -> RolloutSetup:
    rollout = case.rollout
    if out.suffix != ".nc":
        raise ConfigError(f"--out {out}: give a .nc file name")
    given = rollout.initial_conditions if rollout.initial_conditions != "draw" else None
    check_output_path(out, inputs={"rollout.initial_conditions": given, "--closure": closure_path})
    device = rank_device(case.compute.device, comm.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # this rank's GPU is the current one (streams, graphs, libraries)
    dtype = resolve_dtype(case.compute.dtype)
    closure, closure_checksum = load_rollout_closure(closure_path, closure, device=device, dtype=dtype,
                                                       case=case)
    solver = build_host_solver(case, closure=closure, device=device, dtype=dtype)
    if closure is not None:
        check_closure_fits(closure, solver, closure_path or "closure")
    if closure_path is not None:
        solver.capture_closure = True  # our own models are plain tensor code: safe inside a CUDA graph
    time_chunk = case.output.time_chunk
    # (its clock, t0, comes with the initial states below)
    schedule = SaveSchedule(steps=rollout.steps, save_every=rollout.save_every, time_chunk=time_chunk, dt=solver.dt)
    batch_size = rollout.batch_size or auto_batch_size(solver, memory_budget_mb=rollout.memory_budget_mb,
                                                       time_chunk=time_chunk, n_saves=schedule.n_saves)
    batch_size = min(batch_size, rollout.members)
    check_chunk_memory(solver, batch_size, schedule, fix="lower rollout.batch_size or output.time_chunk (rollout.batch_size = "
                       "0 sizes batches to rollout.memory_budget_mb)")
    # before the members are drawn, on every rank (each would draw its own): a mistyped count is said at once.
    # A resume only warns: part of the file (or all of it, finished) is already on the disk
    size = rollout.members * schedule.n_saves * int(np.prod(solver.state_shape)) * solver.dtype.itemsize
    warn_if_disk_short(out, size, "the rollout", warn=comm.rank == 0, fix=None if resume else
                       "lower rollout.members or rollout.steps, raise rollout.save_every, or choose another --out")
    batches = batch_bounds(rollout.members, batch_size)
    mine = rank_batches(batches, comm.size, comm.rank)
    positions = range(mine[0][0], mine[-1][1]) if mine else range(0)
    member_ids, t0, u0 = initial_states(case, solver, positions)
    schedule = replace(schedule, t0=t0)
    setup = RolloutSetup(solver=solver, closure_checksum=closure_checksum, schedule=schedule, batch_size=batch_size,
                   batches=batches, mine=mine, member_ids=member_ids, u0=u0, first_position=positions.start,
                   checkpoint=None)
    # on every rank: what they read must agree (``_rollout``, ``require_same``). The initial-conditions
    # file is hashed whole by rank 0 and one rank per node only (node-local copies differ per node; the
    # others would each read all of a file of which they need their members alone)
    hashed = comm.rank == 0 or comm.local_rank == 0
    setup.identity = resume_identity(case, closure_checksum=closure_checksum, batch_size=batch_size,
                                     n_saves=schedule.n_saves, device=device,
                                     initial_conditions_checksum="draw" if given is None
                                     else data_checksum(given) if hashed else None)
    if comm.rank == 0:  # one writer per output, held until this rollout ends (see output_lock)
        held.enter_context(output_lock(out))
        if resume:
            setup.checkpoint = checked_checkpoint(case, out, setup.identity)
        # ties checkpoints to their partial file: both carry it, a resume checks they agree
        # an older checkpoint has none, and neither has its partial file: it goes on without one
        setup.run_id = setup.checkpoint.get("run_id", "") if setup.checkpoint else uuid.uuid4().hex
    return setup


def _my_chunks(runner: BatchRunner, setup: RolloutSetup, checkpoint: dict | None) -> Iterator[tuple[OutputChunk, BatchState]]:
    """This rank's batches, chunk by chunk, skipping what the checkpoint has finished."""
    done = set(checkpoint["done"]) if checkpoint else set()
    in_flight = checkpoint["in_flight"] if checkpoint else {}
    moved = bool(checkpoint) and written_elsewhere(checkpoint, setup.identity)
    for start, stop in setup.mine:
        if start in done:
            continue
        if start in in_flight:
            state = BatchState.from_host(in_flight[start], setup.solver, written_elsewhere=moved)
        else:
            offset = start - setup.first_position
            state = runner.start(start, setup.u0[offset:offset + stop - start])
        while not runner.finished(state):
            yield runner.advance(state), state


def _remaining_chunks(setup: RolloutSetup, n_chunks: int, checkpoint: dict | None) -> int:
    done = set(checkpoint["done"]) if checkpoint else set()
    in_flight = checkpoint["in_flight"] if checkpoint else {}
    return sum(0 if start in done else n_chunks - int(in_flight[start]["next_chunk"]) if start in in_flight
               else n_chunks for start, _ in setup.mine)


def run_rollout(case: CaseConfig, out: str | Path, *, closure_path: str | Path | None = None,
                closure: Callable | None = None, resume: bool = False, progress: bool | None = None,
                comm: Communicator | None = None, resume_hint: bool = True) -> RolloutSummary:
    """Roll out ``case.rollout.members`` members of the case's host solver with ``closure`` (a
    ``closure.pt`` path or a callable; neither: the bare solver) and stream them to ``out``.

    Call on every rank of an MPI job (or in one process). Raises ``ConfigError``/``DataError`` on
    bad input before anything is written; ``--resume`` semantics with ``resume=True``.
    ``resume_hint``: name ``hybridnde rollout --resume`` where a stopped run keeps its checkpoint or this
    run discards one (``False``: the caller, e.g. ``hybridnde run``, says how it continues).
    """
    with torch_threads(case.rollout.threads, "rollout.threads"), contextlib.ExitStack() as held:
        return _rollout(case, Path(out), closure_path, closure, resume, progress, comm or world(), held, resume_hint)


def _rollout(case: CaseConfig, out: Path, closure_path: str | Path | None, closure: Callable | None, resume: bool,
             progress: bool | None, comm: Communicator, held: contextlib.ExitStack,
             resume_hint: bool) -> RolloutSummary:
    setup, error = None, None
    try:
        setup = _prepare(case, out, closure_path, closure, resume, comm, held)
    except Exception as caught:  # shared below, so that every rank stops
        error = caught
    agree(comm, error)
    if comm.size > 1:  # before anything is written: a mixed file would look valid
        read = {**setup.identity, "checkpoint_every": case.rollout.checkpoint_every}
        require_same(comm, {key: read[key] for key in RANK_IDENTITY}, RANK_IDENTITY)
    finished, error = None, None
    if resume and comm.rank == 0:
        try:  # the other ranks wait in the broadcast: a failure here must reach them
            finished = finished_output(out, case, setup)
        except Exception as caught:
            error = caught
    agree(comm, error)
    finished = comm.bcast(finished)
    if finished is not None:  # the same command line again after it finished: nothing to resume
        return finished
    error = None
    if comm.rank == 0:
        try:
            setup.writer = start_output(case, out, setup, closure_path=closure_path, resume=resume,
                                         resume_hint=resume_hint)
        except Exception as caught:
            error = caught
    agree(comm, error)
    checkpoint = comm.bcast(setup.checkpoint)
    if comm.rank == 0 and comm.size > len(setup.batches):
        log.warning(idle_ranks_warning(case.rollout.members, len(setup.batches), setup.batch_size, comm.size))
    try:
        return _run(case, out, setup, checkpoint, progress, comm)
    except BaseException as failure:
        if comm.size > 1 and isinstance(failure, KeyboardInterrupt):  # (a scheduler's SIGTERM reaches every rank)
            log.critical("rank %d of %d interrupted%s", comm.rank, comm.size,
                         f" by {failure.args[0]}" if failure.args else "")
        elif comm.size > 1:
            full = disk_full_message(failure)  # not a bug: the message without a traceback, as in one process
            log.critical("rank %d of %d failed: %s: %s", comm.rank, comm.size, type(failure).__name__, full or failure,
                         exc_info=not full)
        leave_only_what_resumes(out, setup.writer, other_rank=comm.rank > 0, under_mpi=comm.size > 1)  # before the abort
        if comm.size > 1:
            if checkpoint_path(out).exists():
                log.critical(RESUME_HINT, "mpiexec ... ", " (on any number of ranks)")
            held.close()  # the lock file too: an abort skips every exit handler
            comm.abort(130 if isinstance(failure, KeyboardInterrupt) else 1)
        if resume_hint and setup.writer is not None and checkpoint_path(out).exists():
            log.error(RESUME_HINT, "", "")
        raise


def _run(case: CaseConfig, out: Path, setup: RolloutSetup, checkpoint: dict | None, progress: bool | None,
         comm: Communicator) -> RolloutSummary:
    schedule, rollout = setup.schedule, case.rollout
    runner = BatchRunner(setup.solver, schedule, blowup_threshold=rollout.blowup_threshold,
                         capacity=setup.batch_size)
    n_rounds = comm.allreduce_max(_remaining_chunks(setup, schedule.n_chunks, checkpoint))
    steps_per_chunk = schedule.time_chunk * schedule.save_every
    interval = max(1, math.ceil(rollout.checkpoint_every / steps_per_chunk)) if rollout.checkpoint_every else 1
    # rank 0's record of the job: per member first bad save, finished batches, states of running ones
    record = JobRecord.restored(checkpoint, members=rollout.members, batches=setup.batches, schedule=schedule,
                                ranks=comm.size)
    first_bad_save, done, in_flight = record.first_bad_save, record.done, record.in_flight
    resumed_steps, earlier_seconds = record.member_steps, record.elapsed_seconds
    resumes, ranks_per_run = record.resumes, record.ranks_per_run
    chunks = _my_chunks(runner, setup, checkpoint)
    layout = chunk_layout(case, setup)
    if comm.rank == 0 and setup.writer.layout != layout:
        raise RuntimeError(f"the file's chunk layout {setup.writer.layout} differs from the ranks' {layout}")
    member_steps = 0
    bar = None
    if comm.rank == 0:
        total = rollout.members * schedule.steps_run
        if checkpoint:  # (a batch job's log: where this run starts)
            log.info("resuming %s from its checkpoint: %d of %d member-steps done (%.0f%%), %d of %d batches finished",
                     out, resumed_steps, total, 100.0 * resumed_steps / max(total, 1), len(done), len(setup.batches))
        bar = progress_bar(total=total, description="rollout", enabled=progress,
                           unit="member-step", log_every=PROGRESS_LOG_SECONDS, initial=resumed_steps)

    def checkpoint_after(round_index: int) -> bool:
        return (round_index + 1) % interval == 0 and round_index + 1 < n_rounds

    comm.barrier()
    started = wallclock.perf_counter()
    # Each rank encodes (compresses) its own chunks on a thread while it steps the next round, and
    # hands them over one round later, so rank 0 only stores bytes (see chunk_codec).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-encoder") as encoder:
        encoding = None
        for round_index in range(n_rounds + 1):
            outgoing = None
            if round_index < n_rounds:
                chunk, state = next(chunks, (None, None))
                keep = state.to_host() if checkpoint_after(round_index) and chunk is not None and not chunk.last \
                    else None
                if chunk is not None:
                    outgoing = (encoder.submit(encode_block, chunk.values, chunk.start, chunk.save_start, layout),
                                replace(chunk, values=None), keep)
            # the previous round's chunk, encoded meanwhile
            ready = None if encoding is None else (encoding[0].result(), *encoding[1:])
            encoding = outgoing
            received = comm.gather(ready)
            if comm.rank != 0 or round_index == 0:
                continue
            for item in received:
                if item is None:
                    continue
                block, meta, batch_state = item
                setup.writer.write_encoded(block)
                first_bad_save[meta.start:meta.stop] = meta.first_bad_save
                member_steps += meta.stepped * meta.steps  # the work done: not members dropped after blowing up
                bar.update((meta.stop - meta.start) * meta.steps)
                if meta.last:
                    done.add(meta.start)
                    in_flight.pop(meta.start, None)
                elif batch_state is not None:
                    in_flight[meta.start] = batch_state
            if checkpoint_after(round_index - 1):
                setup.writer.checkpoint(*member_status(first_bad_save, schedule), {
                    **setup.identity, **({"run_id": setup.run_id} if setup.run_id else {}),
                    "done": sorted(done),
                    "in_flight": dict(in_flight), "first_bad_save": torch.tensor(first_bad_save),
                    "elapsed_seconds": earlier_seconds + wallclock.perf_counter() - started, "resumes": resumes,
                    "member_steps": resumed_steps + member_steps,
                    **({"ranks_per_run": ranks_per_run} if ranks_per_run is not None else {})})
    summary = None
    if comm.rank == 0:
        setup.writer.flush()  # the run ends when its data are on disk
        seconds = wallclock.perf_counter() - started
        bar.close()
        status, blowup_time = member_status(first_bad_save, schedule)
        blew_up = int((status == STATUS_FLAGS["blew_up"]).sum())
        total_steps, total_seconds = resumed_steps + member_steps, earlier_seconds + seconds
        rate = total_steps / total_seconds if total_seconds > 0 else float("nan")
        attrs = {"ranks": comm.size, "wall_seconds": total_seconds, "member_steps": total_steps,
                 "case_toml": case.to_toml(),  # (a resume may change [evaluate])
                 "member_steps_per_second": rate, "resumed_runs": resumes, "members_blew_up": blew_up,
                 **({"ranks_per_run": np.asarray(ranks_per_run, dtype=np.int64)} if ranks_per_run is not None else {}),
                 "platform": platform_description(setup.solver.device)}
        with interrupts_deferred():  # the complete file and no restart files, or the partial one and them
            setup.writer.commit(status, blowup_time, attrs,
                                history=history_line(f"resumed {resumes} time(s), finished") if resumes else "")
            remove_restart_files(out)
        summary = RolloutSummary(path=out, members=rollout.members, ok=rollout.members - blew_up, blew_up=blew_up,
                                 member_steps=member_steps, seconds=seconds, ranks=comm.size,
                                 batch_size=setup.batch_size, resumed=bool(checkpoint))
        log.info("wrote %s: %d members (%d ok, %d blew up), %.4g member-steps/s on %d rank(s)", out,
                 rollout.members, summary.ok, blew_up, summary.member_steps_per_second, comm.size)
    return comm.bcast(summary)


