"""``hybridnde simulate`` streamed to its file, with checkpoints (fixed-step integrators).

The members are stepped as one batch, as ``simulate.simulate_case`` steps them, but through the
rollout engine (``rollout.BatchRunner``): one output chunk of ``output.time_chunk`` saves at a
time, each written to ``.NAME.partial`` as it comes (``netcdf_stream``), so memory does not grow
with the trajectory. At most every ``checkpoint_seconds`` of wall time (between chunks, or between
spin-up steps) the partial file is flushed and ``.NAME.checkpoint`` records the batch's state (or
the spin-up's); ``--resume`` continues from it bit for bit. A finished file is renamed into place,
as a rollout's.

Adaptive integrators solve all save times in one call and have no state between saves to keep:
they run in memory (``simulate_case``) and start again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time as wallclock
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import CaseConfig
from .config.physics import ADAPTIVE_INTEGRATORS
from .errors import ResumeRefused
from .io import history_line, write_failure
from .interrupts import interrupts_deferred
from .netcdf_stream import TrajectoryStreamWriter, checkpoint_path, has_restart_files, remove_restart_files
from .output_lock import output_lock
from .partial_repair import RECORD_KEY
from .progress import PROGRESS_LOG_SECONDS, progress_bar
from .rollout import BatchRunner, BatchState, SaveSchedule, check_chunk_memory
from .rollout_output import leave_only_what_resumes, member_status
from .rollout_resume import written_elsewhere
from .simulate import (initial_states_and_clock, log_simulated, simulation_attrs, simulation_title, spin_up,
                       warn_blowups, warn_invariant_drift, warn_unsaved_steps)
from .simulation_resume import checked_simulation_checkpoint, finished_simulation, simulation_identity
from .systems import build_solver, resolve_device, resolve_dtype, state_coordinates

__all__ = ["simulate_to_file", "run_simulation", "streams", "CHECKPOINT_SECONDS"]

log = logging.getLogger(__name__)

#: wall time between checkpoints: a checkpoint costs a flush and one state, not worth taking per chunk
CHECKPOINT_SECONDS = 60.0

#: what a stopped simulation's partial file says of itself
INCOMPLETE = ("simulation in progress or interrupted: u holds the saves written so far "
              "(`hybridnde simulate ... --resume` continues it)")

#: the same for an adaptive solve's file while it is written (it has no checkpoint: a rerun makes it again)
IN_MEMORY_INCOMPLETE = "simulation being written (an adaptive solve's, which a rerun makes again)"

#: said when a simulation stops with a checkpoint kept
RESUME_HINT = "simulation stopped; `hybridnde simulate ... --resume` continues from the last checkpoint"


def streams(case: CaseConfig) -> bool:
    """Whether ``run_simulation`` streams this case (fixed-step integrators) or it runs in memory."""
    return case.time.integrator not in ADAPTIVE_INTEGRATORS


def simulate_to_file(case: CaseConfig, out: str | Path, *, resume: bool = False, progress: bool | None = None,
                     threads_setting: int = 1, resume_hint: bool = True) -> Path:
    """``hybridnde simulate``: ``run_simulation`` for fixed-step integrators; adaptive ones are solved in
    memory (``simulate_case``) and written through a temporary file, ``--resume`` only skipping a
    finished file (``run_simulation``'s arguments)."""
    out = Path(out)
    if streams(case):
        return run_simulation(case, out, resume=resume, progress=progress, threads_setting=threads_setting,
                              resume_hint=resume_hint)
    from .simulate import simulate_case

    with output_lock(out):
        if resume and _finished_already(case, out):
            return out
        if resume and has_restart_files(out):  # a stopped fixed-step run's: this case cannot continue it
            raise ResumeRefused(f"{out}: its stopped simulation was made with a fixed-step integrator; time.integrator "
                                f"= {case.time.integrator!r} solves in memory and cannot continue it",
                                "resume with the case it was made with, or run without --resume to start again "
                                "(replacing its restart files)")
        if resume:
            log.warning("--resume: time.integrator = %r solves all save times in one call and keeps no "
                        "checkpoints: the simulation starts again", case.time.integrator)
        dataset = simulate_case(case, progress=progress)
        _write_in_chunks(dataset, out, case)
    log.info("wrote %s (%d members, %d times)", out, dataset.sizes["member"], dataset.sizes["time"])
    return out


def _write_in_chunks(dataset, out: Path, case: CaseConfig) -> None:
    """An in-memory simulation (``simulate_case``'s dataset) to ``out`` through the streaming writer, one
    time chunk at a time: xarray's ``to_netcdf`` held ~4x its ``u`` again while encoding it (+380 MB for a
    92 MiB trajectory); the writer holds a few chunks. The file is the streamed simulation's. It grows
    under its own name (``.NAME.solved``'s partial file): a stopped fixed-step run's restart files beside
    ``out`` stay until the new file is complete, as before."""
    u, time_chunk = dataset["u"].values, case.output.time_chunk
    state_dim, staging = dataset["u"].dims[2], out.with_name(f".{out.name}.solved")
    writer = TrajectoryStreamWriter(
        staging, members=dataset["member"].values, times=dataset["time"].values, state_dim=state_dim,
        state_coords=dataset[state_dim].values, state_shape=u.shape[2:], dtype=np.dtype(np.float64),
        title="", solver="", closure_checksum="none", case_toml="", extra_attrs=dict(dataset.attrs),  # (all of them)
        compression_level=case.output.compression_level, time_chunk=time_chunk, incomplete=IN_MEMORY_INCOMPLETE,
        what="simulation")
    try:
        for start in range(0, u.shape[1], time_chunk):
            writer.write(0, start, np.ascontiguousarray(u[:, start:start + time_chunk]))
        with interrupts_deferred():  # the complete file and no restart files (of a stopped fixed-step run too)
            os.replace(writer.commit(dataset["status"].values, dataset["blowup_time"].values, {}), out)
            for path in (staging, out):  # (the writer's chunk journal; a stopped fixed-step run's files)
                remove_restart_files(path)
    except (OSError, RuntimeError) as error:  # the HDF5 library reports a full disk as "HDF error"
        writer.discard()
        raise write_failure(out, error, u.nbytes) from error
    except BaseException:
        writer.discard()
        raise


def _finished_already(case: CaseConfig, out: Path) -> bool:
    """``--resume`` with nothing to resume: ``out`` is this case's finished truth and no stopped run's
    restart files are beside it (a checkpoint alone, left by a stop after the rename, is removed)."""
    if has_restart_files(out) or not finished_simulation(out, case):
        return False
    log.warning("--resume: %s is this case's simulation, finished; nothing to resume (without --resume it is made "
                "again)", out)
    remove_restart_files(out)  # (the checkpoint and chunk journal: the partial file is gone)
    return True


def run_simulation(case: CaseConfig, out: str | Path, *, resume: bool = False, progress: bool | None = None,
                   threads_setting: int = 1, checkpoint_seconds: float | None = None,
                   resume_hint: bool = True) -> Path:
    """Simulate the case's true system into ``out`` (a ``.nc`` file), streamed and checkpointed.

    ``resume``: continue from the checkpoint beside ``out`` (refused, ``ResumeRefused``, when the case,
    initial-conditions data or thread count differ: ``simulation_resume``), or do nothing when ``out``
    is already this case's finished file. ``checkpoint_seconds``: wall time between checkpoints
    (default ``CHECKPOINT_SECONDS``). ``threads_setting``: the ``--threads`` the caller set (0:
    torch's default, whose count may then differ on resume). ``resume_hint``: name ``--resume`` when
    a stopped run keeps its checkpoint or this run discards one (``False``: the caller says how it
    continues). The file is the one ``simulate_case`` + ``io.write_netcdf`` would write, ``u`` in
    float64 whatever ``compute.dtype``.
    """
    out = Path(out)
    if not streams(case):
        raise ValueError(f"time.integrator = {case.time.integrator!r} runs in memory (simulate_case)")
    with output_lock(out):
        if resume and _finished_already(case, out):
            return out
        device = resolve_device(case.compute.device)
        solver = build_solver(case.system, case.time, device=device, dtype=resolve_dtype(case.compute.dtype))
        schedule = SaveSchedule(steps=case.time.n_steps, save_every=case.time.save_every,
                                time_chunk=case.output.time_chunk, dt=solver.dt)
        identity = simulation_identity(case, device, threads_setting, resuming=resume and checkpoint_path(out).is_file())
        checkpoint = checked_simulation_checkpoint(case, out, identity) if resume else None
        if checkpoint is None:
            if checkpoint_path(out).exists() and not resume:
                log.warning("starting afresh: the checkpoint of an earlier interrupted simulation to %s is discarded%s",
                            out, " (`hybridnde simulate ... --resume` continues one)" if resume_hint else "")
            remove_restart_files(out)
        warn_unsaved_steps(case)
        return _simulate(case, out, solver, schedule, identity, checkpoint, progress,
                         CHECKPOINT_SECONDS if checkpoint_seconds is None else checkpoint_seconds, resume_hint)


class _Checkpoints:
    """A run's checkpoints, at most one every ``seconds`` of wall time: the status so far, flushed to the
    partial file, then ``record`` plus where to go on from (``netcdf_stream``'s order).

    A checkpoint holds ``simulation_identity``'s keys, ``run_id``, ``member_ids: (members,)`` int64,
    ``spinup_t0`` (the time at spin-up step 0), ``t0`` (the first save's time), ``resumes`` (runs
    before this one), ``elapsed_seconds`` (over every run) and where to go on: ``spinup_step`` (steps
    done) with ``spinup_state: (members, *state)`` physical, or ``batch`` (``BatchState.to_host``).
    """

    def __init__(self, writer: TrajectoryStreamWriter, schedule: SaveSchedule, seconds: float, record: dict[str, Any],
                 earlier_seconds: float):
        self.writer, self.schedule, self.seconds, self.record = writer, schedule, seconds, record
        self.started = self.last = wallclock.perf_counter()
        self.earlier_seconds = earlier_seconds

    def elapsed(self) -> float:
        """The simulation's wall time so far, over every run."""
        return self.earlier_seconds + wallclock.perf_counter() - self.started

    def __call__(self, first_bad_save: np.ndarray, resume_from: Callable[[], dict[str, Any]]) -> None:
        if wallclock.perf_counter() - self.last < self.seconds:
            return
        self.writer.checkpoint(*member_status(first_bad_save, self.schedule),
                               {**self.record, **resume_from(), "elapsed_seconds": self.elapsed()})
        self.last = wallclock.perf_counter()


def _simulate(case: CaseConfig, out: Path, solver, schedule: SaveSchedule, identity: dict, checkpoint: dict | None,
              progress: bool | None, checkpoint_seconds: float, resume_hint: bool) -> Path:
    spin = None  # (steps done, states) of a spin-up to go on with
    with torch.inference_mode():
        if checkpoint is None:
            u, member_ids, t0, start = initial_states_and_clock(case, solver)
            member_ids = np.arange(len(u)) if member_ids is None else member_ids
            run_id, earlier_seconds, resumes, spin = uuid.uuid4().hex, 0.0, 0, (0, u)
        else:
            member_ids, run_id = checkpoint["member_ids"].numpy(), checkpoint["run_id"]
            t0, start = float(checkpoint["spinup_t0"]), float(checkpoint["t0"])
            earlier_seconds, resumes = float(checkpoint["elapsed_seconds"]), int(checkpoint["resumes"]) + 1
            if "spinup_step" in checkpoint:
                spin = (int(checkpoint["spinup_step"]), checkpoint["spinup_state"].to(solver.device))
    schedule = replace(schedule, t0=start)
    check_chunk_memory(solver, len(member_ids), schedule, fix="lower output.time_chunk or initial_condition.members")
    state_dim, coords = state_coordinates(solver)
    writer = TrajectoryStreamWriter(
        out, members=member_ids, times=schedule.times(), state_dim=state_dim, state_coords=coords,
        state_shape=solver.state_shape, dtype=np.dtype(np.float64), title=simulation_title(case), solver=repr(solver),
        closure_checksum="none", case_toml=case.to_toml(),
        extra_attrs={**simulation_attrs(case, solver, identity["initial_conditions"]), "run_id": run_id},
        compression_level=case.output.compression_level, time_chunk=case.output.time_chunk,
        # a checkpoint in the spin-up needs no saves: its partial file is started anew (simulation_resume)
        resume=checkpoint is not None and spin is None, incomplete=INCOMPLETE, what="simulation",
        record=checkpoint.get(RECORD_KEY) if checkpoint is not None and spin is None else None)
    try:  # from here on the writer's thread and files are closed, and removed unless a checkpoint resumes them
        checkpoints = _Checkpoints(writer, schedule, checkpoint_seconds, {
            **identity, "run_id": run_id, "t0": start, "spinup_t0": t0,
            "member_ids": torch.tensor(np.asarray(member_ids)), "resumes": resumes}, earlier_seconds)
        # a truth member is marked only when it turns non-finite: the largest finite value of its dtype is
        # no physical bound (the float64 one overflowed to inf against float32 states, and let inf pass).
        # The batch stays whole, as in memory: the survivors' bits do not depend on which members blew up
        runner = BatchRunner(solver, schedule, blowup_threshold=torch.finfo(solver.dtype).max,
                             capacity=len(member_ids), compact=False)  # (its chunk buffer may not fit)
        if spin is not None:
            if checkpoint is not None:
                log.info("resuming %s from its checkpoint: %d of %d spin-up steps done", out, spin[0],
                         case.time.spinup_steps)
            none_bad = np.full(len(member_ids), -1, dtype=np.int64)
            with torch.inference_mode():
                u = spin_up(case, solver, spin[1], t0, progress=progress, first=spin[0], between=lambda done, u: (
                    checkpoints(none_bad, lambda: {"spinup_step": done, "spinup_state": u.to("cpu", copy=True)})))
                state = runner.start(0, u)
        else:
            state = BatchState.from_host(checkpoint["batch"], solver,
                                         written_elsewhere=written_elsewhere(checkpoint, identity))
            log.info("resuming %s from its checkpoint: %d of %d saves done", out,
                     min(state.next_chunk * schedule.time_chunk, schedule.n_saves), schedule.n_saves)
        _stream(writer, runner, state, schedule, progress, checkpoints)
        seconds = checkpoints.elapsed()
        status, blowup_time = member_status(state.first_bad_save, schedule)
        with interrupts_deferred():  # the complete file and no restart files, or the partial one and them
            # case_toml of the case that finished it: a resume may change keys outside the simulation's
            # sections ([evaluate]'s threshold, say), which evaluate reads from the file
            writer.commit(status, blowup_time, {"wall_seconds": seconds, "case_toml": case.to_toml(),
                                                **({"resumed_runs": resumes} if resumes else {})},
                          history=history_line(f"resumed {resumes} time(s), finished") if resumes else "")
            remove_restart_files(out)
    except BaseException:
        leave_only_what_resumes(out, writer, other_rank=False)
        if resume_hint and checkpoint_path(out).exists():
            log.error(RESUME_HINT)
        raise
    warn_blowups(int((state.first_bad_save >= 0).sum()), state.size)
    if getattr(solver, "invariants", None) is not None:  # the first and last saves, as written
        import netCDF4

        with netCDF4.Dataset(out) as written:
            first, last = (np.ma.filled(written["u"][:, index], np.nan) for index in (0, -1))
        warn_invariant_drift(solver, first, last, (schedule.t0, schedule.times()[-1]))
    log_simulated(case, state.size, seconds)
    log.info("wrote %s (%d members, %d times)", out, state.size, schedule.n_saves)
    return out


def _stream(writer: TrajectoryStreamWriter, runner: BatchRunner, state: BatchState, schedule: SaveSchedule,
            progress: bool | None, checkpoints: _Checkpoints) -> None:
    """Step ``state`` chunk by chunk into ``writer``, with ``checkpoints`` between chunks."""
    done = min(state.next_chunk * schedule.time_chunk, schedule.n_saves)
    bar = progress_bar(total=schedule.n_saves, description="simulate", enabled=progress, unit="save",
                       log_every=PROGRESS_LOG_SECONDS, initial=done)
    with contextlib.closing(bar):
        while not runner.finished(state):
            with torch.inference_mode():
                chunk = runner.advance(state)
            writer.write(0, chunk.save_start, chunk.values.astype(np.float64, copy=False))
            bar.update(chunk.values.shape[1])
            if not chunk.last:
                checkpoints(state.first_bad_save, lambda: {"batch": state.to_host()})
        writer.flush()  # the run ends when its data are on disk
