"""From a case and a truth file to a trained closure: ``train_case`` (what ``hybridnde train`` runs).

Everything is checked before the first epoch: the configuration (``ConfigError``) and the data
(``DataError``). The loss terms come from ``assembly``; this module adds the data, the identity a
closure and its checkpoints carry (``training_checksum``), resuming, and saving the result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time as wallclock
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn


from ..closure_file import save_closure
from ..config import CaseConfig, ConfigError
from ..checksums import recorded_data_checksum
from ..data import TrainingData, load_training_data, normalization_statistics
from ..interrupts import interrupts_deferred
from ..io import check_not_folders, check_output_path, package_version, platform_description
from ..models import MLPClosure, build_model
from ..observation_noise import add_observation_noise
from ..output_lock import output_lock
from ..regularizers import sampling_error
from ..simulate import SIMULATION_SECTIONS
from ..systems import build_host_solver, resolve_device, resolve_dtype
from .assembly import (RolloutValidation, build_terms, check_training_config, homotopy_schedule,  # noqa: F401
                       jacobian_penalty_field, reference_solver, window_lengths)  # (re-exported: their home before)
from .checkpoint import checkpoint_path, log_path, partial_log_path
from .trainer import Trainer, TrainingResult

__all__ = ["TRAINING_RUN_ONLY_KEYS", "TRAINING_SECTIONS", "train_case", "training_checksum"]

log = logging.getLogger(__name__)

#: the sections a trained closure depends on (its ``config_checksum``)
TRAINING_SECTIONS = (*SIMULATION_SECTIONS, "model", "training", "hybrid")
#: ``[training]`` keys that change how training runs but not the closure it makes: a resume may change
#: them, and a closure made with other values is still up to date
TRAINING_RUN_ONLY_KEYS = ("checkpoint_every", "fd_warn_threshold")


def training_checksum(case: CaseConfig, *, legacy: bool = False) -> str:
    """``case.checksum(TRAINING_SECTIONS)`` with the run-only keys at their defaults: equal for cases that
    train the same closure (and, for cases that leave those keys at their defaults, the checksum
    closures and checkpoints recorded before the keys were left out). ``legacy``: that earlier
    checksum itself (the full table), which older closures and checkpoints of this case carry."""
    if legacy:
        return case.checksum(TRAINING_SECTIONS)
    defaults = {field.name: field.default for field in dataclasses.fields(case.training)
                if field.name in TRAINING_RUN_ONLY_KEYS}
    return case.replace(training=dataclasses.replace(case.training, **defaults)).checksum(TRAINING_SECTIONS)


def trained_for(case: CaseConfig, checksum: str | None, case_toml: str | None) -> bool:
    """Whether a closure that recorded ``checksum`` (its ``config_checksum``) and ``case_toml`` trains
    as ``case`` does: the checksum now or as recorded before the run-only keys were left out, or -- for a
    closure recorded with other run-only values than the case's now (checkpoints switched on) -- a stored
    case differing from ``case`` in those keys only."""
    if checksum is None:
        return False
    if checksum in (training_checksum(case), training_checksum(case, legacy=True)):
        return True
    if not case_toml or checksum != _recorded_training_checksum(case_toml):
        return False  # (the stored case must be the one its checksum was made from)
    return not case.changed_keys(case_toml, TRAINING_SECTIONS,
                                 skip=[("training", key) for key in TRAINING_RUN_ONLY_KEYS])


def _recorded_training_checksum(case_toml: str) -> str | None:
    """The full-table training checksum of a stored case (what closures recorded before the run-only
    keys were left out); ``None`` when it cannot be read."""
    from ..config.case import parse_case_text

    try:
        return training_checksum(parse_case_text(case_toml), legacy=True)
    except ConfigError:
        return None


def _fingerprint(case: CaseConfig, data_checksum: str, *, legacy: bool = False) -> str:
    """Of the configuration and data a checkpoint belongs to; ``legacy``: as checkpoints written before
    the run-only keys were left out recorded it (``training_checksum``)."""
    return hashlib.sha256(f"{training_checksum(case, legacy=legacy)}:{data_checksum}".encode()).hexdigest()


def _older_fingerprints(case: CaseConfig, data: TrainingData) -> tuple[str, ...]:
    """What checkpoints of this case and data written by earlier versions carry: before the run-only
    keys were left out, or of the data file's bytes rather than its data (``TrainingData.file_checksum``)."""
    checksums = [data.checksum] + ([data.file_checksum] if data.file_checksum else [])
    current = _fingerprint(case, data.checksum)
    return tuple(fingerprint for checksum in checksums for legacy in (False, True)
                 if (fingerprint := _fingerprint(case, checksum, legacy=legacy)) != current)


def train_case(case: CaseConfig, data_path: str | Path, out: str | Path, *, resume: bool = False,
               progress: bool | None = None, resume_hint: bool = True) -> tuple[nn.Module, TrainingResult]:
    """Train the case's closure on a truth file and save it to ``out`` (``closure_file`` format),
    with ``<stem>.log.jsonl`` beside it and a ``<stem>.checkpoint.pt`` while training runs.
    ``resume_hint``: say that ``--resume`` continues a checkpoint this run replaces (``hybridnde run``
    has no such flag: it resumes what it can by itself)."""
    out = Path(out)
    if out.suffix != ".pt":
        raise ConfigError(f"--out {out}: give a .pt file name, e.g. runs/{case.case.name}/closure.pt")
    check_output_path(out)
    check_not_folders([log_path(out), partial_log_path(out), checkpoint_path(out)], out)
    check_training_config(case)
    device, dtype = resolve_device(case.compute.device), resolve_dtype(case.compute.dtype)
    train_length, validation_length = window_lengths(case)
    data = load_training_data(data_path, case, window_length=max(train_length, validation_length),
                              device=device, dtype=dtype)
    data = add_observation_noise(data, level=case.training.observation_noise, scale=case.training.observation_noise_scale,
                                 seed=case.training.seed)
    train_windows = data.windows("train", train_length, stride=case.training.window_stride)
    validation_windows = data.windows("validation", validation_length)
    if len(train_windows) == 0:
        raise ConfigError(f"{data_path}: no finite windows of {train_length} samples to train on; check the data")
    if len(validation_windows) == 0:  # (the training members may be fine: said of the right split)
        raise ConfigError(f"{data_path}: the validation members {list(data.validation_members)} hold no finite window "
                          f"of {validation_length} samples (they blow up or end first); lower "
                          "training.validation_rollout_steps, or change training.validation_fraction")
    if case.training.regularizer == "fd":
        error = sampling_error(data.train, stencil=case.training.fd_stencil)
        if error > case.training.fd_warn_threshold:
            log.warning("fd regularizer: the data's estimated relative truncation error is %.3g (> %.3g); the "
                        "sampling interval %.4g is coarse against the dynamics for the %s stencil, so L_FD is "
                        "unreliable (sample more often, try fd_stencil = 'centred', or use jvp)", error,
                        case.training.fd_warn_threshold, data.sample_interval, case.training.fd_stencil)

    if not resume and checkpoint_path(out).is_file():
        log.warning("%s: an interrupted run's checkpoint is there; this run starts afresh%s and removes it",
                    checkpoint_path(out), " (no --resume)" if resume_hint else "")
    if resume and out.is_file() and not checkpoint_path(out).is_file():
        finished = _finished_closure(case, out, data, device=device, dtype=dtype)
        if finished is not None:  # the same command line again after it finished: nothing to resume
            return finished

    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's stream
        torch.manual_seed(case.training.seed)
        known = build_host_solver(case, device=device, dtype=dtype)
        model = build_model(case.model, state_shape=known.state_shape, device=device, dtype=dtype)
    if case.model.normalize:
        stats = normalization_statistics(data.train, known.known_rhs, data.sample_interval,
                                         per_component=isinstance(model, MLPClosure))
        model.set_normalization(**stats)
    host = build_host_solver(case, closure=model, device=device, dtype=dtype)
    terms = build_terms(case, host, device=device, dtype=dtype, data=data)
    validation_steps = case.training.validation_rollout_steps or case.training.rollout_steps
    validation = RolloutValidation(terms[0], steps=validation_steps, batch_size=max(case.training.batch_size, 1024))
    trainer = Trainer(model, host, terms, validation, case.training, log_file=partial_log_path(out),
                      checkpoint_file=checkpoint_path(out), fingerprint=_fingerprint(case, data.checksum),
                      progress=progress,
                      identity={"case_toml": case.to_toml(), "data_checksum": data.checksum},
                      describe_change=lambda identity: _changes_since(identity, case, data),
                      accepted_fingerprints=_older_fingerprints(case, data) if resume else ())
    with output_lock(out):  # one run per closure file: checkpoints and logs are not shared
        if not resume:  # (kept until this run's first checkpoint, a stop before it advised --resume of another run)
            checkpoint_path(out).unlink(missing_ok=True)
        started = wallclock.perf_counter()
        try:
            result = trainer.fit(train_windows, validation_windows, data.sample_interval, resume=resume)
        except Exception:  # a failed run's partial log goes unless a checkpoint can resume it (an interrupted
            if not checkpoint_path(out).is_file():  # one keeps the epochs done: tests/test_training.py)
                partial_log_path(out).unlink(missing_ok=True)
            raise
        # a resumed run adds the earlier runs' epochs (their set-up, seconds each, is not counted)
        seconds = wallclock.perf_counter() - started + sum(record.get("seconds", 0.0)
                                                           for record in result.history[:result.resumed_from])
        _save_result(case, out, model, result, seconds, data=data,
                     windows=(len(train_windows), len(validation_windows)), device=device)
    log.info("trained %s: %d epochs, best validation loss %.4g at epoch %d (%.1f s)", out, result.epochs_run,
             result.best_val_loss, result.best_epoch, seconds)
    return model, result


def _changes_since(identity: Mapping[str, str], case: CaseConfig, data: TrainingData) -> list[str]:
    """What differs from a checkpoint's ``identity`` (its case TOML and data checksum), in words."""
    changed = case.changed_keys(identity.get("case_toml"), TRAINING_SECTIONS,
                                skip=[("training", key) for key in TRAINING_RUN_ONLY_KEYS]) or case.changed_numerics()
    if identity.get("data_checksum") is not None and not data.made_from(identity["data_checksum"]):
        changed.insert(0, f"the training data (SHA-256 {identity['data_checksum'][:12]}..., now "
                          f"{data.checksum[:12]}...)")
    return changed


def _finished_closure(case: CaseConfig, out: Path, data: TrainingData, *, device: torch.device,
                      dtype: torch.dtype) -> tuple[nn.Module, TrainingResult] | None:
    """``out`` when it is this case's closure trained on ``data`` (the checksums ``hybridnde run``
    reuses a closure by), with the result its metadata and log record; else ``None`` (with the reason
    logged: ``--resume`` then trains afresh, as without a checkpoint)."""
    from ..closure_file import load_closure
    from ..io import DataError

    try:
        model, payload = load_closure(out, device=device, dtype=dtype)
    except DataError as error:
        log.warning("--resume: no checkpoint, and %s; training afresh", error)
        return None
    metadata = payload.get("metadata", {})
    trained_on = recorded_data_checksum(metadata.get("data", {}))  # (as `hybridnde run` accepts it)
    if not trained_for(case, metadata.get("config_checksum"), payload.get("case_toml")) or \
            not data.made_from(trained_on):
        log.warning("--resume: no checkpoint beside %s, whose closure is from another case or data; training "
                    "afresh (it is replaced when this run ends)", out)
        return None
    history = []
    if log_path(out).is_file():
        history = [json.loads(line) for line in log_path(out).read_text().splitlines() if line.strip()]
    log.warning("--resume: %s is this case's finished closure, trained on this data; nothing to resume (without "
                "--resume it is trained again)", out)
    return model, TrainingResult(history=history, epochs_run=int(metadata["epochs_run"]),
                                 best_epoch=int(metadata["best_epoch"]), best_val_loss=float(metadata["best_val_loss"]),
                                 stopped_early=bool(metadata["stopped_early"]), resumed_from=int(metadata["epochs_run"]),
                                 final=dict(metadata.get("final", {})))


def _save_result(case: CaseConfig, out: Path, model: nn.Module, result, seconds: float, *, data: TrainingData,
                 windows: tuple[int, int], device: torch.device) -> None:
    """The closure file, then its log under its final name; the checkpoint goes."""
    train_windows, validation_windows = windows
    metadata: dict[str, Any] = {
        "stage": "train", "config_checksum": training_checksum(case), "training": dataclasses.asdict(case.training),
        "data": data.summary(), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss, "stopped_early": result.stopped_early, "final": result.final,
        "train_windows": train_windows, "validation_windows": validation_windows, "wall_seconds": seconds,
        "device": str(device),
        # what computed the weights: their last bits depend on the torch build, device and thread count
        "software": f"hybridnde {package_version()}", "platform": platform_description(device)}
    with interrupts_deferred():  # the closure, its log and no checkpoint; or the checkpoint and partial log
        save_closure(out, model, case_toml=case.to_toml(), metadata=metadata)
        partial_log_path(out).replace(log_path(out))
        checkpoint_path(out).unlink(missing_ok=True)  # the run is complete; the closure file holds its result
