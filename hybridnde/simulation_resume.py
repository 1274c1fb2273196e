"""Which checkpoint a simulation may continue (``hybridnde simulate --resume``), and when a finished
truth file is already the one asked for.

A checkpoint records the simulation's identity: the checksum of the case sections a truth depends on
(``SIMULATION_SECTIONS``), the data of ``initial_condition.file`` (``""`` for drawn states), the device
and, on CPUs, the torch threads (their count changes the last bits: ``rollout_resume``). A resume with
another identity is refused (``ResumeRefused``) naming what changed; the ``run_id`` the checkpoint
shares with the partial file ties the two together, as in a rollout.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .config import CaseConfig
from .io import DataError, ResumeRefused
from .netcdf_stream import checkpoint_path, read_checkpoint, read_partial_attribute
from .rollout_resume import device_name, refuse_another_runs_partial, threads_changed, warn_if_written_elsewhere
from .simulate import SIMULATION_SECTIONS, initial_conditions_checksum

__all__ = ["simulation_identity", "checked_simulation_checkpoint", "finished_simulation"]

log = logging.getLogger("hybridnde.simulation_job")  # the job's messages

#: what a refusal asks for
SAME_RUN = "rerun with the same case, initial-conditions file, --set values and --threads, or without --resume"


def simulation_identity(case: CaseConfig, device: torch.device, threads_setting: int, *,
                        resuming: bool) -> dict[str, Any]:
    """What a checkpoint records and the run resuming it must share (see the module); ``resuming``: a
    checkpoint is there to resume (an unreadable initial-conditions file is then said to be needed for
    the check, not for its states)."""
    try:
        initial = initial_conditions_checksum(case)
    except DataError as error:
        if not resuming:
            raise
        raise DataError(f"{error.problem}: a resumed simulation checks that initial_condition.file still holds the "
                        "states it started from", "restore the file, or point initial_condition.file at it") from None
    identity = {"stage": "simulate", "config_checksum": case.checksum(SIMULATION_SECTIONS),
                "initial_conditions": initial, "device_type": device.type, "device_name": device_name(device)}
    if device.type == "cpu":
        identity.update(threads=torch.get_num_threads(), threads_setting=threads_setting)
    return identity


def _needs_partial(checkpoint: dict[str, Any]) -> bool:
    """One taken after the spin-up: the saves it goes on from are in the partial file (one in the spin-up
    starts a new one)."""
    return "spinup_step" not in checkpoint


def checked_simulation_checkpoint(case: CaseConfig, out: Path, identity: dict[str, Any]) -> dict | None:
    """The checkpoint of ``out`` to resume, ``None`` (there is none), or ``ResumeRefused`` naming what changed.

    A checkpoint taken in the spin-up needs nothing of the partial file (no save is written yet): the
    resume starts a new one, so one that cannot be read, e.g. after a SIGKILL while HDF5 wrote to it,
    or is missing, is no reason to refuse."""
    checkpoint = read_checkpoint(out, what="simulation", needs_partial=_needs_partial)
    if checkpoint is None:
        log.info("no checkpoint for %s: starting from the beginning%s", out,
                 " (the file there is another simulation's: it is made again)" if out.is_file() else "")
        return None
    where = f"{checkpoint_path(out)}: cannot resume"
    if checkpoint.get("stage") != "simulate":
        raise ResumeRefused(f"{where}: it is a rollout's checkpoint, not a simulation's",
                            "choose another --out, or rerun without --resume")
    if checkpoint["config_checksum"] != identity["config_checksum"]:
        try:
            started_with = read_partial_attribute(out, "case_toml", what="simulation")
        except ResumeRefused:
            started_with = None
        changed = case.changed_keys(started_with, SIMULATION_SECTIONS) or case.changed_numerics()
        raise ResumeRefused(f"{where}: the case differs" + (f" in {', '.join(changed)}" if changed else ""), SAME_RUN)
    if checkpoint["initial_conditions"] != identity["initial_conditions"]:
        raise ResumeRefused(f"{where}: initial_condition.file, {case.initial_condition.file}, has changed since",
                            SAME_RUN)
    threads = threads_changed(checkpoint, identity, fix=f"--threads {checkpoint.get('threads')}", per="")
    if threads:
        raise ResumeRefused(f"{where}: {threads}", SAME_RUN)
    if _needs_partial(checkpoint):
        refuse_another_runs_partial(checkpoint, out, what="simulation")
    warn_if_written_elsewhere(checkpoint, identity, what="simulation")
    return checkpoint


def finished_simulation(out: Path, case: CaseConfig) -> bool:
    """Whether ``out`` is this case's finished truth file, from the same initial-conditions data
    (``--resume`` then has nothing to do)."""
    import netCDF4

    if not out.is_file():
        return False
    try:
        with netCDF4.Dataset(out) as dataset:
            attrs = {name: dataset.getncattr(name) for name in ("stage", "config_checksum", "initial_conditions_sha256")
                     if name in dataset.ncattrs()}
    except OSError:
        return False
    if attrs.get("stage") != "simulate" or attrs.get("config_checksum") != case.checksum(SIMULATION_SECTIONS):
        return False
    try:
        return attrs.get("initial_conditions_sha256") == initial_conditions_checksum(case)
    except DataError:
        return False
