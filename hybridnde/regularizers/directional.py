"""Directional-derivative Jacobian regularizers (Janvier, Salomon & Meunier,
"Jacobian Regularization Stabilizes Long-Term Integration of Neural Differential Equations").

The hybrid right-hand side is ``F_theta = F_known + C_theta``; the regularizers make its Jacobian
match the true ``J_F`` along directions, never forming a dense Jacobian:

* ``directional_jacobian_penalty`` (exact, known dynamics):
  ``L_AD = mean_{u, v} || J_{F_theta}(u) v - J_F(u) v ||^2`` over data states ``u`` and random
  probes ``v`` (``E[v v^T] = I``), whose expectation over ``v`` is ``|| J_{F_theta} - J_F ||_F^2``
  (Hutchinson). The known part's directional derivative ``J_{F_known} v`` is exact and free of
  parameters, so the mismatch is ``P J_C v - (J_F v - J_{F_known} v)``: one forward-mode product
  through the closure (``tangent.closure_jvp``) against the solvers' exact ``jvp``s, with ``P`` the
  part of the closure's output the host adds (the identity but for ``SecondOrderHost``).
* ``finite_difference_directional_penalty`` (data only): finite differences along the
  trajectory's own steps, the paper's ``L_FD`` by default (``stencil="one_sided"``), or a centred,
  second-order variant.
* ``sampling_error``: how far the data's sampling is from what the stencil needs; the trainer warns
  above ``training.fd_warn_threshold``.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from .tangent import closure_jvp

__all__ = [
    "directional_jacobian_penalty", "finite_difference_directional_penalty", "finite_difference_mismatch",
    "sampling_error", "FD_STENCILS", "STENCIL_ORDER",
]

log = logging.getLogger(__name__)

VectorField = Callable[[Tensor, Tensor], Tensor]
JacobianVectorProduct = Callable[[Tensor, Tensor, Tensor], Tensor]

FD_STENCILS = ("one_sided", "centred")
#: order in the sampling interval of the normalised mismatch's error (see ``finite_difference_mismatch``)
STENCIL_ORDER = {"one_sided": 1, "centred": 2}
#: the paper's guard against a zero step in the normalisation ``||x_{t+1} - x_t||^2 + 1e-8``. Absolute,
#: not relative to the step: where ``||v_t||^2`` nears 1e-8 it biases L_FD low (measured: the
#: centred variant's error against its exact limit growing from 1e-4 to 9e-4 as dt went 0.0025 ->
#: 0.000625, where without the floor it fell at second order); at the paper cases' steps (two-body,
#: dt = 0.01, ``||v||^2 ~ 1e-4``) the bias is ~1e-4 relative. Kept as published.
STEP_NORM_FLOOR = 1e-8


def _sum_over_state(x: Tensor, leading: int) -> Tensor:
    return x.pow(2).sum(dim=tuple(range(leading, x.ndim)))


def _same_shape(product: Tensor, direction: Tensor, what: str) -> Tensor:
    """``product``, refused (``ValueError``) unless it has ``direction``'s shape: a ``(batch, 1)`` answer
    would broadcast into a finite, wrong penalty (a closure or product must act on each member's whole
    state, as solvers require of closures)."""
    if not isinstance(product, Tensor) or product.shape != direction.shape:
        got = tuple(product.shape) if isinstance(product, Tensor) else type(product).__name__
        raise ValueError(f"{what} returned {got} for directions of shape {tuple(direction.shape)}; a Jacobian-vector "
                         "product (and a closure) must return one value per state entry: the directions' shape")
    return product


def directional_jacobian_penalty(closure: VectorField, u: Tensor, probes: Tensor, *,
                                 reference_jvp: JacobianVectorProduct,
                                 known_jvp: JacobianVectorProduct | None = None,
                                 t: Tensor | float = 0.0, method: str = "auto",
                                 closure_contribution: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Exact directional-derivative mismatch of the hybrid right-hand side, ``L_AD``.

    Args:
        closure: ``C_theta(t, u)``, the trainable part of ``F_theta = F_known + C_theta``.
        u: (batch, *state) data states.
        probes: (P, batch, *state) directions (``ProbeSampler``/``draw_probes``).
        reference_jvp: ``(t, u, v) -> J_F(u) v``, the true system's exact product (e.g. a solver's
            ``jvp``); called without gradients on ``(P * batch, *state)`` stacks.
        known_jvp: ``(t, u, v) -> J_{F_known}(u) v`` of the host's known physics (``None``: no known
            physics, a plain neural ODE).
        method: how ``J_C v`` is computed, see ``tangent.closure_jvp``.
        closure_contribution: the linear map ``P`` from the closure's output to what the host adds
            (a solver's ``closure_contribution``; ``None``: all of it), so that ``J_{F_theta} v =
            J_{F_known} v + P J_C v``. Without it a ``SecondOrderHost`` would be penalised for the
            position block it discards.

    Returns:
        0-dim tensor ``mean_{batch, P} sum_state (J_{F_theta} v - J_F v)^2``; its expectation over
        unnormalised probes is the mean squared Frobenius distance ``||J_{F_theta} - J_F||_F^2``.
    """
    if probes.ndim != u.ndim + 1 or probes.shape[1:] != u.shape:
        raise ValueError(f"probes have shape {tuple(probes.shape)}; expected (P, *{tuple(u.shape)})")
    t = torch.as_tensor(t, dtype=u.dtype, device=u.device)
    count = probes.shape[0]
    with torch.no_grad():
        stacked_u = u.detach().unsqueeze(0).expand_as(probes).reshape(-1, *u.shape[1:])
        stacked_v = probes.reshape(-1, *u.shape[1:])
        target = _same_shape(reference_jvp(t, stacked_u, stacked_v), stacked_v, "reference_jvp")
        if known_jvp is not None:
            target = target - _same_shape(known_jvp(t, stacked_u, stacked_v), stacked_v, "known_jvp")
        target = target.reshape(count, *u.shape)
    closure_part = _same_shape(closure_jvp(closure, t, u, probes, method=method), probes, "the closure's J v")
    if closure_contribution is not None:
        closure_part = closure_contribution(closure_part)
    mismatch = closure_part - target
    return _sum_over_state(mismatch, 2).mean()


def finite_difference_mismatch(rhs: VectorField, states: Tensor, dt: float, *, stencil: str = "one_sided",
                               t: Tensor | float = 0.0) -> tuple[Tensor, Tensor]:
    """Model-side minus data-side directional differences along the trajectory, and the direction.

    ``states: (batch, 3, *state)`` holds three consecutive samples ``dt`` apart.

    * ``one_sided`` (Janvier et al.): direction ``v = x1 - x0``; model side
      ``F(x1) - F(x0)``; data side ``(x2 - 2 x1 + x0) / dt``. Both approximate ``J v`` with an
      ``O(dt^2)`` error, so the mismatch per unit direction is first order in ``dt``.
    * ``centred``: direction ``v = (x2 - x0) / 2``; model side ``(F(x2) - F(x0)) / 2``; data side
      ``(x2 - 2 x1 + x0) / dt``; all centred on ``x1`` (``O(dt^3)`` errors), second order per
      unit direction.

    ``rhs`` is the hybrid right-hand side ``F_theta`` (e.g. ``solver.rhs``), evaluated once on the
    two model-side states stacked along the batch. Returns ``(mismatch, direction)``, both
    ``(batch, *state)``.
    """
    if stencil not in FD_STENCILS:
        raise ValueError(f"stencil={stencil!r}; choose one of {FD_STENCILS}")
    if states.ndim < 3 or states.shape[1] < 3:
        raise ValueError(f"states have shape {tuple(states.shape)}; need (batch, 3, *state): three consecutive samples")
    x0, x1, x2 = states[:, 0], states[:, 1], states[:, 2]
    data_side = (x2 - 2.0 * x1 + x0) / dt
    if stencil == "one_sided":
        ends, direction, scale = (x0, x1), x1 - x0, 1.0
    else:
        ends, direction, scale = (x0, x2), 0.5 * (x2 - x0), 0.5
    batch = x0.shape[0]
    values = rhs(torch.as_tensor(t, dtype=x0.dtype, device=x0.device), torch.cat(ends, dim=0))
    model_side = scale * (values[batch:] - values[:batch])
    return model_side - data_side, direction


def finite_difference_directional_penalty(rhs: VectorField, states: Tensor, dt: float, *,
                                          stencil: str = "one_sided", t: Tensor | float = 0.0) -> Tensor:
    """``L_FD = mean_t || model side - data side ||^2 / (||v_t||^2 + 1e-8)`` (Janvier et al.).

    No true Jacobian is needed: both sides are differences along the data's own step ``v_t``, the
    data spacing ``dt`` is the only step. See ``finite_difference_mismatch`` for the stencils.
    ``states: (batch, 3, *state)``; returns a 0-dim tensor with gradients to ``rhs``'s parameters.
    """
    mismatch, direction = finite_difference_mismatch(rhs, states, dt, stencil=stencil, t=t)
    return (_sum_over_state(mismatch, 1) / (_sum_over_state(direction, 1) + STEP_NORM_FLOOR)).mean()


def sampling_error(trajectories: Tensor, *, stencil: str = "one_sided") -> float:
    """Estimated relative truncation error of the finite-difference stencil on these data.

    The stencils approximate ``J v`` by the second difference ``D2 = x_{t+2} - 2 x_{t+1} + x_t``; their
    leading error is the next difference the stencil ignores: ``D3`` (third difference, first-order
    ``one_sided``) or ``D4`` (fourth difference, second-order ``centred``). The criterion is

        epsilon = median over members and times of ||D3|| / ||D2||   (one_sided)
                  median over members and times of ||D4|| / ||D2||   (centred)

    ~ ``(dt / tau)^order`` with ``tau`` the local time scale of the motion; measurement noise raises
    it too (high differences amplify it), which also makes the estimate unreliable. Values well
    below 0.1 mean the sampling resolves the dynamics for this stencil.

    ``trajectories: (member, time, *state)``; non-finite stretches are ignored. Returns ``nan``
    when fewer than 5 consecutive samples exist.
    """
    if stencil not in FD_STENCILS:
        raise ValueError(f"stencil={stencil!r}; choose one of {FD_STENCILS}")
    higher = 3 if stencil == "one_sided" else 4
    if trajectories.shape[1] < higher + 1:
        return float("nan")
    state_dims = tuple(range(2, trajectories.ndim))
    second = torch.diff(trajectories, n=2, dim=1).norm(dim=state_dims)[:, : trajectories.shape[1] - higher]
    next_difference = torch.diff(trajectories, n=higher, dim=1).norm(dim=state_dims)
    ratio = next_difference / second
    ratio = ratio[torch.isfinite(ratio)]
    return float(ratio.median()) if ratio.numel() else float("nan")
