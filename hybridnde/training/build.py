"""From a case and a truth file to a trained closure: ``train_case`` (what ``hybridnde train`` runs).

Everything is checked before the first epoch: the configuration (``ConfigError``) and the data
(``DataError``). The loss terms are assembled here from ``[training]``; this is where further
trajectory losses and penalties are selected.
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

from solvers import ExplicitSolver, Solver

from ..closure_file import save_closure
from ..config import CaseConfig, ConfigError, KuramotoSivashinskyConfig
from ..config.case import resolved_penalty_field
from ..data import TrainingData, WindowSet, load_training_data, normalization_statistics
from ..io import check_output_path, package_version, platform_description
from ..models import MLPClosure, build_model
from ..observation_noise import add_observation_noise
from ..output_lock import output_lock
from ..regularizers import ProbeSampler, sampling_error
from ..regularizers.jacobian_norms import build_jacobian_penalty
from ..simulate import SIMULATION_SECTIONS
from ..systems import build_host_solver, build_solver, resolve_device, resolve_dtype
from .checkpoint import checkpoint_path, log_path, partial_log_path
from .homotopy import HomotopyLoss, HomotopySchedule
from .jacobian_terms import JacobianPenaltyTerm
from .multiple_shooting import MultipleShootingLoss
from .terms import (AdaptiveRolloutLoss, DirectionalDerivativeTerm, FiniteDifferenceTerm, LossTerm, RolloutLoss,
                    time_matters)
from .trainer import Trainer, TrainingResult

__all__ = ["TRAINING_SECTIONS", "TRAINING_RUN_ONLY_KEYS", "training_checksum", "train_case", "build_terms", "reference_solver", "RolloutValidation",
           "window_lengths", "check_training_config", "homotopy_schedule"]

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


def window_lengths(case: CaseConfig) -> tuple[int, int]:
    """Samples per training window (rollout steps + 1; 3 at least for the FD regularizer) and per
    validation window."""
    training = case.training
    train = training.rollout_steps + 1
    if training.regularizer == "fd":
        train = max(train, 3)
    validation = (training.validation_rollout_steps or training.rollout_steps) + 1
    return train, validation


def reference_solver(case: CaseConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Solver:
    """The true system on the host grid, whose exact ``jvp`` the ``jvp`` regularizer matches.

    For a sub-grid set-up this is the resolved equations discretised on the coarse grid, an
    approximation: the filtered dynamics has no closed-form Jacobian (prefer ``fd`` there).
    """
    system = case.system
    if isinstance(system, KuramotoSivashinskyConfig):
        system = dataclasses.replace(system, n_points=case.host_system.n_points)
    # only its vector field counts: stepped as the truth is (the host's stepping may not fit the
    # truth's scheme, e.g. etdrk4 for a finite-difference truth under a spectral host); a coarser
    # grid only relaxes an explicit scheme's stability limit
    return build_solver(system, case.time, device=device, dtype=dtype)


def check_training_config(case: CaseConfig) -> None:
    """Rules of ``[training]`` that need the other sections; ``ConfigError`` names the fix."""
    training = case.training
    host = build_host_solver(case)  # ConfigError where it cannot step the sampling interval
    if training.integration != "step" and not isinstance(host, ExplicitSolver):
        raise ConfigError(f"training.integration = {training.integration!r} needs an explicit host (ODEs or "
                          "finite-difference KS); the spectral host trains through its ETDRK4 steps: use 'step'")
    if training.integration != "step" and case.hybrid.substeps != 1:
        raise ConfigError("hybrid.substeps applies to training.integration = 'step' only; set it to 1")
    if training.method != "vanilla" and training.integration == "step":
        raise ConfigError(f"training.method = {training.method!r} integrates with torchdiffeq; set "
                          "training.integration = 'odeint' (or 'odeint_adjoint')")
    if training.method == "homotopy" and not (training.homotopy_epochs_per_stage
                                              or training.epochs >= training.homotopy_stages):
        raise ConfigError(f"training.epochs = {training.epochs} is fewer than training.homotopy_stages = "
                          f"{training.homotopy_stages}; give at least one epoch per stage")
    per_stage = training.homotopy_epochs_per_stage
    last_start = homotopy_schedule(training).last_stage_start if training.method == "homotopy" and per_stage else 0
    if training.epochs <= last_start:
        # the last stage (lam = 0, plain training) would never start: the closure would be the coupled one
        raise ConfigError(f"training.epochs = {training.epochs} ends before the last homotopy stage (lam = 0) starts at "
                          f"epoch {last_start + 1} (training.homotopy_stages = "
                          f"{training.homotopy_stages} x training.homotopy_epochs_per_stage = {per_stage}); raise "
                          "training.epochs, lower homotopy_epochs_per_stage, or set it to 0 (epochs // stages)")
    if training.method == "multiple_shooting" and training.shooting_segments > training.rollout_steps:
        raise ConfigError(f"training.shooting_segments = {training.shooting_segments} exceeds the "
                          f"{training.rollout_steps} intervals of a window (training.rollout_steps); use fewer segments")
    if (training.jacobian_penalty == "condition" and case.hybrid.setup == "second_order"
            and jacobian_penalty_field(case) == "closure"):
        raise ConfigError("training.jacobian_penalty = 'condition' with jacobian_penalty_field = 'closure' in a "
                          "second_order host: the closure gives only the accelerations, so its Jacobian has zero "
                          "rows (the positions') and no finite condition number; use jacobian_penalty_field = "
                          "'rhs' (the whole field, dq/dt = v included) or another penalty")
    if training.jacobian_penalty == "condition" and training.jacobian_penalty_iterations == 1:
        raise ConfigError("training.jacobian_penalty_iterations = 1: the condition number's Lanczos process needs "
                          "at least 2 steps (0 = the default 20)")
    if training.regularizer == "jvp":
        for name, solver in (("the true system", reference_solver(case)), ("the host", host)):
            if not callable(getattr(solver, "jvp", None)):
                raise ConfigError(f"training.regularizer = 'jvp' needs the exact jvp of {name}, which "
                                  f"{type(solver).__name__} lacks; use 'fd'")


def homotopy_schedule(training) -> HomotopySchedule:
    """The ``lam`` schedule ``[training]`` describes (``homotopy_epochs_per_stage = 0``: epochs // stages;
    epochs beyond the stages stay at ``lam = 0``)."""
    per_stage = training.homotopy_epochs_per_stage or training.epochs // training.homotopy_stages
    return HomotopySchedule(n_stages=training.homotopy_stages, epochs_per_stage=per_stage,
                            ratio=training.homotopy_ratio)


class RolloutValidation:
    """Validation score: short-rollout MSE over all validation windows (``steps`` data intervals),
    computed in batches without gradients."""

    def __init__(self, loss: RolloutLoss, *, steps: int, batch_size: int):
        self.loss, self.steps, self.batch_size = loss, int(steps), int(batch_size)

    def __call__(self, model: nn.Module, solver: Solver, windows: WindowSet, sample_interval: float) -> float:
        total, count = 0.0, 0
        for first in range(0, len(windows), self.batch_size):
            index = torch.arange(first, min(first + self.batch_size, len(windows)))
            batch = windows.gather(index)
            if time_matters(solver):
                prediction = self.loss.predict(solver, batch, sample_interval, steps=self.steps,
                                               start_times=windows.start_times(sample_interval, index))
            else:  # (the signature losses had before start times existed)
                prediction = self.loss.predict(solver, batch, sample_interval, steps=self.steps)
            error = (prediction[:, 1:] - batch[:, 1:]).pow(2).mean()
            total += float(error) * len(index)
            count += len(index)
        return total / max(count, 1)


def build_terms(case: CaseConfig, host: Solver, *, device: torch.device, dtype: torch.dtype,
                data: TrainingData | None = None) -> list[LossTerm]:
    """The loss terms ``[training]`` asks for: the trajectory loss (``method``), then the regularizer and
    the Jacobian penalty. ``data`` (the training split's shape) is needed by multiple shooting."""
    training = case.training
    adaptive = dict(method=training.adaptive_method, rtol=case.time.rtol, atol=case.time.atol,
                    adjoint=training.integration == "odeint_adjoint")
    if training.method == "homotopy":
        trajectory: RolloutLoss = HomotopyLoss(steps=training.rollout_steps, schedule=homotopy_schedule(training),
                                               coupling=training.coupling, smoothing=training.smoothing, **adaptive)
    elif training.method == "multiple_shooting":
        if data is None:
            raise ValueError("multiple shooting needs the training data (build_terms(..., data=...))")
        trajectory = MultipleShootingLoss(steps=training.rollout_steps, n_segments=training.shooting_segments,
                                          continuity_weight=training.continuity_weight,
                                          trajectory_shape=tuple(data.train.shape), device=device, dtype=dtype,
                                          **adaptive)
    elif training.integration == "step":
        trajectory = RolloutLoss(steps=training.rollout_steps, substeps=case.hybrid.substeps)
    else:
        trajectory = AdaptiveRolloutLoss(steps=training.rollout_steps, method=training.adaptive_method,
                                         rtol=case.time.rtol, atol=case.time.atol,
                                         adjoint=training.integration == "odeint_adjoint")
    terms: list[LossTerm] = [trajectory]
    if training.regularizer == "jvp":
        reference = reference_solver(case, device=device, dtype=dtype)
        known = None if case.hybrid.setup == "neural_ode" else host.jvp
        probes = ProbeSampler(count=training.probes, distribution=training.probe_distribution,
                              normalize=training.normalize_probes, seed=training.seed + 1, device=device)
        terms.append(DirectionalDerivativeTerm(weight=training.regularizer_weight, reference_jvp=reference.jvp,
                                               known_jvp=known, probes=probes,
                                               warmup_epochs=training.regularizer_warmup_epochs))
    elif training.regularizer == "fd":
        terms.append(FiniteDifferenceTerm(weight=training.regularizer_weight, stencil=training.fd_stencil,
                                          warmup_epochs=training.regularizer_warmup_epochs))
    penalty = build_jacobian_penalty(training.jacobian_penalty, probes=training.probes,
                                     iterations=training.jacobian_penalty_iterations,
                                     generator=torch.Generator().manual_seed(training.seed + 2))
    if penalty is not None:
        terms.append(JacobianPenaltyTerm(penalty, weight=training.jacobian_penalty_weight,
                                         warmup_epochs=training.regularizer_warmup_epochs,
                                         field=jacobian_penalty_field(case)))
    return terms


def jacobian_penalty_field(case: CaseConfig) -> str:
    """``training.jacobian_penalty_field`` resolved: ``"auto"`` is the closure where the host runs known
    physics (a residual set-up: the penalty of ``F_known + C_theta`` would push ``C_theta`` to cancel
    ``F_known``'s stiff terms, e.g. KS's ``-u_xx - u_xxxx``, which the integrator handles itself), the
    whole right-hand side otherwise (``neural_ode``: the same field; ``second_order``: with ``dq/dt = v``)."""
    return resolved_penalty_field(case.hybrid.setup, case.training.jacobian_penalty_field)


def _fingerprint(case: CaseConfig, data: TrainingData, *, legacy: bool = False) -> str:
    """Of the configuration and data a checkpoint belongs to; ``legacy``: as checkpoints written before
    the run-only keys were left out recorded it (``training_checksum``)."""
    return hashlib.sha256(f"{training_checksum(case, legacy=legacy)}:{data.checksum}".encode()).hexdigest()


def train_case(case: CaseConfig, data_path: str | Path, out: str | Path, *, resume: bool = False,
               progress: bool | None = None) -> tuple[nn.Module, TrainingResult]:
    """Train the case's closure on a truth file and save it to ``out`` (``closure_file`` format),
    with ``<stem>.log.jsonl`` beside it and a ``<stem>.checkpoint.pt`` while training runs."""
    out = Path(out)
    if out.suffix != ".pt":
        raise ConfigError(f"--out {out}: give a .pt file name, e.g. runs/{case.case.name}/closure.pt")
    check_output_path(out)
    check_training_config(case)
    device, dtype = resolve_device(case.compute.device), resolve_dtype(case.compute.dtype)
    train_length, validation_length = window_lengths(case)
    data = load_training_data(data_path, case, window_length=max(train_length, validation_length),
                              device=device, dtype=dtype)
    data = add_observation_noise(data, level=case.training.observation_noise, scale=case.training.observation_noise_scale,
                                 seed=case.training.seed)
    train_windows = data.windows("train", train_length, stride=case.training.window_stride)
    validation_windows = data.windows("validation", validation_length)
    if len(train_windows) == 0 or len(validation_windows) == 0:
        raise ConfigError(f"{data_path}: no finite windows of {train_length} samples to train on; check the data")
    if case.training.regularizer == "fd":
        error = sampling_error(data.train, stencil=case.training.fd_stencil)
        if error > case.training.fd_warn_threshold:
            log.warning("fd regularizer: the data's estimated relative truncation error is %.3g (> %.3g); the "
                        "sampling interval %.4g is coarse against the dynamics for the %s stencil, so L_FD is "
                        "unreliable (sample more often, try fd_stencil = 'centred', or use jvp)", error,
                        case.training.fd_warn_threshold, data.sample_interval, case.training.fd_stencil)

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
                      checkpoint_file=checkpoint_path(out), fingerprint=_fingerprint(case, data), progress=progress,
                      identity={"case_toml": case.to_toml(), "data_checksum": data.checksum},
                      describe_change=lambda identity: _changes_since(identity, case, data),
                      accepted_fingerprints=(_fingerprint(case, data, legacy=True),))
    with output_lock(out):  # one run per closure file: checkpoints and logs are not shared
        started = wallclock.perf_counter()
        result = trainer.fit(train_windows, validation_windows, data.sample_interval, resume=resume)
        seconds = wallclock.perf_counter() - started
        _save_result(case, out, model, result, seconds, data=data,
                     windows=(len(train_windows), len(validation_windows)), device=device)
    log.info("trained %s: %d epochs, best validation loss %.4g at epoch %d (%.1f s)", out, result.epochs_run,
             result.best_val_loss, result.best_epoch, seconds)
    return model, result


def _changes_since(identity: Mapping[str, str], case: CaseConfig, data: TrainingData) -> list[str]:
    """What differs from a checkpoint's ``identity`` (its case TOML and data checksum), in words."""
    changed = case.changed_keys(identity.get("case_toml"), TRAINING_SECTIONS,
                                skip=[("training", key) for key in TRAINING_RUN_ONLY_KEYS])
    if identity.get("data_checksum") not in (None, data.checksum):
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
    current = {training_checksum(case), training_checksum(case, legacy=True)}  # as `hybridnde run` accepts
    if metadata.get("config_checksum") not in current or metadata.get("data", {}).get("sha256") != data.checksum:
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
    save_closure(out, model, case_toml=case.to_toml(), metadata=metadata)
    partial_log_path(out).replace(log_path(out))
    checkpoint = checkpoint_path(out)
    if checkpoint.is_file():
        checkpoint.unlink()  # the run is complete; the closure file holds its result
