"""The training loss as a sum of named, weighted terms.

A term is any callable ``term(model, solver, batch, epoch) -> {name: Weighted(value, weight)}``
(``LossTerm``); the trainer minimises ``sum(weight * value)`` and logs every ``value`` as
``loss/<name>``. The first term is the trajectory loss (a swappable strategy: short rollouts through
the host solver's steps here; homotopy or multiple shooting elsewhere); the Jacobian regularizers are
further terms. Optional methods a term may have: ``state_dict``/``load_state_dict`` (random state
saved in checkpoints) and ``epoch_log() -> dict`` (extra per-epoch log fields, e.g. NFE).

**Time.** Every shipped host is autonomous and the package's closures ignore ``t``: windows are then
integrated from ``t = 0`` in one batch. Where time matters (``time_matters``: a host with
``autonomous = False``, e.g. a forced system, or a closure that sets ``autonomous = False``) the
rollout losses integrate each window from its own start time (windows grouped by start); the other
terms evaluate fields at ``t = 0`` and are refused for such set-ups (``Trainer`` checks
``uses_window_times``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from solvers import Solver
from solvers.integrators import odeint_adaptive

from ..data import window_start_times
from ..regularizers import ProbeSampler, directional_jacobian_penalty, finite_difference_directional_penalty

__all__ = ["Batch", "Weighted", "LossTerm", "RolloutLoss", "AdaptiveRolloutLoss", "DirectionalDerivativeTerm",
           "FiniteDifferenceTerm", "rollout_mse", "ramp", "time_matters"]

log = logging.getLogger(__name__)


def time_matters(solver: Solver) -> bool:
    """Whether the hybrid field depends on ``t``: a host whose class declares ``autonomous = False``
    (e.g. a forcing in ``known_rhs``) or a closure that does (``closure.autonomous = False``). A host
    class that declares nothing (``solvers.base``'s default) is taken as autonomous, with a warning
    once per class: training then integrates every window from ``t = 0``."""
    if getattr(solver.closure, "autonomous", True) is False:
        return True
    declared = next((vars(kind)["autonomous"] for kind in type(solver).__mro__
                     if "autonomous" in vars(kind) and kind.__module__ != "solvers.base"), None)
    if declared is None:
        if type(solver) not in _UNDECLARED_WARNED:
            _UNDECLARED_WARNED.add(type(solver))
            log.warning("%s does not declare `autonomous`: training integrates every window from t = 0, right only "
                        "if known_rhs ignores t; declare autonomous = True (it does) or False (it does not: each "
                        "window then starts at its own time)", type(solver).__name__)
        return False
    return not declared


_UNDECLARED_WARNED: set[type] = set()


@dataclass(frozen=True)
class Batch:
    """Training windows: ``windows: (batch, length, *state)``, samples ``sample_interval`` apart.

    ``starts: (batch, 2)`` are the windows' ``(member row, first time index)`` in the split's
    trajectories (for terms that look data up, e.g. an interpolant of the same member);
    ``start_time``: the time of the trajectories' first sample.
    """

    windows: Tensor
    sample_interval: float
    starts: Tensor
    start_time: float = 0.0

    def window_times(self) -> Tensor:
        """``(batch,)`` float64 on the CPU: the time of each window's first sample."""
        return window_start_times(self.starts, self.start_time, self.sample_interval)


class Weighted(NamedTuple):
    value: Tensor  # 0-dim, with gradients
    weight: float


@runtime_checkable
class LossTerm(Protocol):
    name: str

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]: ...


def ramp(weight: float, epoch: int, warmup_epochs: int) -> float:
    """``weight`` reached linearly over ``warmup_epochs`` epochs (epoch 0 gets ``weight / warmup``)."""
    if warmup_epochs <= 0:
        return weight
    return weight * min(1.0, (epoch + 1) / warmup_epochs)


def rollout_mse(prediction: Tensor, windows: Tensor) -> Tensor:
    """Mean squared error over batch, steps and state of ``prediction`` against ``windows[:, 1:]``;
    both ``(batch, 1 + steps, *state)`` (the shared initial state is left out)."""
    return (prediction[:, 1:] - windows[:, 1: prediction.shape[1]]).pow(2).mean()


class RolloutLoss:
    """Short-rollout loss: unroll ``steps`` data intervals of the host solver (``substeps`` solver
    steps each) from the first state of every window and compare with the data.

    Gradients flow through the solver's steps (``Solver.rollout``), closure in its hook. Where time
    matters (``time_matters``) each window starts at its own time (``start_times``).
    """

    name = "rollout"
    uses_window_times = True

    def __init__(self, *, steps: int, substeps: int = 1, weight: float = 1.0):
        self.steps, self.substeps, self.weight = int(steps), int(substeps), float(weight)

    def predict(self, solver: Solver, windows: Tensor, sample_interval: float, steps: int | None = None,
                start_times: Tensor | None = None) -> Tensor:
        """``(batch, 1 + steps, *state)`` from ``windows[:, 0]``; ``start_times: (batch,)`` (default:
        all 0) is used only where time matters."""
        steps = self.steps if steps is None else steps
        if start_times is None or not time_matters(solver):
            return self._rollout_from(solver, windows[:, 0], sample_interval, steps, 0.0)
        return by_start_time(lambda rows, t0: self._rollout_from(solver, windows[rows, 0], sample_interval, steps, t0),
                             start_times)

    def _rollout_from(self, solver: Solver, u0: Tensor, sample_interval: float, steps: int, t0: float) -> Tensor:
        return solver.rollout(u0, steps * self.substeps, save_every=self.substeps, dt=sample_interval / self.substeps,
                              t0=t0)

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        # (the start times only where they are used: on a GPU reading them waits for the device)
        start_times = batch.window_times() if time_matters(solver) else None
        prediction = self.predict(solver, batch.windows, batch.sample_interval, start_times=start_times)
        return {self.name: Weighted(rollout_mse(prediction, batch.windows), self.weight)}


def by_start_time(integrate: Callable[[Tensor, float], Tensor], start_times: Tensor) -> Tensor:
    """``integrate(rows, t0)`` for each group of rows sharing a start time, reassembled in row order
    (a solver steps one clock for its whole batch)."""
    values, inverse = torch.unique(start_times, return_inverse=True)
    parts, order = [], []
    for group, t0 in enumerate(values.tolist()):
        rows = torch.nonzero(inverse == group).flatten()
        parts.append(integrate(rows, t0))
        order.append(rows)
    position = torch.empty(len(start_times), dtype=torch.long)
    position[torch.cat(order)] = torch.arange(len(start_times))
    return torch.cat(parts)[position.to(parts[0].device)]


class AdaptiveRolloutLoss(RolloutLoss):
    """Short-rollout loss through a torchdiffeq adaptive solver (``odeint`` or ``odeint_adjoint``).

    Counts function evaluations: ``epoch_log()`` returns the epoch's ``nfe_forward`` and
    ``nfe_backward`` (summed over batches) and resets them.
    """

    def __init__(self, *, steps: int, method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9,
                 adjoint: bool = False, weight: float = 1.0):
        super().__init__(steps=steps, substeps=1, weight=weight)
        self.method, self.rtol, self.atol, self.adjoint = method, float(rtol), float(atol), bool(adjoint)
        self._counters: list[tuple[Any, int]] = []

    def _rollout_from(self, solver: Solver, u0: Tensor, sample_interval: float, steps: int, t0: float) -> Tensor:
        times = [t0 + i * sample_interval for i in range(steps + 1)]
        params = list(solver.closure.parameters()) if isinstance(solver.closure, nn.Module) else None
        prediction, counter = odeint_adaptive(solver.rhs, u0, times, method=self.method, rtol=self.rtol,
                                              atol=self.atol, adjoint=self.adjoint, adjoint_params=params)
        if torch.is_grad_enabled():
            self._counters.append((counter, counter.nfe))  # evaluations after this point are backward ones
        return prediction

    def epoch_log(self) -> dict[str, float]:
        forward = sum(at_return for _, at_return in self._counters)
        backward = sum(counter.nfe - at_return for counter, at_return in self._counters)
        self._counters = []
        return {"nfe_forward": float(forward), "nfe_backward": float(backward)}


class DirectionalDerivativeTerm:
    """Exact directional-derivative regularizer ``L_AD`` on the windows' first states.

    ``reference_jvp`` is the true system's exact ``jvp`` on the host grid, ``known_jvp`` the host's
    (``None`` for a plain neural ODE); probes come from a seeded ``ProbeSampler``.
    """

    name = "jvp"

    def __init__(self, *, weight: float, reference_jvp: Callable, known_jvp: Callable | None, probes: ProbeSampler,
                 warmup_epochs: int = 0, method: str = "auto"):
        self.weight, self.warmup_epochs = float(weight), int(warmup_epochs)
        self.reference_jvp, self.known_jvp, self.probes, self.method = reference_jvp, known_jvp, probes, method

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        u = batch.windows[:, 0]
        value = directional_jacobian_penalty(model, u, self.probes(u), reference_jvp=self.reference_jvp,
                                             known_jvp=self.known_jvp, method=self.method,
                                             closure_contribution=solver.closure_contribution)
        return {self.name: Weighted(value, ramp(self.weight, epoch, self.warmup_epochs))}

    def state_dict(self) -> dict[str, Tensor]:
        return self.probes.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.probes.load_state_dict(state)


class FiniteDifferenceTerm:
    """Finite-difference directional-derivative regularizer ``L_FD`` on each window's first three
    samples, through the hybrid right-hand side ``solver.rhs``."""

    name = "fd"

    def __init__(self, *, weight: float, stencil: str = "one_sided", warmup_epochs: int = 0):
        self.weight, self.stencil, self.warmup_epochs = float(weight), stencil, int(warmup_epochs)

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        value = finite_difference_directional_penalty(solver.rhs, batch.windows[:, :3], batch.sample_interval,
                                                      stencil=self.stencil)
        return {self.name: Weighted(value, ramp(self.weight, epoch, self.warmup_epochs))}
