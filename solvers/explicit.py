"""Method-of-lines host solvers: a right-hand side stepped by a fixed-step explicit method (``rk4``,
``euler``), with torchdiffeq's adaptive methods alongside."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Closure, Solver, StabilityLimitError
from .integrators import FIXED_STEP_METHODS, FixedStep, odeint_adaptive

__all__ = ["ExplicitSolver", "stack_components"]


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

    #: ``dt`` may not exceed ``linear_stability_dt()``: set on the instance, after ``super().__init__``
    #: (whose own dt check runs before the attributes the limit needs exist), by solvers with a finite
    #: limit, which then check their constructor's dt themselves (``check_stability_limit``)
    check_stability: bool = False

    def step(self, t: Tensor | float, u: Tensor, dt: float | None = None) -> Tensor:
        self.check_state(u)
        return self._step_method(self.rhs, self.as_time(t), u, self.resolve_dt(dt))

    def _step_eagerly(self, t: Tensor | float, state: Tensor, dt: float) -> Tensor:
        if type(self).step is not ExplicitSolver.step:  # a subclass's own step: trajectories take it too
            return self.step(t, state, dt)
        # trajectories: the state and dt were checked once, before their first step
        return self._step_method(self.rhs, self.as_time(t), state, dt)

    def _check_dt(self, dt: float) -> None:
        super()._check_dt(dt)
        if self.check_stability:
            self.check_stability_limit(dt)

    def check_stability_limit(self, dt: float) -> None:
        """``StabilityLimitError`` naming the limit when ``dt`` exceeds ``linear_stability_dt()``."""
        limit = self.linear_stability_dt()
        if dt > limit:
            raise StabilityLimitError(f"dt={dt} exceeds the {self.integrator} stability limit {limit:.4g} of "
                                      f"{self.stability_description()}; use dt <= {limit:.4g}{self.stability_remedy}")

    #: other ways out of a stability limit, for its message (", ... or ...")
    stability_remedy: str = ""

    def stability_description(self) -> str:
        """What the limit of ``check_stability_limit`` belongs to, for its message."""
        return type(self).__name__

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

