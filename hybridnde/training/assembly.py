"""What ``[training]`` asks for, assembled from a case: the checks that need several sections, the
window lengths, the loss terms (trajectory loss, regularizer, Jacobian penalty), the reference
solver whose exact ``jvp`` the ``jvp`` regularizer matches, and the validation score.

``build.train_case`` puts these together with the data and the ``Trainer``; this is where further
trajectory losses and penalties are selected.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import torch
from torch import nn

from solvers import ExplicitSolver, Solver

from ..config import CaseConfig, ConfigError, KuramotoSivashinskyConfig
from ..config.case import resolved_penalty_field
from ..data import TrainingData, WindowSet
from ..regularizers import ProbeSampler
from ..regularizers.jacobian_norms import build_jacobian_penalty
from ..systems import build_host_solver, build_solver
from .homotopy import HomotopyLoss, HomotopySchedule
from .jacobian_terms import JacobianPenaltyTerm
from .multiple_shooting import MultipleShootingLoss
from .terms import (AdaptiveRolloutLoss, DirectionalDerivativeTerm, FiniteDifferenceTerm, LossTerm, RolloutLoss,
                    time_matters)

__all__ = ["RolloutValidation", "build_terms", "check_training_config", "homotopy_schedule", "jacobian_penalty_field",
           "reference_solver", "reference_system", "window_lengths"]

log = logging.getLogger(__name__)


def window_lengths(case: CaseConfig) -> tuple[int, int]:
    """Samples per training window (rollout steps + 1; 3 at least for the FD regularizer) and per
    validation window."""
    training = case.training
    train = training.rollout_steps + 1
    if training.regularizer == "fd":
        train = max(train, 3)
    validation = (training.validation_rollout_steps or training.rollout_steps) + 1
    return train, validation


def reference_system(case: CaseConfig):
    """``[system]`` on the host's grid: the equations ``reference_solver`` discretises."""
    system = case.system
    if isinstance(system, KuramotoSivashinskyConfig):
        system = dataclasses.replace(system, n_points=case.host_system.n_points)
    return system


def reference_solver(case: CaseConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Solver:
    """The true system on the host grid, whose exact ``jvp`` the ``jvp`` regularizer matches.

    For a sub-grid set-up this is the resolved equations discretised on the coarse grid, an
    approximation: the filtered dynamics has no closed-form Jacobian (prefer ``fd`` there).
    """
    system = reference_system(case)
    # only its vector field counts: stepped as the truth is (the host's stepping may not fit the
    # truth's scheme, e.g. etdrk4 for a finite-difference truth under a spectral host); a coarser
    # grid only relaxes an explicit scheme's stability limit
    return build_solver(system, case.time, device=device, dtype=dtype)


def check_training_config(case: CaseConfig) -> None:
    """Rules of ``[training]`` that need the other sections; ``ConfigError`` names the fix."""
    training = case.training
    if training.lr_schedule == "cosine" and training.epochs > 1 and training.min_learning_rate > training.learning_rate:
        # the cosine would climb from learning_rate to min_learning_rate: a schedule meant to decay
        raise ConfigError(f"training.min_learning_rate = {training.min_learning_rate:g} exceeds training.learning_rate "
                          f"= {training.learning_rate:g}: the cosine schedule would raise the rate over training; lower "
                          "min_learning_rate (e.g. to 0) or use lr_schedule = 'constant'")
    host = build_host_solver(case)  # ConfigError where it cannot step the sampling interval
    if training.integration != "step" and not isinstance(host, ExplicitSolver):
        raise ConfigError(f"training.integration = {training.integration!r} needs an explicit host (ODEs or "
                          "finite-difference KS); the spectral host trains through its ETDRK4 steps: use 'step'")
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
            try:
                if time_matters(solver):
                    prediction = self.loss.predict(solver, batch, sample_interval, steps=self.steps,
                                                   start_times=windows.start_times(sample_interval, index))
                else:  # (the signature losses had before start times existed)
                    prediction = self.loss.predict(solver, batch, sample_interval, steps=self.steps)
            except FloatingPointError:  # an adaptive solve whose step underflowed: the closure blows up
                return math.inf
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
        if case.hybrid.setup == "residual" and reference_system(case) == case.host_system:  # (a second-order
            # host is the kinematics alone, whatever its [system])
            log.warning("training.regularizer = 'jvp': the true system on the host's grid is the host itself (%s, "
                        "%s), so the target J_F v - J_host v is zero and the term only penalises the closure's "
                        "Jacobian; 'fd' matches the data's directional derivatives instead (a sub-grid closure)",
                        case.system.name, f"{case.host_system.n_points} points"
                        if isinstance(case.system, KuramotoSivashinskyConfig) else "the same parameters")
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
