"""The closure hook and the solver interface every host code implements.

A closure is any callable ``closure(t, u) -> du_dt`` (torchdiffeq's ``f(t, y)`` convention): ``t`` a
0-dim tensor, ``u: (batch, *state)`` on the solver's device and dtype, the result of the same shape,
**added to the explicit part** of the right-hand side. ``torch.nn.Module``s qualify.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from .integrators import FIXED_STEP_METHODS, FixedStep, odeint_adaptive

__all__ = ["Closure", "Solver", "ExplicitSolver", "SolverStateError", "PeriodicGrid"]


class Closure(Protocol):
    def __call__(self, t: Tensor, u: Tensor) -> Tensor: ...


class SolverStateError(ValueError):
    """A state whose shape, dtype or device does not fit the solver."""


class Solver(ABC):
    """A host simulation code with a closure hook.

    Subclasses give the known physics (``known_rhs``) and one time step; ``rollout`` and
    ``trajectory`` are shared. States are batched: ``u: (batch, *state_shape)``.
    """

    #: names of the state components for ODEs (``None`` for fields on a grid)
    component_names: tuple[str, ...] | None = None

    def __init__(self, *, dt: float, closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        if not dt > 0:
            raise ValueError(f"dt={dt!r} must be positive")
        self.dt = float(dt)
        self.closure = closure
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype

    # -- what a subclass provides ---------------------------------------------------------------
    @property
    @abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one member's state, e.g. ``(n,)`` for a 1-D field or ``(4,)`` for two-body."""

    @abstractmethod
    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        """The physics the code knows: ``du/dt`` without the closure. ``u: (batch, *state)``."""

    @abstractmethod
    def step(self, t: Tensor | float, u: Tensor, dt: float | None = None) -> Tensor:
        """Advance ``u: (batch, *state)`` from ``t`` to ``t + dt`` (``dt`` defaults to ``self.dt``)."""

    # -- shared -----------------------------------------------------------------------------------
    def rhs(self, t: Tensor | float, u: Tensor) -> Tensor:
        """Known physics plus closure: ``du/dt = F_known(t, u) + C(t, u)``."""
        t = self.as_time(t)
        du_dt = self.known_rhs(t, u)
        if self.closure is not None:
            du_dt = du_dt + self.closure(t, u)
        return du_dt

    def as_time(self, t: Tensor | float) -> Tensor:
        """``t`` as a 0-dim tensor on the solver's device and dtype (what closures receive)."""
        if isinstance(t, Tensor) and t.dtype == self.dtype and t.device == self.device:
            return t
        return torch.as_tensor(t, dtype=self.dtype, device=self.device)

    def check_state(self, u: Tensor) -> None:
        """Raise ``SolverStateError`` naming the mismatch when ``u`` cannot be stepped."""
        if not isinstance(u, Tensor):
            raise SolverStateError(f"u must be a torch.Tensor of shape (batch, {self.state_shape}), got {type(u).__name__}")
        if tuple(u.shape[1:]) != tuple(self.state_shape) or u.ndim != 1 + len(self.state_shape):
            raise SolverStateError(
                f"u has shape {tuple(u.shape)}; this solver expects (batch, *{tuple(self.state_shape)})")
        if u.dtype != self.dtype:
            raise SolverStateError(f"u has dtype {u.dtype}; the solver was built for {self.dtype}")
        if u.device.type != self.device.type:
            raise SolverStateError(f"u is on {u.device}; the solver was built for {self.device}")

    def trajectory(self, u0: Tensor, n_steps: int, *, save_every: int = 1, dt: float | None = None,
                   t0: float = 0.0) -> Iterator[tuple[float, Tensor]]:
        """Yield ``(t, u)`` at ``t0`` and after every ``save_every`` steps, ``n_steps`` steps in all.

        A generator, so long runs can stream to disk without holding the whole trajectory.
        ``u: (batch, *state)``.
        """
        self._check_rollout(u0, n_steps, save_every)
        dt = self.dt if dt is None else float(dt)
        yield t0, u0
        state = self.to_internal(u0)
        for i in range(1, n_steps + 1):
            state = self.step_internal(t0 + (i - 1) * dt, state, dt)
            if i % save_every == 0:
                yield t0 + i * dt, self.from_internal(state)

    def rollout(self, u0: Tensor, n_steps: int, *, save_every: int = 1, dt: float | None = None,
                t0: float = 0.0) -> Tensor:
        """Integrate ``n_steps`` steps and return the saved states.

        Returns ``(batch, 1 + n_steps // save_every, *state)``, the initial state first.
        Gradients flow through every step. Without gradients the saves are copied straight into the
        result, so peak memory is the result itself (stacking a list would need twice that).
        """
        self._check_rollout(u0, n_steps, save_every)
        states = self.trajectory(u0, n_steps, save_every=save_every, dt=dt, t0=t0)
        if torch.is_grad_enabled():
            return torch.stack([u for _, u in states], dim=1)
        saved = torch.empty((u0.shape[0], 1 + n_steps // save_every, *u0.shape[1:]), dtype=u0.dtype,
                            device=u0.device)
        for index, (_, u) in enumerate(states):
            saved[:, index] = u
        return saved

    def _check_rollout(self, u0: Tensor, n_steps: int, save_every: int) -> None:
        self.check_state(u0)
        if n_steps < 0 or save_every < 1:
            raise ValueError(f"need n_steps >= 0 and save_every >= 1, got {n_steps}, {save_every}")

    def times(self, n_steps: int, *, save_every: int = 1, dt: float | None = None,
              t0: float = 0.0) -> list[float]:
        """The times ``rollout`` saves at, ``1 + n_steps // save_every`` of them."""
        dt = self.dt if dt is None else float(dt)
        return [t0 + i * dt for i in range(0, n_steps + 1, save_every)]

    # The working representation between steps (spectral solvers keep Fourier coefficients), for
    # loops that step many times and look at the physical state only now and then (rollouts).
    def to_internal(self, u: Tensor) -> Tensor:
        """``u: (batch, *state)`` physical -> the solver's working state (batch first)."""
        return u

    def from_internal(self, state: Tensor) -> Tensor:
        """Working state -> physical ``(batch, *state)``; a new tensor or a view the caller must copy."""
        return state

    def step_internal(self, t: Tensor | float, state: Tensor, dt: float) -> Tensor:
        """One step of the working state. May update ``state`` in place (without gradients): pass only
        states made by ``to_internal`` and use the returned tensor."""
        return self.step(t, state, dt)

    def __repr__(self) -> str:
        closure = "none" if self.closure is None else type(self.closure).__name__
        return f"{type(self).__name__}(state_shape={self.state_shape}, dt={self.dt}, closure={closure})"


class PeriodicGrid:
    """Mixin for fields on ``n_points`` equispaced points of a periodic domain ``[0, domain_length)``."""

    domain_length: float
    n_points: int

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n_points,)

    @property
    def x(self) -> Tensor:
        """(n_points,) grid coordinates ``x_j = j L / N``."""
        return torch.arange(self.n_points, dtype=self.dtype, device=self.device) * (self.domain_length / self.n_points)


class ExplicitSolver(Solver):
    """A method-of-lines solver: ``rhs`` integrated by a fixed-step explicit method.

    ``integrator`` is a key of ``FIXED_STEP_METHODS`` (``"rk4"`` or ``"euler"``).
    """

    def __init__(self, *, dt: float, integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, closure=closure, device=device, dtype=dtype)
        if integrator not in FIXED_STEP_METHODS:
            raise ValueError(f"integrator={integrator!r}; choose one of {sorted(FIXED_STEP_METHODS)}")
        self.integrator = integrator
        self._step_method: FixedStep = FIXED_STEP_METHODS[integrator]

    def step(self, t: Tensor | float, u: Tensor, dt: float | None = None) -> Tensor:
        return self._step_method(self.rhs, self.as_time(t), u, self.dt if dt is None else float(dt))

    def solve_adaptive(self, u0: Tensor, t: Sequence[float] | Tensor, *, method: str = "dopri5",
                       rtol: float = 1e-7, atol: float = 1e-9, adjoint: bool = False) -> tuple[Tensor, int]:
        """Integrate ``rhs`` with a torchdiffeq adaptive method.

        Returns ``(u, nfe)``, ``u: (batch, len(t), *state)`` and the number of ``rhs`` evaluations.
        """
        self.check_state(u0)
        params = list(self.closure.parameters()) if isinstance(self.closure, torch.nn.Module) else None
        u, counter = odeint_adaptive(self.rhs, u0, t, method=method, rtol=rtol, atol=atol,
                                     adjoint=adjoint, adjoint_params=params)
        return u, counter.nfe

    def linear_stability_dt(self) -> float:
        """Largest stable ``dt`` for the stiffest linear mode, ``inf`` if none constrains it."""
        return float("inf")


def stack_components(components: Sequence[Tensor]) -> Tensor:
    """``[(batch,), ...] -> (batch, n_components)``."""
    return torch.stack(list(components), dim=-1)

