"""Time integrators shared by every explicit solver.

Fixed-step methods are plain functions ``step(f, t, u, dt) -> u_next`` over any vector field
``f(t, u)``; adaptive methods go through torchdiffeq with the number of function evaluations counted.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

VectorField = Callable[[Tensor, Tensor], Tensor]
FixedStep = Callable[[VectorField, Tensor, Tensor, float], Tensor]

__all__ = [
    "FIXED_STEP_METHODS",
    "ADAPTIVE_METHODS",
    "REAL_AXIS_STABILITY_LIMIT",
    "FunctionCounter",
    "euler_step",
    "rk4_step",
    "odeint_adaptive",
    "is_step_underflow",
]


def euler_step(f: VectorField, t: Tensor, u: Tensor, dt: float) -> Tensor:
    """Forward Euler, first order."""
    return u + dt * f(t, u)


def rk4_step(f: VectorField, t: Tensor, u: Tensor, dt: float) -> Tensor:
    """Classical fourth-order Runge-Kutta (Kutta 1901)."""
    half = 0.5 * dt
    k1 = f(t, u)
    k2 = f(t + half, u + half * k1)
    k3 = f(t + half, u + half * k2)
    k4 = f(t + dt, u + dt * k3)
    return u + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)


FIXED_STEP_METHODS: dict[str, FixedStep] = {"euler": euler_step, "rk4": rk4_step}

# Where each method's stability region meets the negative real axis: |lambda dt| must stay below it
# for a decaying linear mode (Hairer & Wanner, Solving ODEs II, Sec. IV.2).
REAL_AXIS_STABILITY_LIMIT: dict[str, float] = {"euler": 2.0, "rk4": 2.785293563405282}

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


class FunctionCounter(torch.nn.Module):
    """Wraps a vector field and counts its evaluations (NFE).

    A ``torch.nn.Module`` so that ``torchdiffeq.odeint_adjoint`` finds the wrapped parameters.
    """

    def __init__(self, f: VectorField):
        super().__init__()
        self.f = f
        self.nfe = 0

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        self.nfe += 1
        return self.f(t, u)


def is_step_underflow(error: BaseException) -> bool:
    """Whether ``error`` is torchdiffeq's assertion that the adaptive step shrank to nothing (raised in a
    forward solve, which ``odeint_adaptive`` turns into ``FloatingPointError``, or in an adjoint solve
    during ``backward()``)."""
    return isinstance(error, AssertionError) and "underflow in dt" in str(error)


def odeint_adaptive(
    f: VectorField,
    u0: Tensor,
    t: Tensor | Sequence[float],
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    adjoint: bool = False,
    adjoint_params: Sequence[Tensor] | None = None,
) -> tuple[Tensor, FunctionCounter]:
    """Integrate ``du/dt = f(t, u)`` with a torchdiffeq adaptive method.

    Args:
        u0: (batch, *state) initial state.
        t: (n_times,) increasing output times, ``t[0]`` the time of ``u0``.
        adjoint: backpropagate with the adjoint method (memory constant in the number of steps).

    Returns:
        ``(u, counter)`` with ``u: (batch, n_times, *state)`` and ``counter.nfe`` the evaluations
        made so far; evaluations during a later ``backward()`` are added to the same counter.

    Raises ``FloatingPointError`` when the step size underflows (a blow-up, or tolerances finer than
    the dtype resolves) instead of torchdiffeq's bare ``AssertionError``; with ``adjoint`` the backward
    solve runs in ``backward()``, where the assertion stays (``is_step_underflow`` tells it).
    """
    if method not in ADAPTIVE_METHODS:
        raise ValueError(f"method={method!r} is not an adaptive method; choose one of {ADAPTIVE_METHODS}")
    import torchdiffeq  # imported here: only the adaptive path needs it

    counter = FunctionCounter(f)
    t = torch.as_tensor(t, dtype=u0.dtype, device=u0.device)
    try:
        if adjoint:
            params = tuple(adjoint_params) if adjoint_params is not None else tuple(counter.parameters())
            u = torchdiffeq.odeint_adjoint(counter, u0, t, method=method, rtol=rtol, atol=atol,
                                           adjoint_params=params)
        else:
            u = torchdiffeq.odeint(counter, u0, t, method=method, rtol=rtol, atol=atol)
    except AssertionError as error:  # torchdiffeq asserts when the accepted step shrinks to nothing
        if not is_step_underflow(error):
            raise
        raise FloatingPointError(
            f"the adaptive {method} step size underflowed after {counter.nfe} evaluations: the state blew up, or "
            f"rtol={rtol:g} / atol={atol:g} ask for more than {u0.dtype} can resolve") from error
    return u.movedim(0, 1), counter  # torchdiffeq puts time first
