"""When and how ``KuramotoSivashinskySpectral`` takes the dense physical-space ETDRK4 step.

The dense step (``solvers.etdrk4_stepping.DenseStepper``) folds the transforms into matrices: one
product a stage, ``O(N^2)`` arithmetic instead of the FFT step's ``O(N log N)``, but a handful of
kernels instead of ~16 -- ahead where per-operation costs decide (small ``N``, small batches, GPUs).
``dense_limits`` is the measured crossover per device type; ``implementation`` forces either path.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from . import c_kernels
from .etdrk4_stepping import DenseStepper, dense_matrices

__all__ = ["DensePath"]


class DensePath:
    """Mixin of ``KuramotoSivashinskySpectral`` (which provides the grid, ``implementation``, ``closure``,
    ``coefficients``, ``nonlinear_hat``, ``_stage_times``, the stepper cache ``_dense`` and, from
    ``FusedKernelChecks``, ``_whole_step_fits`` and ``_fuse_dense_stepper``)."""

    #: ``"auto"`` picks the dense path in float64 while ``N <= max_points`` and the dense step's work,
    #: ``batch * N**2`` (x 5/3 with a closure: 20 matrix blocks instead of 12), is at most ``work_limit``:
    #: ``{device type: (max_points, work_limit)}``, measured with benchmarks/ks_dense_crossover.py
    #: (docs/performance.md). CPU: one core, Python and dispatch costs decide up to batch ~8 at N = 64.
    #: CUDA (H100): with graphs and FP64 matrix units the dense step's 9 torch kernels beat the FFT
    #: step's 16 (fused updates) by 1.2-1.9x up to N = 256 and ~1e7 work; from N = 512 and batch ~64 on,
    #: not. Measured before the dense step became 4 Triton kernels (1.1-1.9x faster again): conservative.
    dense_limits: ClassVar[dict[str, tuple[int, int]]] = {"cpu": (64, 32768), "cuda": (512, 1 << 25)}

    def _use_dense(self, u: Tensor, *, trajectory: bool = False) -> bool:
        """Whether ``u`` takes the dense step; ``trajectory``: for many steps of a kept Fourier state
        (``to_internal``), where the compiled whole Fourier step beats any dense step. A single
        ``step()`` also pays two transforms to and from Fourier space, so the dense limits decide."""
        if self._needs_autograd(u) or self.implementation == "fft":
            return False
        if self.implementation == "dense":
            return True
        if trajectory and self._whole_step_fits(u.shape[0]) and u.dtype == self.dtype and c_kernels.available(u):
            return False
        # float64 only: the dense products do not keep the mean exactly (rounding drift ~eps per
        # step), harmless in float64 but larger than the FFT path's in float32 (or TF32 on a GPU)
        limits = self.dense_limits.get(u.device.type)
        if self.dtype != torch.float64 or limits is None:
            return False
        max_points, work_limit = limits
        work = u.shape[0] * self.n_points**2 * (20 if self.closure is not None else 12) // 12
        return self.n_points <= max_points and work <= work_limit

    def _dense_stepper(self, u: Tensor, dt: float) -> DenseStepper:
        with_closure = self.closure is not None
        key = (dt, u.shape[0], with_closure)
        stepper = self._dense.get(key)
        if stepper is None:
            matrices = dense_matrices(self.nonlinear_hat, self.coefficients(dt), self.n_points, self.dtype,
                                      with_closure=with_closure)
            if len(self._dense) > 8:  # bounded: one entry per (dt, batch, closure or not) in use
                self._dense.clear()
            stepper = DenseStepper(matrices, u.shape[0], self.n_points, dtype=self.dtype, device=self.device,
                                   with_closure=with_closure)
            self._fuse_dense_stepper(stepper)
            self._dense[key] = stepper
        return stepper

    def _dense_step(self, stepper: DenseStepper, t: Tensor | float, u: Tensor, dt: float) -> Tensor:
        if stepper.with_closure:
            return stepper.step_with_closure(u, self.closure_tendency, self._stage_times(t, dt),
                                             closure_key=self.closure)
        return stepper.step(u)
