"""Products with the Jacobian ``J = dF/du`` of a vector field, per member of a batch.

``vector_field(t, u)`` follows the solvers' closure convention, ``u: (batch, *state)``; the state is
flattened to ``n`` and the field must act on each row independently (every closure in
``hybridnde.models`` does). All products are differentiable with respect to the field's parameters
(and ``u``) when grad mode is on, so penalties built from them train the field.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["VectorField", "JVP_METHODS", "jacobian_vector_product", "vector_jacobian_product", "dense_jacobian"]

VectorField = Callable[[Tensor, Tensor], Tensor]

def _flat_field(vector_field: VectorField, t: Tensor, state_shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """``u: (batch, n) -> du_dt: (batch, n)`` for a field on ``(batch, *state_shape)``."""
    def field(u_flat: Tensor) -> Tensor:
        return vector_field(t, u_flat.reshape(u_flat.shape[0], *state_shape)).reshape(u_flat.shape[0], -1)
    return field


def _as_time(t: Tensor | float, u: Tensor) -> Tensor:
    return t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=u.dtype, device=u.device)


JVP_METHODS = ("reverse", "forward")


def _jvp_flat(field: Callable[[Tensor], Tensor], u: Tensor, v: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """``(field(u), J v)`` for flat ``u, v: (rows, n)``; differentiable when grad mode is on."""
    if method == "forward":
        return torch.func.jvp(field, (u,), (v,))
    if method != "reverse":
        raise ValueError(f"jvp method={method!r}; choose one of {JVP_METHODS}")
    # Reverse over reverse ("double-backward trick"): J^T w is linear in w, so d/dw <J^T w, v> = J v.
    # Two reverse passes beat torch.func's forward mode on small CPU networks (~4x in our timing).
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():
        x = u if u.requires_grad else u.detach().requires_grad_()
        y = field(x)
        w = torch.zeros_like(y, requires_grad=True)
        (wj,) = torch.autograd.grad(y, x, w, create_graph=True, allow_unused=True)
        if wj is None or not wj.requires_grad:  # the field does not depend on u: J = 0
            jv = torch.zeros_like(y)
        else:
            (jv,) = torch.autograd.grad(wj, w, v, create_graph=differentiable, allow_unused=True)
            jv = torch.zeros_like(y) if jv is None else jv
    return (y, jv) if differentiable else (y.detach(), jv.detach())


def jacobian_vector_product(vector_field: VectorField, t: Tensor | float, u: Tensor, v: Tensor, *,
                            method: str = "reverse") -> tuple[Tensor, Tensor]:
    """``(F(t, u), J(u) v)``, one per member; ``u, v: (batch, *state)``.

    ``method``: ``"reverse"`` (two reverse passes, any twice-differentiable field) or ``"forward"``
    (``torch.func.jvp``). Differentiable with respect to the field's parameters (and ``u``) when grad
    mode is on.
    """
    field = _flat_field(vector_field, _as_time(t, u), tuple(u.shape[1:]))
    du_dt, jv = _jvp_flat(field, u.reshape(u.shape[0], -1), v.reshape(v.shape[0], -1), method)
    return du_dt.reshape(u.shape), jv.reshape(u.shape)


def vector_jacobian_product(vector_field: VectorField, t: Tensor | float, u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``(F(t, u), J(u)^T w)`` by reverse-mode AD, one per member; ``u, w: (batch, *state)``."""
    field = _flat_field(vector_field, _as_time(t, u), tuple(u.shape[1:]))
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():
        flat = u.reshape(u.shape[0], -1)
        x = flat if flat.requires_grad else flat.detach().requires_grad_()
        y = field(x)
        (wj,) = torch.autograd.grad(y, x, w.reshape(w.shape[0], -1), create_graph=differentiable, allow_unused=True)
        wj = torch.zeros_like(x) if wj is None else wj
    if not differentiable:
        y, wj = y.detach(), wj.detach()
    return y.reshape(u.shape), wj.reshape(u.shape)


def dense_jacobian(vector_field: VectorField, t: Tensor | float, u: Tensor, *, method: str = "reverse") -> Tensor:
    """The per-member Jacobian ``(batch, n, n)``, column ``j`` from a JVP with the basis vector ``e_j``.

    Costs one batched JVP over ``n * batch`` rows; meant for small ``n``. Differentiable with respect to
    the field's parameters.
    """
    batch, n = u.shape[0], u[0].numel()
    u_flat = u.reshape(batch, n)
    field = _flat_field(vector_field, _as_time(t, u), tuple(u.shape[1:]))
    # all n columns in one batched JVP: member b, column j is row j * batch + b
    basis = torch.eye(n, dtype=u.dtype, device=u.device).repeat_interleave(batch, dim=0)  # (n * batch, n)
    _, columns = _jvp_flat(field, u_flat.repeat(n, 1), basis, method)
    return columns.reshape(n, batch, n).permute(1, 2, 0)  # (batch, row i, column j)
