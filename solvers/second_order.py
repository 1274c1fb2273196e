"""A host that knows only the kinematics of a second-order system: ``dq/dt = v``, ``dv/dt = C(t, u)``.

The state is ``u = (q, v)`` with positions ``q`` and velocities ``v`` of equal size (e.g. the double
pendulum's ``(theta1, theta2, omega1, omega2)``). The closure returns a full-state tendency like every
closure; this host adds only its velocity block (the accelerations) and drops the position block,
so the learned model is second order by construction (Gruver et al. 2021; Ko et al. 2023, Fig. 5).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import Closure
from .closure_only import ClosureOnly

__all__ = ["SecondOrderHost"]


class SecondOrderHost(ClosureOnly):
    """``du/dt = (v, 0) + P C(t, u)`` with ``P`` keeping the second (velocity) half of the state.

    Args:
        state_shape: ``(2 m,)``: ``m`` positions then ``m`` velocities.
    """

    def __init__(self, *, state_shape: Sequence[int], dt: float, integrator: str = "rk4",
                 component_names: Sequence[str] | None = None, closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        shape = tuple(int(n) for n in state_shape)
        if len(shape) != 1 or shape[0] % 2:
            raise ValueError(f"state_shape={shape}: a second-order host needs (2 m,) states, positions then velocities")
        super().__init__(state_shape=shape, dt=dt, integrator=integrator, component_names=component_names,
                         closure=closure, device=device, dtype=dtype)
        self.half = shape[0] // 2

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        """The kinematics ``(dq/dt, dv/dt) = (v, 0)``."""
        return torch.cat([u[..., self.half:], torch.zeros_like(u[..., self.half:])], dim=-1)

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        return torch.cat([v[..., self.half:], torch.zeros_like(v[..., self.half:])], dim=-1)

    def closure_contribution(self, du_dt: Tensor) -> Tensor:
        """``P du_dt``: the velocity block (accelerations) kept, the position block zeroed."""
        return torch.cat([torch.zeros_like(du_dt[..., : self.half]), du_dt[..., self.half:]], dim=-1)

    def rhs(self, t: Tensor | float, u: Tensor) -> Tensor:
        t = self.as_time(t)
        du_dt = self.known_rhs(t, u)
        if self.closure is None:
            return du_dt
        acceleration = self.closure_tendency(t, u)[..., self.half:]
        return torch.cat([du_dt[..., : self.half], acceleration], dim=-1)
