"""A rollout's output file (rank 0's side of ``hybridnde rollout``): start it or reopen the partial
file being resumed, recognise a finished one, and the members' status it ends with.

The job's set-up (``rollout_job``) says what to write; this module says how it lands in the file
described in docs/netcdf.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .chunk_codec import ChunkLayout
from .config import CaseConfig
from .checksums import records_data
from .io import STATUS_FLAGS
from .netcdf_stream import TrajectoryStreamWriter, checkpoint_path, partial_path, remove_restart_files
from .output_lock import remove_held_lock_file
from .partial_repair import RECORD_KEY
from .rollout import SaveSchedule
from .rollout_resume import same_rollout_case
from .systems import state_coordinates

if TYPE_CHECKING:
    from .rollout_job import RolloutSetup

__all__ = ["RolloutSummary", "chunk_layout", "finished_output", "leave_only_what_resumes", "member_status",
           "start_output"]

log = logging.getLogger("hybridnde.rollout_job")  # the job's messages, under the name they had before


@dataclass(frozen=True)
class RolloutSummary:
    """What a finished rollout reports (the same on every rank)."""

    path: Path
    members: int
    ok: int
    blew_up: int
    member_steps: int
    seconds: float
    ranks: int
    batch_size: int
    resumed: bool

    @property
    def member_steps_per_second(self) -> float:
        return self.member_steps / self.seconds if self.seconds > 0 else float("nan")


def start_output(case: CaseConfig, out: Path, setup: RolloutSetup, *, closure_path, resume: bool,
                 resume_hint: bool = True) -> TrajectoryStreamWriter:
    """Rank 0: reopen the partial file of the checkpoint being resumed, or start a new one (``resume``:
    asked for; a checkpoint it could not use was said where it was read; ``resume_hint``: as
    ``run_rollout``'s)."""
    if setup.checkpoint is None:
        if checkpoint_path(out).exists() and not resume:
            log.warning("starting afresh: the checkpoint of an earlier interrupted rollout to %s is discarded%s", out,
                        " (`hybridnde rollout ... --resume` continues one)" if resume_hint else "")
        remove_restart_files(out)
    return _open_writer(case, out, setup, resume=setup.checkpoint is not None, closure_path=closure_path)


def _open_writer(case: CaseConfig, out: Path, setup: RolloutSetup, *, resume: bool, closure_path) -> TrajectoryStreamWriter:
    solver = setup.solver
    state_dim, coords = state_coordinates(solver)
    closure = solver.closure  # a Python closure (run_rollout(closure=...)) has no file: its name
    closure_name = (Path(closure_path).name if closure_path else "none" if closure is None
                    else getattr(closure, "__name__", type(closure).__name__))
    return TrajectoryStreamWriter(
        out, members=setup.member_ids, times=setup.schedule.times(), state_dim=state_dim, state_coords=coords,
        state_shape=solver.state_shape, dtype=torch.empty(0, dtype=solver.dtype).numpy().dtype,
        title=f"{case.case.name}: ensemble rollout of {case.host_system.name} (closure: {closure_name})",
        solver=repr(solver), closure_checksum=setup.closure_checksum, case_toml=case.to_toml(),
        extra_attrs={**case.output.descriptive_attributes(), "stage": "rollout",
                     "config_checksum": setup.identity["config_checksum"], "run_id": setup.run_id,
                     "dt": solver.dt, "save_every": case.rollout.save_every, "steps": setup.schedule.steps_run,
                     "batch_size": setup.batch_size, "blowup_threshold": case.rollout.blowup_threshold,
                     "initial_conditions": case.rollout.initial_conditions, "closure_file": str(closure_path or ""),
                     # the file's data when it started from one: `hybridnde run` remakes a rollout whose file changed
                     "initial_conditions_sha256": "" if case.rollout.initial_conditions == "draw"
                     else setup.identity["initial_conditions_checksum"]},
        compression_level=case.output.compression_level, time_chunk=case.output.time_chunk, resume=resume,
        record=setup.checkpoint.get(RECORD_KEY) if resume else None)


def finished_output(out: Path, case: CaseConfig, setup: RolloutSetup) -> RolloutSummary | None:
    """Rank 0, ``--resume`` with no checkpoint: ``out`` itself when it is this rollout, finished (the
    configuration, closure, initial-conditions file and batch size it records are this run's), as a
    summary of what it records; else ``None`` (then the rollout starts from the beginning)."""
    if setup.checkpoint is not None or not out.is_file():
        return None
    import netCDF4

    try:
        with netCDF4.Dataset(out) as dataset:
            attrs = {name: dataset.getncattr(name) for name in dataset.ncattrs()}
            status = np.asarray(dataset.variables["status"][:])
    except (OSError, KeyError, RuntimeError) as error:  # netCDF4's HDF errors are RuntimeErrors
        log.info("no checkpoint for %s, and the file there cannot be read as a rollout (%s): starting from the "
                 "beginning", out, error)
        return None
    given = setup.identity["initial_conditions_checksum"]
    recorded = str(attrs.get("initial_conditions_sha256", ""))
    started_from = str(attrs.get("initial_conditions", ""))
    other_start = recorded and given != "draw" and not records_data(recorded, started_from, given)
    if (same_rollout_case(case, str(attrs.get("config_checksum")), attrs.get("case_toml")) is not None
            or str(attrs.get("closure_checksum")) != setup.closure_checksum
            or int(attrs.get("batch_size", -1)) != setup.batch_size or other_start):
        log.info("no checkpoint for %s, and the file there is another rollout's (case, closure, initial conditions "
                 "or batch size): starting from the beginning", out)
        return None
    log.warning("--resume: %s is this rollout, finished (same case, closure, initial conditions and batch size); "
                "nothing to resume (without --resume it is made again)", out)
    if not partial_path(out).exists():  # a checkpoint left by a stop between the final rename and its removal
        remove_restart_files(out)
    ranks = attrs.get("ranks", np.atleast_1d(attrs.get("ranks_per_run", 1))[-1])  # (the run that finished it)
    return RolloutSummary(path=out, members=int(status.size), ok=int((status == STATUS_FLAGS["ok"]).sum()),
                          blew_up=int((status == STATUS_FLAGS["blew_up"]).sum()),
                          member_steps=int(attrs.get("member_steps", 0)), seconds=float(attrs.get("wall_seconds", 0.0)),
                          ranks=int(ranks), batch_size=setup.batch_size, resumed=False)


def leave_only_what_resumes(out: Path, writer: TrajectoryStreamWriter | None, *, other_rank: bool,
                            under_mpi: bool = False) -> None:
    """After a failure: rank 0 (``writer``) closes its writer, and the partial file and chunk journal go
    unless a checkpoint can resume them. Under MPI the failing rank's abort then ends the job, killing
    rank 0 wherever it waits (in a collective, where no signal handler of it runs), so a failing
    ``other_rank`` removes them itself (beside ``out``, where rank 0 writes them), and rank 0's output
    lock file too. ``under_mpi``: a failure of the clean-up itself (a full disk fails the close too) is
    logged, not raised -- the abort after it must come, or the other ranks wait for ever."""
    if other_rank and under_mpi:
        remove_held_lock_file(out)
    try:
        if writer is not None:
            writer.close()
        if checkpoint_path(out).exists():
            return
        if writer is not None:
            writer.discard()
        elif other_rank:
            remove_restart_files(out)
    except Exception as failure:
        if not under_mpi:
            raise
        log.error("cleaning up %s after the failure failed too: %s: %s", out, type(failure).__name__, failure)


def chunk_layout(case: CaseConfig, setup: RolloutSetup) -> ChunkLayout:
    """How every rank encodes ``u``'s chunks: the layout rank 0's writer creates the file with."""
    solver = setup.solver
    return ChunkLayout.for_output(n_times=setup.schedule.n_saves, time_chunk=case.output.time_chunk,
                                  state_size=int(np.prod(solver.state_shape)),
                                  dtype=torch.empty(0, dtype=solver.dtype).numpy().dtype,
                                  compression_level=case.output.compression_level)


def member_status(first_bad_save: np.ndarray, schedule: SaveSchedule) -> tuple[np.ndarray, np.ndarray]:
    """``status (member,)`` int8 flags and ``blowup_time (member,)`` (NaN when none) from first bad saves."""
    blew_up = first_bad_save >= 0
    status = np.where(blew_up, STATUS_FLAGS["blew_up"], STATUS_FLAGS["ok"]).astype(np.int8)
    blowup_time = np.where(blew_up, schedule.times()[np.clip(first_bad_save, 0, None)], np.nan)
    return status, blowup_time
