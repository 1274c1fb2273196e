"""Which checkpoint a rollout may continue (``hybridnde rollout --resume``).

A checkpoint records the rollout's identity: the checksum of the case sections that decide its
values (a case differing only in how the batch size is chosen, ``batch_size = 0`` against the size it
resolves to, is the same: ``same_rollout_case``), the closure's checksum, the batch size, the number
of saves, the data of ``rollout.initial_conditions`` (``data.data_checksum``; older checkpoints: its bytes) and, on CPUs,
the torch threads per rank (threaded FFTs and reductions split the work by thread count, so the last
bits change with it). A resume with another identity is refused (``ResumeRefused``), naming what
changed; keys an older checkpoint lacks are not checked. A checkpoint of another device (type or
GPU model, ``written_elsewhere``) resumes with a warning, its states put in this device's working
form. A ``run_id`` carried by both the checkpoint and the partial file ties the two together.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from .config import CaseConfig
from .config.ensemble import ROLLOUT_RUN_ONLY_KEYS
from .checksums import records_data
from .io import ResumeRefused
from .netcdf_stream import checkpoint_path, partial_path, read_checkpoint, read_partial_attribute
from .rollout import SaveSchedule

__all__ = ["ROLLOUT_SECTIONS", "rollout_checksum", "same_rollout_case", "resume_identity", "threads_changed",
           "checked_checkpoint", "device_name", "written_elsewhere", "warn_if_written_elsewhere",
           "refuse_another_runs_partial", "JobRecord"]

log = logging.getLogger(__name__)

#: the case sections a rollout's values depend on (their checksum guards --resume)
ROLLOUT_SECTIONS = ("system", "time", "initial_condition", "compute", "output", "hybrid", "rollout")
#: identity keys compared as values; the thread keys have their own rule (``threads_changed``)
VALUE_KEYS = ("config_checksum", "closure_checksum", "batch_size", "n_saves", "initial_conditions_checksum")
#: keys that only choose the batch size; the size they give is an identity key of its own (``batch_size``)
BATCH_CHOICE_KEYS = ("batch_size", "memory_budget_mb")


def rollout_checksum(case: CaseConfig, *, legacy: bool = False) -> str:
    """SHA-256 of the sections that decide a rollout's values (run-only keys such as threads left out),
    with the keys that only choose the batch size at their defaults (the size they give is compared on
    its own): equal for ``batch_size = 0`` and the size it resolves to, and, for cases that leave them at
    their defaults, the checksum recorded before. ``legacy``: that earlier checksum, with those keys."""
    mapping = case.identity_mapping()
    chosen = {name: mapping[name] for name in ROLLOUT_SECTIONS}
    chosen["rollout"] = {k: v for k, v in chosen["rollout"].items() if k not in ROLLOUT_RUN_ONLY_KEYS}
    if not legacy:
        defaults = {field.name: field.default for field in dataclasses.fields(case.rollout)}
        chosen["rollout"].update({name: defaults[name] for name in BATCH_CHOICE_KEYS})
    return hashlib.sha256(tomli_w.dumps(chosen).encode()).hexdigest()


def same_rollout_case(case: CaseConfig, checksum: str, case_toml: str | None) -> list[str] | None:
    """``None`` when a rollout recorded with ``checksum`` and ``case_toml`` computes what ``case`` does: the
    same checksum, or differing only in how the batch size was chosen (``batch_size = 0`` against the
    explicit size it resolves to); else the keys that changed, ``section.key (old -> new)`` (``[]``: they
    cannot be named)."""
    if checksum in (rollout_checksum(case), rollout_checksum(case, legacy=True)):
        return None
    skip = [("rollout", name) for name in ROLLOUT_RUN_ONLY_KEYS]
    changed = case.changed_keys(case_toml, ROLLOUT_SECTIONS, skip=skip)
    if changed and not case.changed_keys(case_toml, ROLLOUT_SECTIONS,
                                         skip=skip + [("rollout", name) for name in BATCH_CHOICE_KEYS]):
        return None
    return changed


def resume_identity(case: CaseConfig, *, closure_checksum: str, batch_size: int, n_saves: int,
                    initial_conditions_checksum: str, device: torch.device) -> dict[str, Any]:
    """What a checkpoint records and the run resuming it must share (see the module)."""
    identity = {"config_checksum": rollout_checksum(case), "closure_checksum": closure_checksum,
                "batch_size": batch_size, "n_saves": n_saves,
                "initial_conditions_checksum": initial_conditions_checksum, "device_type": device.type,
                "device_name": device_name(device)}
    if device.type == "cpu":  # the effective count and the setting (0: torch's default)
        identity.update(threads=torch.get_num_threads(), threads_setting=case.rollout.threads)
    return identity


def threads_changed(checkpoint: dict, identity: dict, *, fix: str | None = None, per: str = " per rank") -> str | None:
    """Why the thread count refuses a resume, or ``None``: counts differ and at least one side chose it
    (with ``threads = 0`` on both, torch's default follows the machine and the launcher: not held to).
    ``fix``: the setting that gives the checkpoint's count (default: ``--set rollout.threads=N``);
    ``per``: what the count is of, in the words (a simulation: ``""``, it is one process)."""
    if "threads" not in checkpoint or "threads" not in identity or checkpoint["threads"] == identity["threads"]:
        return None
    if not checkpoint.get("threads_setting", 1) and not identity["threads_setting"]:
        log.warning("resuming on %d torch thread(s)%s, written on %d: the file may differ in its last bits from an "
                    "uninterrupted run (a thread setting of 0 leaves the count to torch)", identity["threads"], per,
                    checkpoint["threads"])
        return None
    written = checkpoint["threads"]
    return (f"it was written with {written} torch thread(s){per}, this run has {identity['threads']}, and the "
            f"results' last bits depend on it ({fix or f'--set rollout.threads={written}'})")


def _difference(checkpoint: dict, identity: dict, case: CaseConfig, out: Path) -> str | None:
    """What differs between the checkpoint and this run, in words; ``None`` when nothing does."""
    for key in VALUE_KEYS:
        if key not in checkpoint or checkpoint[key] == identity[key]:  # absent: an older checkpoint
            continue
        if key == "config_checksum":
            changed = same_rollout_case(case, checkpoint[key], read_partial_attribute(out, "case_toml"))
            if changed is None:
                continue
            changed = changed or case.changed_numerics()
            return f"the case differs in {', '.join(changed)}" if changed else "the case differs"
        if key == "initial_conditions_checksum":
            if records_data(checkpoint[key], case.rollout.initial_conditions, identity[key]):
                continue  # of the file's bytes, as checkpoints recorded before data checksums
            return f"rollout.initial_conditions, {case.rollout.initial_conditions}, has changed since"
        if key == "batch_size" and not case.rollout.batch_size:  # an estimate, which a new version may change
            return (f"it was written with batch size {checkpoint[key]}, and this run chose {identity[key]} "
                    f"automatically (--set rollout.batch_size={checkpoint[key]} resumes it)")
        return f"it was written with another {key.replace('_', ' ')} ({checkpoint[key]!r}, now {identity[key]!r})"
    warn_if_written_elsewhere(checkpoint, identity)
    return threads_changed(checkpoint, identity)


def warn_if_written_elsewhere(checkpoint: dict, identity: dict, *, what: str = "rollout") -> None:
    if written_elsewhere(checkpoint, identity):
        log.warning("resuming on %s a %s written on %s: its states go on from where they were, but the file "
                    "differs in its last bits from an uninterrupted run on either", identity["device_name"], what,
                    checkpoint.get("device_name", checkpoint["device_type"]))


def device_name(device: torch.device) -> str:
    """``"cpu"``, or the GPU's model (``"cuda: NVIDIA H100 80GB HBM3"``): what decides a solver's working
    form (``solvers.dense_path``)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def written_elsewhere(checkpoint: dict, identity: dict) -> bool:
    """Whether the checkpoint was written on another kind of device or GPU model (older checkpoints
    record neither: the same)."""
    if "device_name" in checkpoint:
        return checkpoint["device_name"] != identity["device_name"]
    return checkpoint.get("device_type", identity["device_type"]) != identity["device_type"]


def checked_checkpoint(case: CaseConfig, out: Path, identity: dict) -> dict | None:
    """Rank 0: the checkpoint of ``out`` to resume (``None``: there is none), or ``ResumeRefused``."""
    checkpoint = read_checkpoint(out)
    if checkpoint is not None and checkpoint.get("stage") == "simulate":
        raise ResumeRefused(f"{checkpoint_path(out)}: cannot resume: it is a simulation's checkpoint, not a "
                            "rollout's", "choose another --out, or rerun without --resume")
    if checkpoint is None:
        # (a checkpoint without its partial file was said by read_checkpoint; a finished file there is
        if not out.is_file() and not checkpoint_path(out).is_file():  # for finished_output to judge)
            log.info("no checkpoint for %s: starting from the beginning", out)
        return None
    what = _difference(checkpoint, identity, case, out)
    if what:
        raise ResumeRefused(f"{checkpoint_path(out)}: cannot resume: {what}",
                            "rerun with the same case, closure, input files and --set values, or without --resume")
    refuse_another_runs_partial(checkpoint, out)
    return checkpoint


def refuse_another_runs_partial(checkpoint: dict, out: Path, *, what: str = "rollout") -> None:
    """``ResumeRefused`` unless the checkpoint and the partial file beside it carry the same ``run_id``
    (or the checkpoint none: an earlier version's)."""
    if "run_id" in checkpoint and checkpoint["run_id"] != read_partial_attribute(out, "run_id", what=what):
        raise ResumeRefused(f"{checkpoint_path(out)}: cannot resume: it does not describe the partial file "
                            f"{partial_path(out)} (another run wrote into the same output)",
                            "start afresh without --resume")


@dataclasses.dataclass
class JobRecord:
    """Rank 0's record of a rollout job, as checkpoints carry it: per member the first bad save (-1:
    none), the finished batches (by first member), the states of running ones, and what the file says
    of the whole rollout -- the member-steps, seconds and runs before this one, and each run's ranks
    (``None``: unknown, a checkpoint of an earlier version)."""

    first_bad_save: np.ndarray
    done: set[int]
    in_flight: dict[int, dict]
    member_steps: int
    elapsed_seconds: float
    resumes: int
    ranks_per_run: list[int] | None

    @classmethod
    def restored(cls, checkpoint: dict | None, *, members: int, batches: list[tuple[int, int]], schedule: SaveSchedule,
                 ranks: int) -> "JobRecord":
        """A fresh record (``checkpoint`` ``None``), or the one a checkpoint resumed carries on, this
        run (on ``ranks`` ranks) counted."""
        if not checkpoint:
            return cls(np.full(members, -1, dtype=np.int64), set(), {}, 0, 0.0, 0, [ranks])
        done, in_flight = set(checkpoint["done"]), dict(checkpoint["in_flight"])
        member_steps = checkpoint.get("member_steps")  # the steps done, as the job counts them
        if member_steps is None:  # a checkpoint of an earlier version: every member's steps, dropped ones too
            sizes = dict(batches)
            member_steps = (sum((sizes[start] - start) * schedule.steps_run for start in done)
                            + sum((sizes[start] - start) * _steps_before_chunk(schedule, int(state["next_chunk"]))
                                  for start, state in in_flight.items()))
        earlier_ranks = checkpoint.get("ranks_per_run")  # absent in checkpoints of earlier versions: unknown
        first_bad_save = np.full(members, -1, dtype=np.int64)
        first_bad_save[:] = checkpoint["first_bad_save"].numpy()
        return cls(first_bad_save=first_bad_save, done=done,
                   in_flight=in_flight, member_steps=member_steps,
                   elapsed_seconds=float(checkpoint.get("elapsed_seconds", 0.0)),
                   resumes=int(checkpoint.get("resumes", 0)) + 1,
                   ranks_per_run=None if earlier_ranks is None else [*map(int, earlier_ranks), ranks])


def _steps_before_chunk(schedule: SaveSchedule, chunk: int) -> int:
    """Steps a member has taken when ``chunk`` chunks of ``schedule`` are done."""
    return (min(chunk * schedule.time_chunk, schedule.n_saves) - 1) * schedule.save_every if chunk else 0
