"""ODE systems with exact right-hand sides and exact Jacobian-vector products.

Each system is an ``ExplicitSolver``: ``known_rhs(t, u)`` is the true vector field, ``jvp(t, u, v)``
its exact directional derivative (written out by hand, checked against ``torch.func.jvp`` in the
tests), and ``invariants(u)`` the quantities the exact flow conserves, if any. States are
``u: (batch, n_components)`` with ``component_names`` naming the columns.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Closure
from .explicit import ExplicitSolver, stack_components

__all__ = ["TwoBody", "RigidBody", "LotkaVolterra", "Lorenz63", "DoublePendulum", "ODE_SYSTEMS"]


class _ODESystem(ExplicitSolver):
    component_names: tuple[str, ...] = ()
    autonomous = True
    #: the state is positions, then the velocities of those positions (what a second-order host needs)
    positions_then_velocities = False

    def __init__(self, *, dt: float, integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (len(self.component_names),)

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        """Exact ``J_F(u) v`` of ``known_rhs``; ``u, v: (batch, n_components)``."""
        raise NotImplementedError

    def invariants(self, u: Tensor) -> dict[str, Tensor]:
        """Conserved quantities of the exact flow, each ``(...)`` over the leading dims of ``u``."""
        return {}

    @staticmethod
    def _parameter(name: str, value: float, *, positive: bool = True) -> float:
        """``value`` as a float; ``ValueError`` naming ``name`` unless finite (and positive)."""
        value = float(value)
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(f"{name}={value!r} must be a {'positive, ' if positive else ''}finite number")
        return value


class TwoBody(_ODESystem):
    """Planar Kepler problem ``x'' = -mu x / |x|^3``, state ``(x, y, vx, vy)``.

    Conserves energy ``|v|^2/2 - mu/r`` and angular momentum ``x vy - y vx``.
    """

    component_names = ("x", "y", "vx", "vy")
    positions_then_velocities = True

    def __init__(self, *, gravitational_parameter: float = 1.0, dt: float = 0.01,
                 integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        self.gravitational_parameter = self._parameter("gravitational_parameter", gravitational_parameter)

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        x, y, vx, vy = u.unbind(-1)
        inv_r3 = (x * x + y * y).pow(-1.5)
        mu = self.gravitational_parameter
        return stack_components([vx, vy, -mu * x * inv_r3, -mu * y * inv_r3])

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        x, y, _, _ = u.unbind(-1)
        dx, dy, dvx, dvy = v.unbind(-1)
        r2 = x * x + y * y
        inv_r3 = r2.pow(-1.5)
        radial = 3.0 * (x * dx + y * dy) / r2  # d(r^-3) / r^-3
        mu = self.gravitational_parameter
        return stack_components([dvx, dvy, -mu * inv_r3 * (dx - x * radial), -mu * inv_r3 * (dy - y * radial)])

    def invariants(self, u: Tensor) -> dict[str, Tensor]:
        x, y, vx, vy = u.unbind(-1)
        r = torch.sqrt(x * x + y * y)
        return {"energy": 0.5 * (vx * vx + vy * vy) - self.gravitational_parameter / r,
                "angular_momentum": x * vy - y * vx}


class RigidBody(_ODESystem):
    """Euler's equations of the free rigid body for the angular momentum ``m`` (Hairer, Lubich & Wanner,
    Geometric Numerical Integration, Sec. IV.1.2): ``m' = m x (I^-1 m)``.

    Conserves the Casimir ``|m|^2`` and the energy ``sum m_i^2 / (2 I_i)``.
    """

    component_names = ("m1", "m2", "m3")

    def __init__(self, *, moments_of_inertia: tuple[float, float, float] = (1.6, 1.0, 2.0 / 3.0),
                 dt: float = 0.01,
                 integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        if len(moments_of_inertia) != 3:
            raise ValueError(f"moments_of_inertia={moments_of_inertia} must be three positive numbers")
        self.moments_of_inertia = tuple(self._parameter("moments_of_inertia", i) for i in moments_of_inertia)
        i1, i2, i3 = self.moments_of_inertia
        self._coupling = (1 / i3 - 1 / i2, 1 / i1 - 1 / i3, 1 / i2 - 1 / i1)

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        m1, m2, m3 = u.unbind(-1)
        a1, a2, a3 = self._coupling
        return stack_components([a1 * m2 * m3, a2 * m3 * m1, a3 * m1 * m2])

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        m1, m2, m3 = u.unbind(-1)
        d1, d2, d3 = v.unbind(-1)
        a1, a2, a3 = self._coupling
        return stack_components([a1 * (d2 * m3 + m2 * d3), a2 * (d3 * m1 + m3 * d1), a3 * (d1 * m2 + m1 * d2)])

    def invariants(self, u: Tensor) -> dict[str, Tensor]:
        inertia = torch.as_tensor(self.moments_of_inertia, dtype=u.dtype, device=u.device)
        return {"casimir": (u * u).sum(-1), "energy": 0.5 * (u * u / inertia).sum(-1)}


class LotkaVolterra(_ODESystem):
    """Predator-prey ``x' = a x - b x y``, ``y' = c x y - d y`` (Ko et al.: a=1.3, b=0.9, c=0.8, d=1.8).

    Conserves ``c x - d ln x + b y - a ln y`` for positive populations.
    """

    component_names = ("prey", "predator")

    def __init__(self, *, a: float = 1.3, b: float = 0.9, c: float = 0.8, d: float = 1.8,
                 dt: float = 0.01,
                 integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        self.a, self.b, self.c, self.d = (self._parameter(name, value) for name, value in zip("abcd", (a, b, c, d)))

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        x, y = u.unbind(-1)
        return stack_components([self.a * x - self.b * x * y, self.c * x * y - self.d * y])

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        x, y = u.unbind(-1)
        dx, dy = v.unbind(-1)
        d_xy = dx * y + x * dy
        return stack_components([self.a * dx - self.b * d_xy, self.c * d_xy - self.d * dy])

    def invariants(self, u: Tensor) -> dict[str, Tensor]:
        """The first integral ``V = c x - d ln x + b y - a ln y`` less its minimum, at the equilibrium
        ``(d/c, a/b)``: ``V >= 0``, zero only there, so its relative drift is measured against the orbit's
        own size rather than an arbitrary additive constant."""
        x, y = u.unbind(-1)
        a, b, c, d = self.a, self.b, self.c, self.d
        minimum = d - d * math.log(d / c) + a - a * math.log(a / b)
        return {"first_integral": c * x - d * torch.log(x) + b * y - a * torch.log(y) - minimum}


class Lorenz63(_ODESystem):
    """Lorenz 1963: ``x' = sigma (y - x)``, ``y' = x (rho - z) - y``, ``z' = x y - beta z``."""

    component_names = ("x", "y", "z")

    def __init__(self, *, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0,
                 dt: float = 0.01,
                 integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        self.sigma, self.rho, self.beta = (self._parameter(name, value, positive=False) for name, value
                                           in (("sigma", sigma), ("rho", rho), ("beta", beta)))

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        x, y, z = u.unbind(-1)
        return stack_components([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z])

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        x, y, z = u.unbind(-1)
        dx, dy, dz = v.unbind(-1)
        return stack_components([self.sigma * (dy - dx), dx * (self.rho - z) - x * dz - dy,
                                 dx * y + x * dy - self.beta * dz])


class DoublePendulum(_ODESystem):
    """Planar double pendulum of point masses on massless rods, state ``(theta1, theta2, omega1, omega2)``.

    Angles from the downward vertical; equations of motion from the Lagrangian (e.g. Levien & Tan,
    Am. J. Phys. 61, 1038 (1993)). Conserves the energy ``T + V``, with ``V`` measured from the
    hanging rest state (``V >= 0``, so ``T + V = 0`` only there).
    """

    component_names = ("theta1", "theta2", "omega1", "omega2")
    positions_then_velocities = True

    def __init__(self, *, mass1: float = 1.0, mass2: float = 1.0, length1: float = 1.0,
                 length2: float = 1.0, gravity: float = 9.81, dt: float = 0.01,
                 integrator: str = "rk4", closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        self.mass1, self.mass2, self.length1, self.length2 = (
            self._parameter(name, value) for name, value in (("mass1", mass1), ("mass2", mass2), ("length1", length1),
                                                             ("length2", length2)))
        self.gravity = self._parameter("gravity", gravity, positive=False)

    def _accelerations(self, th1, th2, w1, w2, d_th1=None, d_th2=None, d_w1=None, d_w2=None):
        """Angular accelerations, and with tangents given, their directional derivatives."""
        m2, l1, l2, g = self.mass2, self.length1, self.length2, self.gravity
        total = self.mass1 + m2
        delta = th2 - th1
        s, co = torch.sin(delta), torch.cos(delta)
        den1 = total * l1 - m2 * l1 * co * co
        num1 = (m2 * l1 * w1 * w1 * s * co + m2 * g * torch.sin(th2) * co + m2 * l2 * w2 * w2 * s
                - total * g * torch.sin(th1))
        num2 = (-m2 * l2 * w2 * w2 * s * co + total * g * torch.sin(th1) * co
                - total * l1 * w1 * w1 * s - total * g * torch.sin(th2))
        den2 = (l2 / l1) * den1
        acc1, acc2 = num1 / den1, num2 / den2
        if d_th1 is None:
            return acc1, acc2
        d_delta = d_th2 - d_th1
        d_s, d_co = co * d_delta, -s * d_delta
        d_den1 = -2.0 * m2 * l1 * co * d_co
        d_num1 = (m2 * l1 * (2 * w1 * d_w1 * s * co + w1 * w1 * (d_s * co + s * d_co))
                  + m2 * g * (torch.cos(th2) * d_th2 * co + torch.sin(th2) * d_co)
                  + m2 * l2 * (2 * w2 * d_w2 * s + w2 * w2 * d_s)
                  - total * g * torch.cos(th1) * d_th1)
        d_num2 = (-m2 * l2 * (2 * w2 * d_w2 * s * co + w2 * w2 * (d_s * co + s * d_co))
                  + total * g * (torch.cos(th1) * d_th1 * co + torch.sin(th1) * d_co)
                  - total * l1 * (2 * w1 * d_w1 * s + w1 * w1 * d_s)
                  - total * g * torch.cos(th2) * d_th2)
        d_den2 = (l2 / l1) * d_den1
        return (d_num1 - acc1 * d_den1) / den1, (d_num2 - acc2 * d_den2) / den2

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        th1, th2, w1, w2 = u.unbind(-1)
        acc1, acc2 = self._accelerations(th1, th2, w1, w2)
        return stack_components([w1, w2, acc1, acc2])

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        d_th1, d_th2, d_w1, d_w2 = v.unbind(-1)
        d_acc1, d_acc2 = self._accelerations(*u.unbind(-1), d_th1, d_th2, d_w1, d_w2)
        return stack_components([d_w1, d_w2, d_acc1, d_acc2])

    def invariants(self, u: Tensor) -> dict[str, Tensor]:
        th1, th2, w1, w2 = u.unbind(-1)
        m1, m2, l1, l2, g = self.mass1, self.mass2, self.length1, self.length2, self.gravity
        kinetic = (0.5 * (m1 + m2) * l1**2 * w1**2 + 0.5 * m2 * l2**2 * w2**2
                   + m2 * l1 * l2 * w1 * w2 * torch.cos(th1 - th2))
        # from the rest state, not the pivot: the pivot's zero is arbitrary, and released from rest at
        # theta1 = theta2 = pi/2 the energy would be 0 up to rounding, so its relative drift meaningless
        potential = (m1 + m2) * g * l1 * (1.0 - torch.cos(th1)) + m2 * g * l2 * (1.0 - torch.cos(th2))
        return {"energy": kinetic + potential}


ODE_SYSTEMS: dict[str, type[_ODESystem]] = {
    "two_body": TwoBody,
    "rigid_body": RigidBody,
    "lotka_volterra": LotkaVolterra,
    "lorenz63": Lorenz63,
    "double_pendulum": DoublePendulum,
}
