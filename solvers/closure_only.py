"""A host with no known physics: ``du/dt = C(t, u)``, the plain neural ODE (``F_known = 0``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Closure
from .explicit import ExplicitSolver

__all__ = ["ClosureOnly"]


class ClosureOnly(ExplicitSolver):
    """Integrates the closure alone with a fixed-step method.

    Args:
        state_shape: one member's state shape, e.g. ``(4,)`` or ``(n_points,)``.
        component_names: names of ODE state components, if any.
        domain_length: for fields, the period of the grid (gives ``x``).
    """

    autonomous = True  # no known physics (subclasses: kinematics), only the closure sees t

    def __init__(self, *, state_shape: Sequence[int], dt: float, integrator: str = "rk4",
                 component_names: Sequence[str] | None = None, domain_length: float | None = None,
                 closure: Closure | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        self._state_shape = tuple(int(n) for n in state_shape)
        self.component_names = tuple(component_names) if component_names else None
        self.domain_length = domain_length

    @property
    def state_shape(self) -> tuple[int, ...]:
        return self._state_shape

    @property
    def x(self) -> Tensor:
        n = self._state_shape[-1]
        return torch.arange(n, dtype=self.dtype, device=self.device) * (self.domain_length / n)

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        return torch.zeros_like(u)

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        return torch.zeros_like(v)
