"""Kuramoto-Sivashinsky ``u_t = -c u u_x - u_xx - u_xxxx`` on a periodic domain ``[0, L)``, by finite differences.

``KuramotoSivashinskyFiniteDifference``: method of lines with periodic central differences of any
even order and an explicit integrator, whose linear stability limit is checked up front. Same
closure hook as the pseudo-spectral code (``solvers.kuramoto_sivashinsky``).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from .base import Closure, PeriodicGrid
from .explicit import ExplicitSolver
from .integrators import REAL_AXIS_STABILITY_LIMIT

__all__ = ["KuramotoSivashinskyFiniteDifference", "central_difference_weights"]


@lru_cache(maxsize=None)
def central_difference_weights(derivative: int, order: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Weights of the narrowest central difference for ``d^derivative/dx^derivative`` at accuracy ``order``.

    Solves the Taylor-moment conditions ``sum_j w_j j^m = m! delta_{m, derivative}`` on the offsets
    ``-p..p`` (Fornberg 1988 gives the same weights recursively). Returns ``(offsets, weights)`` for
    unit spacing; divide by ``h**derivative``.
    """
    if order < 2 or order % 2:
        raise ValueError(f"order={order}: central differences have an even order >= 2")
    half_width = (derivative + 1) // 2 + order // 2 - 1
    offsets = np.arange(-half_width, half_width + 1)
    moments = np.vander(offsets.astype(np.float64), increasing=True).T  # moments[m, j] = j**m
    rhs = np.zeros(len(offsets))
    rhs[derivative] = math.factorial(derivative)
    weights = np.linalg.solve(moments, rhs)
    return tuple(int(o) for o in offsets), tuple(float(w) for w in weights)


class KuramotoSivashinskyFiniteDifference(PeriodicGrid, ExplicitSolver):
    """Kuramoto-Sivashinsky by the method of lines with periodic central differences.

    ``-c/2 (u^2)_x - u_xx - u_xxxx`` (conservative form: the mean of ``u`` is conserved exactly).

    Args:
        fd_order: accuracy order of the central differences (2, 4, 6, ...).
        integrator: ``"rk4"`` or ``"euler"``; ``dt`` must respect the explicit stability limit of the
            stiff linear part, checked here (``linear_stability_dt``): roughly ``2.79 h^4 / 16`` for RK4
            at ``fd_order=2`` and ``2.79 * 3 h^4 / 80`` at ``fd_order=4`` (0.0015 for the defaults).
    """

    autonomous = True

    def __init__(self, *, domain_length: float = 22.0, n_points: int = 64, dt: float = 0.001,
                 fd_order: int = 4, integrator: str = "rk4", nonlinear_coefficient: float = 1.0,
                 closure: Closure | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float64, check_stability: bool = True):
        super().__init__(dt=dt, integrator=integrator, closure=closure, device=device, dtype=dtype)
        if n_points < 8:
            raise ValueError(f"n_points={n_points} must be at least 8")
        if not 0 < domain_length < np.inf:
            raise ValueError(f"domain_length={domain_length} must be a positive, finite number")
        self.domain_length = float(domain_length)
        self.n_points = int(n_points)
        self.fd_order = int(fd_order)
        self.nonlinear_coefficient = float(nonlinear_coefficient)
        h = self.domain_length / self.n_points

        off1, w1 = central_difference_weights(1, self.fd_order)
        off2, w2 = central_difference_weights(2, self.fd_order)
        off4, w4 = central_difference_weights(4, self.fd_order)
        half_width = max(len(off4), len(off2)) // 2
        linear = np.zeros(2 * half_width + 1)  # stencil of -d_xx - d_xxxx
        for offsets, weights, scale in ((off2, w2, -1 / h**2), (off4, w4, -1 / h**4)):
            start = half_width - len(offsets) // 2
            linear[start:start + len(offsets)] += scale * np.asarray(weights)
        advection = -0.5 * self.nonlinear_coefficient * np.asarray(w1) / h  # stencil of -c/2 d_x
        self._linear_stencil_np = linear
        self._linear_kernel = torch.as_tensor(linear, dtype=dtype, device=self.device).view(1, 1, -1)
        self._advection_kernel = torch.as_tensor(advection, dtype=dtype, device=self.device).view(1, 1, -1)
        self._linear_pad = half_width
        self._advection_pad = len(off1) // 2
        self._stability_limit: float | None = None
        self.check_stability = bool(check_stability)  # also for the dt a call overrides the solver's with
        if check_stability:
            self.check_stability_limit(self.dt)

    def linear_symbol(self) -> np.ndarray:
        """Eigenvalues of the discrete linear operator, one per Fourier mode ``m = 0..N/2``."""
        half_width = self._linear_pad
        theta = 2 * np.pi * np.arange(self.n_points // 2 + 1) / self.n_points
        offsets = np.arange(-half_width, half_width + 1)
        return np.real(np.exp(1j * np.outer(theta, offsets)) @ self._linear_stencil_np)

    def linear_stability_dt(self) -> float:
        if self._stability_limit is None:
            most_negative = float(self.linear_symbol().min())
            self._stability_limit = (float("inf") if most_negative >= 0
                                     else REAL_AXIS_STABILITY_LIMIT[self.integrator] / -most_negative)
        return self._stability_limit

    stability_remedy = ", fewer grid points, or the spectral solver"

    def stability_description(self) -> str:
        return (f"the finite-difference Kuramoto-Sivashinsky operator (order {self.fd_order}, N={self.n_points}, "
                f"L={self.domain_length:g})")

    def _apply(self, kernel: Tensor, pad: int, u: Tensor) -> Tensor:
        batch_shape = u.shape[:-1]
        flat = u.reshape(-1, 1, self.n_points)
        padded = torch.nn.functional.pad(flat, (pad, pad), mode="circular")
        return _stencil(padded, kernel).reshape(*batch_shape, self.n_points)

    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        return (self._apply(self._linear_kernel, self._linear_pad, u)
                + self._apply(self._advection_kernel, self._advection_pad, u * u))

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        """Exact directional derivative of the discrete ``known_rhs`` along ``v``."""
        return (self._apply(self._linear_kernel, self._linear_pad, v)
                + 2.0 * self._apply(self._advection_kernel, self._advection_pad, u * v))


def _stencil(padded: Tensor, kernel: Tensor) -> Tensor:
    """``conv1d(padded, kernel)``; in float32 on the CPU without oneDNN, whose one-channel convolutions
    of these sizes cost 3x torch's own (measured, torch 2.13: 464 against 163 us a step at N = 64,
    batch 8, where float64 never takes oneDNN). The forward only: a backward pass picks its kernels
    later, with oneDNN on (float32 training through these stencils keeps most of the cost). The
    switch is process-wide for the call's duration: another thread's convolution meanwhile runs
    without oneDNN too, and one entering ``torch.backends.mkldnn.flags`` just then would restore it
    off (slower, never wrong)."""
    if padded.dtype == torch.float32 and not padded.is_cpu:
        # cuDNN may run float32 convolutions in TF32 (torch's default: cudnn.allow_tf32 = True), whose
        # 10-bit mantissa is fine for a network but not for a 1/h^4 stencil whose terms cancel: the
        # tendency came out 1.3x its own size off at N = 64 (inputs rounded to TF32 on the CPU)
        return stencil_by_windows(padded, kernel)
    if padded.dtype != torch.float32 or not padded.is_cpu or not torch.backends.mkldnn.enabled:
        return torch.nn.functional.conv1d(padded, kernel)
    torch.backends.mkldnn.enabled = False
    try:
        return torch.nn.functional.conv1d(padded, kernel)
    finally:
        torch.backends.mkldnn.enabled = True


def stencil_by_windows(padded: Tensor, kernel: Tensor) -> Tensor:
    """``conv1d(padded, kernel)`` for ``padded: (batch, 1, n + 2 pad)``, ``kernel: (1, 1, 2 pad + 1)``
    as products and a sum over each point's window: plain IEEE arithmetic on every device."""
    return (padded.unfold(-1, kernel.shape[-1], 1) * kernel.reshape(-1)).sum(-1)
