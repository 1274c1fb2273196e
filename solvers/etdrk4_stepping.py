"""ETDRK4 for ``u_t = L u + N(u)`` with a diagonal ``L`` and ``N(u) = g * FFT(u^2) (+ closure)``: the
coefficients (``etdrk4_coefficients``) and fast steps.

The scheme is Cox & Matthews 2002, eq. (26)-(29), as written by Kassam & Trefethen 2005 (Fig. 2)::

    a = E2 v + Q N(v);  b = E2 v + Q N(a);  d = E2 a + Q (2 N(b) - N(v))
    v+ = E v + f1 N(v) + 2 f2 (N(a) + N(b)) + f3 N(d)

Two exact rearrangements make it cheap (no approximation, only the rounding order changes):

* ``d = E v + (E2 - 1) Q N(v) + 2 Q N(b)`` (substitute ``a``), so ``E v`` is shared by ``d`` and ``v+``;
* without a closure ``N(x) = g * W(x)`` with ``W(x) = rfft(irfft(x)^2)`` and the symbol ``g`` (the
  dealiased ``-c/2 ik``) is folded into every coefficient once: ``Q g``, ``(E2 - 1) Q g``, ...

``fourier_step`` does one differentiable step on Fourier coefficients: 8 FFTs and 14 fused elementwise
operations (``addcmul``). ``fourier_step_into`` is the same step when no gradient is needed, writing
into reused buffers (``FourierWorkspace``), touching only the modes below the dealiasing cut where
only nonlinear terms are added, and updating the state in place. ``DenseStepper`` is the same step in
physical space for small grids and batches, where every linear map of the step (the circulant
matrices of the coefficients, each ``irfft(diag(c) rfft(I))``) is one matrix product: 9 operations a
step (4 products, 4 squares, 1 copy) instead of 22, which is what decides speed at batch 1 (per-call
overhead, not arithmetic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["etdrk4_coefficients", "StageCoefficients", "ETDRK4Plan", "fourier_step", "fourier_step_into", "FourierWorkspace", "DenseStepper",
           "circulant_matrix", "dense_matrices"]

def etdrk4_coefficients(linear_hat: np.ndarray, dt: float, contour_points: int = 64) -> dict[str, np.ndarray]:
    """ETDRK4 coefficients for a diagonal linear operator.

    Kassam & Trefethen 2005 (SIAM J. Sci. Comput. 26, eq. 2.5 and Sec. 5): the phi-functions are
    averaged over a circle of radius 1 around each ``L dt`` in the complex plane, which avoids the
    cancellation error of their closed forms near ``L dt = 0``.

    Args:
        linear_hat: (n_modes,) real eigenvalues of the linear operator.
    Returns:
        ``E = exp(L dt)``, ``E2 = exp(L dt/2)``, ``Q``, ``f1``, ``f2``, ``f3`` (Cox & Matthews 2002
        names), each (n_modes,) float64.
    """
    lin = np.asarray(linear_hat, dtype=np.float64) * dt
    roots = np.exp(1j * np.pi * (np.arange(1, contour_points + 1) - 0.5) / contour_points)
    z = lin[:, None] + roots[None, :]  # (n_modes, contour_points) points on the contour
    ez = np.exp(z)
    ez2 = np.exp(z / 2)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.real(values.mean(axis=1))

    return {
        "E": np.exp(lin),
        "E2": np.exp(lin / 2),
        "Q": dt * mean((ez2 - 1) / z),
        "f1": dt * mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3),
        "f2": dt * mean((2 + z + ez * (z - 2)) / z**3),
        "f3": dt * mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3),
    }


#: ``(stage, x_hat) -> N(x_hat)``; stage 0 at ``t``, 1 at ``t + dt/2``, 2 at ``t + dt``
NonlinearTerm = Callable[[int, Tensor], Tensor]


@dataclass(frozen=True)
class StageCoefficients:
    """The six (n_modes,) complex coefficient vectors of one step (see the module docstring).

    ``q`` for ``a`` and ``b``; ``d_u``, ``d_b`` for ``d``; ``f_u``, ``f_ab``, ``f_d`` for ``v+``.
    """

    q: Tensor
    d_u: Tensor
    d_b: Tensor
    f_u: Tensor
    f_ab: Tensor
    f_d: Tensor

    def truncated(self, n_modes: int) -> "StageCoefficients":
        """The first ``n_modes`` of every coefficient (contiguous copies)."""
        return StageCoefficients(**{name: getattr(self, name)[:n_modes].contiguous()
                                    for name in self.__dataclass_fields__})

    @classmethod
    def from_coefficients(cls, coefficients: dict[str, Tensor], factor: Tensor) -> "StageCoefficients":
        """``factor`` (n_modes,) multiplies every coefficient (the nonlinear symbol, or 1)."""
        c = coefficients
        return cls(q=c["Q"] * factor, d_u=(c["E2"] - 1) * c["Q"] * factor, d_b=2 * c["Q"] * factor,
                   f_u=c["f1"] * factor, f_ab=2 * c["f2"] * factor, f_d=c["f3"] * factor)


@dataclass(frozen=True)
class ETDRK4Plan:
    """Everything one ``dt`` needs, on the solver's device, in its complex dtype.

    ``folded``: coefficients with the nonlinear symbol folded in (no closure); they vanish above the
    dealiasing cut, so ``folded_low`` keeps only the modes below it.
    ``plain``: coefficients for ``N = g * W + rfft(closure)`` (with a closure), all modes.
    """

    dt: float
    E: Tensor
    E2: Tensor
    folded: StageCoefficients
    plain: StageCoefficients
    folded_low: StageCoefficients


def fourier_step(u_hat: Tensor, plan: ETDRK4Plan, coefficients: StageCoefficients,
                 nonlinear: NonlinearTerm) -> Tensor:
    """One differentiable ETDRK4 step, ``u_hat: (batch, n_modes)`` complex; returns a new tensor.

    Every intermediate is a fresh tensor, as autograd needs.
    """
    c = coefficients
    n_u = nonlinear(0, u_hat)
    e_u = plan.E * u_hat
    e2_u = plan.E2 * u_hat
    n_a = nonlinear(1, torch.addcmul(e2_u, c.q, n_u))
    n_b = nonlinear(1, torch.addcmul(e2_u, c.q, n_a))
    n_d = nonlinear(2, torch.addcmul(torch.addcmul(e_u, c.d_u, n_u), c.d_b, n_b))
    return torch.addcmul(torch.addcmul(torch.addcmul(e_u, c.f_u, n_u), c.f_ab, n_a + n_b), c.f_d, n_d)


class FourierWorkspace:
    """Reused buffers for ``fourier_step_into`` (one batch size); used only during a step.

    Writing the elementwise updates into warm buffers instead of allocating is what makes them cheap:
    a fresh (batch, n_modes) output costs more than the arithmetic (page faults, cold cache lines).
    The FFTs allocate their results anyway (torch's ``out=`` FFT variants compute, then copy), so
    their outputs are fresh tensors.
    """

    def __init__(self, batch: int, n_points: int, *, complex_dtype: torch.dtype, device: torch.device):
        n_modes = n_points // 2 + 1
        self.e2_u = torch.empty(batch, n_modes, dtype=complex_dtype, device=device)
        self.stage = torch.empty(batch, n_modes, dtype=complex_dtype, device=device)
        self._low_views: dict[int, tuple[Tensor, Tensor]] = {}

    def low_views(self, kept_modes: int) -> tuple[Tensor, Tensor]:
        """``[:, :kept_modes]`` views of ``e2_u`` and ``stage`` (made once)."""
        views = self._low_views.get(kept_modes)
        if views is None:
            views = self._low_views[kept_modes] = (self.e2_u[:, :kept_modes], self.stage[:, :kept_modes])
        return views


def fourier_step_into(u_hat: Tensor, out: Tensor, plan: ETDRK4Plan, coefficients: StageCoefficients,
                      low: StageCoefficients, nonlinear: NonlinearTerm, workspace: FourierWorkspace) -> Tensor:
    """One ETDRK4 step written into ``out`` (which may be ``u_hat`` itself); no gradients.

    ``low`` are ``coefficients`` cut to the modes where they can be non-zero (``len(low.q)``): every
    update that only adds nonlinear terms touches just those (2/3 of the modes without a closure).
    ``u_hat`` is read only before ``out`` is first written, so ``out is u_hat`` updates in place.
    ``nonlinear`` must return a fresh tensor (it is updated in place).
    """
    c, w = coefficients, workspace
    kept = low.q.shape[-1]
    e2_u_low, stage_low = w.low_views(kept)
    n_u = nonlinear(0, u_hat)
    torch.mul(plan.E2, u_hat, out=w.e2_u)
    torch.mul(plan.E, u_hat, out=out)  # E v, shared by d and v+
    n_a = nonlinear(1, torch.addcmul(w.e2_u, c.q, n_u, out=w.stage))  # a
    n_u_low, n_a_low = n_u[:, :kept], n_a[:, :kept]
    e2_u_low.addcmul_(low.q, n_a_low)  # b = E2 v + Q N(a), in e2_u's buffer
    n_b = nonlinear(1, w.e2_u)
    n_b_low = n_b[:, :kept]
    torch.addcmul(out, c.d_u, n_u, out=w.stage)  # d = E v + (E2 - 1) Q N(v) + 2 Q N(b)
    stage_low.addcmul_(low.d_b, n_b_low)
    n_d = nonlinear(2, w.stage)
    out_low = out[:, :kept]
    out_low.addcmul_(low.f_u, n_u_low).addcmul_(low.f_ab, n_a_low.add_(n_b_low)).addcmul_(low.f_d, n_d[:, :kept])
    return out


def circulant_matrix(symbol: Tensor, n_points: int) -> Tensor:
    """(n, n) real matrix ``M`` with ``x @ M == irfft(symbol * rfft(x))`` for rows ``x: (batch, n)``.

    ``symbol: (n // 2 + 1,)`` complex, float64 recommended (the matrix is rounded once, at the end).
    """
    identity = torch.eye(n_points, dtype=symbol.real.dtype, device=symbol.device)
    return torch.fft.irfft(symbol * torch.fft.rfft(identity, dim=-1), n=n_points, dim=-1)


class DenseStepper:
    """ETDRK4 on physical states through precomputed (k n, n) matrices; for inference only.

    Workspace layout, each slot ``(batch, n)``, ``w_x = x^2`` and ``c_x`` the closure at ``x`` (only
    with ``with_closure``): ``[w_a (c_a) | u w_u (c_u) | w_b (c_b) | w_d (c_d)]``, so every stage reads
    one contiguous block: ``a`` from the ``u`` group, ``b`` from the ``a`` group and ``u``, ``d`` from
    the ``u`` and ``b`` groups and ``u+`` from all. The workspace lives only during a step, so one
    stepper serves any number of interleaved trajectories of the same batch size.
    """

    def __init__(self, matrices: tuple[Tensor, Tensor, Tensor, Tensor], batch: int, n_points: int,
                 *, dtype: torch.dtype, device: torch.device, with_closure: bool = False):
        self.a_matrix, self.b_matrix, self.d_matrix, self.final_matrix = matrices
        self.with_closure = with_closure
        n, per_stage = n_points, 2 if with_closure else 1  # slots of one stage value: w_x (and c_x)
        workspace = torch.empty(batch, (4 * per_stage + 1) * n, dtype=dtype, device=device)
        # step() reuses one stage buffer; step_with_closure hands the closure fresh stage tensors instead
        self.stage = None if with_closure else torch.empty(batch, n, dtype=dtype, device=device)
        self.workspace = workspace

        def slot(index: int) -> Tensor:
            return workspace[:, index * n:(index + 1) * n]

        a, u, b, d = 0, per_stage, 2 * per_stage + 1, 3 * per_stage + 1  # first slot of each group
        self.w_a, self.u, self.w_u, self.w_b, self.w_d = slot(a), slot(u), slot(u + 1), slot(b), slot(d)
        if with_closure:
            self.c_a, self.c_u, self.c_b, self.c_d = slot(a + 1), slot(u + 2), slot(b + 1), slot(d + 1)
        self.a_in = workspace[:, u * n:b * n]
        self.b_in = workspace[:, 0:(u + 1) * n]
        self.d_in = workspace[:, u * n:d * n]
        #: the whole ``step`` as one compiled call (``solvers.compiled_steps.DenseStep``), set by its owner
        #: after checking it; used for the states it ``accepts``
        self.compiled = None
        #: ``step`` and ``step_with_closure`` with one Triton kernel a stage (``solvers.fused_dense``), set
        #: by its owner after checking it; used for the states it ``accepts``
        self.fused = None

    def _check(self, u: Tensor) -> None:
        """Refuse a state not of the workspace's shape: ``copy_`` would broadcast it and ``out=`` resize
        the workspace's views to its shape, wrong for every later step."""
        if u.shape != self.u.shape:
            raise ValueError(f"this DenseStepper steps states of shape {tuple(self.u.shape)}, got {tuple(u.shape)}")

    def step(self, u: Tensor) -> Tensor:
        """``u: (batch, n)`` physical -> a new ``(batch, n)`` tensor one step later (``u`` untouched).

        Only for a stepper without closure slots (``step_with_closure`` fills those)."""
        if self.with_closure:
            raise ValueError("this DenseStepper has closure slots: call step_with_closure(u, closure, times)")
        compiled, fused = self.compiled, self.fused
        if compiled is not None and compiled.accepts(u):
            return compiled(u)
        if fused is not None and fused.accepts(u):
            return fused.step(u)
        self._check(u)
        stage, mm, mul = self.stage, torch.mm, torch.mul  # locals: this runs ~15 us, lookups count
        self.u.copy_(u)
        mul(u, u, out=self.w_u)
        mm(self.a_in, self.a_matrix, out=stage)
        mul(stage, stage, out=self.w_a)
        mm(self.b_in, self.b_matrix, out=stage)
        mul(stage, stage, out=self.w_b)
        mm(self.d_in, self.d_matrix, out=stage)
        mul(stage, stage, out=self.w_d)
        return mm(self.workspace, self.final_matrix)

    def step_with_closure(self, u: Tensor, closure: Callable[[Tensor, Tensor], Tensor],
                          times: tuple[Tensor, Tensor, Tensor], *, closure_key: object = None) -> Tensor:
        """``step`` with ``closure(t, x)`` added to the nonlinear term at the stage times ``(t, t + dt/2,
        t + dt)``. The closure sees fresh tensors it may keep (``u`` itself first). ``closure_key``: which
        closure this is, where ``closure`` is a wrapper made anew for each call (the fused step learns
        per closure whether it may read its outputs in place); default ``closure`` itself."""
        if not self.with_closure:
            raise ValueError("this DenseStepper has no closure slots: make it with with_closure=True")
        fused = self.fused
        if fused is not None and fused.accepts(u):
            return fused.step_with_closure(u, closure, times, closure_key=closure_key)
        self._check(u)
        mm, mul = torch.mm, torch.mul
        start, half, end = times
        self.u.copy_(u)
        mul(u, u, out=self.w_u)
        self.c_u.copy_(closure(start, u))
        a = mm(self.a_in, self.a_matrix)
        mul(a, a, out=self.w_a)
        self.c_a.copy_(closure(half, a))
        b = mm(self.b_in, self.b_matrix)
        mul(b, b, out=self.w_b)
        self.c_b.copy_(closure(half, b))
        d = mm(self.d_in, self.d_matrix)
        mul(d, d, out=self.w_d)
        self.c_d.copy_(closure(end, d))
        return mm(self.workspace, self.final_matrix)


def dense_matrices(nonlinear_symbol: Tensor, coefficients: dict[str, Tensor], n_points: int,
                   dtype: torch.dtype, *, with_closure: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four stacked stage matrices of ``DenseStepper`` (built in float64, then cast).

    Rows follow the workspace slots: the quadratic slots ``w_x`` take the coefficients with the
    nonlinear symbol folded in, the closure slots ``c_x`` the plain ones (``N = g W + rfft(C)``).
    """
    double = {name: value.to(torch.float64) for name, value in coefficients.items()}
    g = nonlinear_symbol.to(torch.complex128)
    folded = StageCoefficients.from_coefficients(double, g)
    plain = StageCoefficients.from_coefficients(double, torch.ones_like(g))

    def matrix(symbol: Tensor) -> Tensor:
        return circulant_matrix(symbol.to(torch.complex128), n_points)

    def value(name: str) -> list[Tensor]:
        """The rows of one stage value: its quadratic slot (and its closure slot)."""
        rows = [matrix(getattr(folded, name))]
        return rows + [matrix(getattr(plain, name))] if with_closure else rows

    e, e2 = matrix(double["E"]), matrix(double["E2"])
    stacked = ([e2, *value("q")], [*value("q"), e2], [e, *value("d_u"), *value("d_b")],
               [*value("f_ab"), e, *value("f_u"), *value("f_ab"), *value("f_d")])
    return tuple(torch.cat(rows).to(dtype).contiguous() for rows in stacked)
