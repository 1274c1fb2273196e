"""Homotopy (synchronisation) training of neural ODEs (Ko, Koh, Park & Jhe 2023, "Homotopy-based
training of NeuralODEs for accurate dynamics discovery").

During training the model is coupled to a smooth interpolant ``u_data(t)`` of the observations,

    du/dt = F_theta(t, u) - lam * K (u - u_data(t)),

and the homotopy parameter ``lam`` is lowered from 1 to 0 in stages, so that early epochs see the
relaxed, nearly convex loss landscape of a synchronised model and the last stage is plain training.

**Choosing K.** Along the data, the error ``xi = u - u_data`` obeys, to first order,
``xi' = (J_F(u_data(t)) - lam K) xi + (F(u_data) - u_data')``. For a scalar ``K`` the homogeneous
part's fundamental matrix is ``exp(-lam K t)`` times that of ``J_F``, so the conditional Lyapunov
exponent of the coupled system is exactly ``lambda_1 - lam K``, with ``lambda_1`` the largest
(finite-time) Lyapunov exponent of the data's dynamics: model and data synchronise when
``K > lambda_1`` (Pecora & Carroll 1990; Ko et al.'s Theorem 1). A stronger, worst-case sufficient
condition is ``K > max_t mu_2(J_F)``, the largest local expansion rate (logarithmic 2-norm, the
largest eigenvalue of ``(J + J^T)/2``), which makes every error contract at every instant
(Lohmiller & Slotine 1998). ``expansion_rates`` estimates both along the data for a given vector
field (the known physics of a case, or a model). Ko et al. use ``K = 6`` for all their cases. On the
noise-free training windows of our cases (true vector field, ``steps=1000``) the finite-time
``lambda_1`` is 0.24-0.27 (Lotka-Volterra), -0.26 to -0.19 (Lorenz-63, ``t < 3.1`` is still the
transient onto the attractor) and 0.17 (double pendulum) -- it moves with the window and the
spline's smoothing (a rerun with an interpolating spline gave the second values) -- far below 6,
while the worst-case rates are 7.1, 13.7 and 71:
synchronisation in practice needs only the average condition. The tracking error left at ``lam = 1``
is about ``|F_theta - u_data'| / K``.

**Schedule.** ``n_stages`` stages of ``epochs_per_stage`` epochs; the decrement after stage ``i`` is
proportional to ``ratio^i`` (``ratio = 0.6``), normalised so the ``n_stages - 1`` decrements sum to 1,
and the last stage is set to exactly ``lam = 0`` (Ko et al.'s power-law step-wise schedule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from solvers import Solver
from solvers.integrators import odeint_adaptive

from ..interpolation import CubicSpline, smoothing_cubic_spline
from .terms import AdaptiveRolloutLoss, Batch, Weighted, rollout_mse

__all__ = ["homotopy_values", "HomotopySchedule", "CoupledVectorField", "ExpansionRates", "expansion_rates",
           "HomotopyLoss"]

VectorField = Callable[[Tensor, Tensor], Tensor]


def homotopy_values(n_stages: int, ratio: float = 0.6) -> tuple[float, ...]:
    """``lam`` in each of ``n_stages`` stages: ``1.0`` first, exactly ``0.0`` last.

    Decrement ``i`` (between stage ``i`` and ``i + 1``) is ``ratio^i / sum_j ratio^j``,
    ``j = 0 .. n_stages - 2``. ``n_stages = 1`` is plain training (``(0.0,)``).
    """
    if n_stages < 1:
        raise ValueError(f"n_stages={n_stages} must be at least 1")
    if not ratio > 0:
        raise ValueError(f"ratio={ratio} must be positive")
    if n_stages == 1:
        return (0.0,)
    last = n_stages - 2
    # the same proportions scaled by the largest term, so that no power overflows (ratio = 1e200 raised
    # OverflowError) and tiny ones underflow harmlessly to a zero decrement
    decrements = [ratio**i if ratio <= 1 else (1.0 / ratio) ** (last - i) for i in range(last + 1)]
    total = sum(decrements)
    values = [1.0]
    for decrement in decrements:
        values.append(max(0.0, values[-1] - decrement / total))  # never below 0 by rounding
    values[-1] = 0.0  # exactly: rounding would leave a ~1e-16 coupling in the "plain" stage
    return tuple(values)


@dataclass(frozen=True)
class HomotopySchedule:
    """``lam`` as a function of the epoch (0-based): stage ``epoch // epochs_per_stage``."""

    n_stages: int = 5
    epochs_per_stage: int = 100
    ratio: float = 0.6

    def __post_init__(self):
        if self.epochs_per_stage < 1:
            raise ValueError(f"epochs_per_stage={self.epochs_per_stage} must be at least 1")
        homotopy_values(self.n_stages, self.ratio)  # validates

    @property
    def values(self) -> tuple[float, ...]:
        return homotopy_values(self.n_stages, self.ratio)

    @property
    def total_epochs(self) -> int:
        return self.n_stages * self.epochs_per_stage

    @property
    def last_stage_start(self) -> int:
        """The epoch (0-based) the last stage, ``lam = 0``, starts at: training must run past it."""
        return (self.n_stages - 1) * self.epochs_per_stage

    def stage(self, epoch: int) -> int:
        """Stage of ``epoch``; epochs past the end stay in the last (``lam = 0``) stage."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch} must be non-negative")
        return min(epoch // self.epochs_per_stage, self.n_stages - 1)

    def __call__(self, epoch: int) -> float:
        return self.values[self.stage(epoch)]


class CoupledVectorField(nn.Module):
    """``F(t, u) - lam * K * (u - u_data(t))``, the model synchronised to the data.

    Args:
        vector_field: the model's right-hand side ``F(t, u)``, ``u: (batch, n)`` (a closure, or a
            host solver's ``rhs`` with the closure plugged in).
        target: spline ``u_data(t) -> (batch, n)`` on the solver's device and dtype.
        coupling: ``K``, a scalar or a diagonal ``(n,)`` of non-negative rates (1/time).
        lam: homotopy parameter in ``[0, 1]``; change it between epochs (``coupled.lam = ...``).
    A ``torch.nn.Module`` so that adjoint solvers find the parameters of ``vector_field``.
    """

    def __init__(self, vector_field: VectorField, target: CubicSpline, coupling: float | Tensor, *, lam: float = 1.0):
        super().__init__()
        self.vector_field = vector_field
        self.target = target
        coupling = torch.as_tensor(coupling, dtype=target.dtype, device=target.device)
        if coupling.ndim > 1 or bool((coupling < 0).any()):
            raise ValueError("coupling K must be a non-negative scalar or a diagonal (n,) of non-negative rates")
        self.register_buffer("coupling", coupling)
        self.lam = lam

    @property
    def lam(self) -> float:
        return self._lam

    @lam.setter
    def lam(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"lam={value} must lie in [0, 1]")
        self._lam = float(value)

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        du_dt = self.vector_field(t, u)
        if self._lam == 0.0:
            return du_dt  # plain training: no spline evaluations
        return du_dt - self._lam * self.coupling * (u - self.target(t))


@dataclass(frozen=True)
class ExpansionRates:
    """How strongly the dynamics along the data separate nearby states (1/time).

    ``lyapunov_exponent``: largest finite-time Lyapunov exponent along ``u_data(t)`` (coupling above it
    synchronises); ``max_expansion_rate``: largest logarithmic norm ``mu_2(J)`` met (coupling above it
    contracts every error at every instant).
    """

    lyapunov_exponent: float
    max_expansion_rate: float


def expansion_rates(vector_field: VectorField, target: CubicSpline, t_start: float, t_end: float, *,
                    steps: int = 2000) -> ExpansionRates:
    """Estimate the rates that decide how large the coupling ``K`` must be (see the module docstring).

    The tangent equation ``d delta/dt = J_F(u_data(t)) delta`` is integrated with RK4 along the spline
    from ``t_start`` to ``t_end`` in ``steps`` steps (renormalised every step; Benettin et al. 1980),
    one tangent per trajectory in the batch; ``mu_2`` is evaluated at every step start. Returns the
    maxima over the batch.
    """
    from ..regularizers.jacobian_norms import dense_jacobian, jacobian_vector_product

    if not t_end > t_start or steps < 1:
        raise ValueError(f"need t_end > t_start and steps >= 1, got {t_start}, {t_end}, {steps}")
    dt = (t_end - t_start) / steps
    dtype, device = target.dtype, target.device
    u0 = target(torch.tensor(t_start, dtype=dtype, device=device))
    if u0.ndim == 1:
        u0 = u0[None]
    delta = torch.randn(u0.shape, generator=torch.Generator().manual_seed(0), dtype=dtype).to(device)
    delta = delta / delta.reshape(len(delta), -1).norm(dim=-1).reshape(-1, *(1,) * (delta.ndim - 1))
    log_growth = torch.zeros(len(u0), dtype=dtype, device=device)
    worst = -float("inf")

    def tangent(t: float, d: Tensor) -> Tensor:
        time = torch.tensor(t, dtype=dtype, device=device)
        u = target(time).reshape(d.shape)
        return jacobian_vector_product(vector_field, time, u, d)[1]

    with torch.no_grad():
        for k in range(steps):
            t = t_start + k * dt
            time = torch.tensor(t, dtype=dtype, device=device)
            jacobian = dense_jacobian(vector_field, time, target(time).reshape(delta.shape))
            symmetric = 0.5 * (jacobian + jacobian.transpose(-1, -2))
            worst = max(worst, float(torch.linalg.eigvalsh(symmetric)[..., -1].max()))
            k1 = tangent(t, delta)
            k2 = tangent(t + dt / 2, delta + dt / 2 * k1)
            k3 = tangent(t + dt / 2, delta + dt / 2 * k2)
            k4 = tangent(t + dt, delta + dt * k3)
            delta = delta + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            norm = delta.reshape(len(delta), -1).norm(dim=-1)
            log_growth += torch.log(norm)
            delta = delta / norm.reshape(-1, *(1,) * (delta.ndim - 1))
    return ExpansionRates(lyapunov_exponent=float((log_growth / (t_end - t_start)).max()), max_expansion_rate=worst)


class HomotopyLoss(AdaptiveRolloutLoss):
    """Trajectory loss of homotopy training, a ``LossTerm`` for the ``Trainer``.

    Each batch window ``(batch, steps + 1, n)`` is smoothed by a cubic smoothing spline (``smoothing``
    is scipy's ``lam``; the spline of a window is cached by its ``(member, start)``), the host's
    right-hand side ``solver.rhs`` (closure in its hook) is coupled to it with strength ``coupling``
    times the schedule's ``lam`` for the epoch, and the coupled trajectory from the window's first
    sample is compared with the data (adaptive torchdiffeq solve, NFE counted as in
    ``AdaptiveRolloutLoss``). ``predict`` -- what validation and rollouts use -- is the uncoupled model.
    ``epoch_log`` adds ``lam`` to the NFE counts.
    """

    name = "homotopy"
    uses_window_times = False  # the coupled solve runs on the window's own clock from 0

    def __init__(self, *, steps: int, schedule: HomotopySchedule, coupling: float, smoothing: float = 0.0,
                 method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9, adjoint: bool = False,
                 weight: float = 1.0):
        super().__init__(steps=steps, method=method, rtol=rtol, atol=atol, adjoint=adjoint, weight=weight)
        if coupling < 0 or smoothing < 0:
            raise ValueError(f"coupling={coupling} and smoothing={smoothing} must be zero or positive")
        self.schedule, self.coupling, self.smoothing = schedule, float(coupling), float(smoothing)
        #: epochs before early stopping may end training (the Trainer reads it): one at lam = 0 at least,
        #: so that training always reaches the uncoupled stage. The closure kept is still the epoch of
        #: lowest (uncoupled) validation loss, which may be a coupled one (docs/training-methods.md)
        self.earliest_stop = schedule.last_stage_start + 1
        self._splines: dict[tuple, tuple[Tensor, Tensor]] = {}  # (row, start) -> (values, S'') (time first)
        self._spline_layout: tuple | None = None
        self._knots: Tensor | None = None
        self._lam = schedule(0)

    def target(self, batch: Batch) -> CubicSpline:
        """``u_data(t)`` of the batch's windows: ``t`` in ``[0, steps * sample_interval]`` -> ``(batch, *state)``.

        Cached per window (its ``(member row, start)``): shuffled batches meet each window once an
        epoch, and a batch's spline is its windows' side by side (the smoothing is per feature). A
        cache keyed by whole batches missed every time and grew every step.
        """
        windows = batch.windows[:, : self.steps + 1]
        keys = [tuple(row) for row in batch.starts.reshape(len(windows), -1).tolist()]
        layout = (windows.shape[1], batch.sample_interval, windows.dtype, windows.device)
        if layout != self._spline_layout:  # another window length or sampling: another set of splines
            self._splines.clear()
            self._spline_layout = layout
        missing = [i for i, key in enumerate(keys) if key not in self._splines]
        if missing:
            times = torch.arange(windows.shape[1], dtype=torch.float64) * batch.sample_interval
            fresh = smoothing_cubic_spline(times, windows[missing].movedim(1, 0).detach(), self.smoothing,
                                           device=windows.device, dtype=windows.dtype)
            self._knots = fresh.knots
            for column, i in enumerate(missing):
                self._splines[keys[i]] = (fresh.values[:, column], fresh.second_derivatives[:, column])
        values, second_derivatives = zip(*(self._splines[key] for key in keys))
        return CubicSpline(self._knots, torch.stack(values, dim=1), torch.stack(second_derivatives, dim=1))

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        self._lam = self.schedule(epoch)
        if self._lam == 0.0:
            prediction = self.predict(solver, batch.windows, batch.sample_interval)
        else:
            coupled = CoupledVectorField(solver.rhs, self.target(batch), self.coupling, lam=self._lam)
            times = [i * batch.sample_interval for i in range(self.steps + 1)]
            params = list(solver.closure.parameters()) if isinstance(solver.closure, nn.Module) else None
            prediction, counter = odeint_adaptive(coupled, batch.windows[:, 0], times, method=self.method,
                                                  rtol=self.rtol, atol=self.atol, adjoint=self.adjoint,
                                                  adjoint_params=params)
            self._counters.append((counter, counter.nfe))
        return {self.name: Weighted(rollout_mse(prediction, batch.windows), self.weight)}

    def epoch_log(self) -> dict[str, float]:
        return {"lam": self._lam, **super().epoch_log()}
