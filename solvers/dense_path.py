"""When and how ``KuramotoSivashinskySpectral`` takes the dense physical-space ETDRK4 step.

The dense step (``solvers.etdrk4_stepping.DenseStepper``) folds the transforms into matrices: one
product a stage, ``O(N^2)`` arithmetic instead of the FFT step's ``O(N log N)``, but a handful of
kernels instead of ~16 -- ahead where per-operation costs decide (small ``N``, small batches, GPUs).
``dense_limits`` is the measured crossover per device type; ``implementation`` forces either path.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import ClassVar

import torch
from torch import Tensor

from . import c_kernels
from .etdrk4_stepping import DenseStepper, dense_matrices

__all__ = ["DensePath", "full_rate_fp64"]

#: compute capabilities of the GPUs whose FP64 runs at half their FP32 rate or better: P100, V100, A100,
#: H100/H200, B200/GB200 (NVIDIA's architecture whitepapers). The others (consumer and inference GPUs,
#: 6.1, 7.5, 8.6, 8.9, 12.0, ..., and B300's 10.3) run it at 1/32 to 1/64 of FP32, ~1 TFLOP/s, where
#: the dense step's 0.7 GFLOP a step (N = 256, batch 256) would take ~10x the FFT step (estimated).
FULL_RATE_FP64_CAPABILITIES = frozenset({(6, 0), (7, 0), (8, 0), (9, 0), (10, 0)})
#: GPUs of those capabilities with their FP64 cut down (datasheets: ~1 TFLOP/s): H800, H20
REDUCED_FP64 = re.compile(r"\b(H800|H20)\b")


@lru_cache(maxsize=None)
def _capability(index: int) -> tuple[tuple[int, int], str]:
    return torch.cuda.get_device_capability(index), torch.cuda.get_device_name(index)


def full_rate_fp64(device: torch.device) -> bool:
    """Whether the CUDA ``device`` has full-rate FP64 (``FULL_RATE_FP64_CAPABILITIES``, not
    ``REDUCED_FP64``): the dense step is then worth its ``O(N^2)`` float64 arithmetic."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    capability, name = _capability(index)
    return capability in FULL_RATE_FP64_CAPABILITIES and not REDUCED_FP64.search(name)


class DensePath:
    """Mixin of ``KuramotoSivashinskySpectral`` (which provides the grid, ``implementation``, ``closure``,
    ``coefficients``, ``nonlinear_hat``, ``_stage_times``, the stepper cache ``_dense`` and, from
    ``FusedKernelChecks``, ``_whole_step_fits`` and ``_fuse_dense_stepper``)."""

    #: ``"auto"`` picks the dense path in float64 while ``N <= max_points`` and the dense step's work,
    #: ``batch * N**2`` (x 5/3 with a closure: 20 matrix blocks instead of 12), is at most ``work_limit``:
    #: ``{device type: (max_points, work_limit)}``, measured with benchmarks/ks_dense_crossover.py
    #: (docs/performance.md). CPU: one core, Python and dispatch costs decide up to batch ~8 at N = 64.
    #: CUDA (H100, run 13): with graphs and FP64 matrix units the dense step's 4 Triton kernels beat the
    #: FFT step's 16 (fused updates) by 1.1-3.0x everywhere inside these limits, which leave to the FFT
    #: step only N = 128 at batch 4096 of the dense step's wins (1.1x). GPUs without full-rate FP64
    #: (``full_rate_fp64``) always take the FFT step.
    dense_limits: ClassVar[dict[str, tuple[int, int]]] = {"cpu": (64, 32768), "cuda": (512, 1 << 25)}
    #: a public ``step()`` without a closure that the compiled whole step takes (CPU, transforms in and out
    #: included: ``_whole_physical_step``) stays dense only up to this ``batch * N**2``: beyond it the whole
    #: step is faster (``ks_dense_crossover.py --public-step``: dense/fft speed 1.13-1.34x at N = 32, batch
    #: 1-2; 0.82-0.43x at batch 4-16, 0.86-0.26x at N = 64, batch 1-8, where the limits above chose dense)
    whole_step_dense_work: ClassVar[int] = 2048

    def _use_dense(self, u: Tensor, *, trajectory: bool = False) -> bool:
        """Whether ``u`` takes the dense step; ``trajectory``: for many steps of a kept Fourier state
        (``to_internal``), where the compiled whole Fourier step beats any dense step. A single
        ``step()`` also pays two transforms to and from Fourier space, so the dense step keeps the
        smallest sizes (``whole_step_dense_work``), and the dense limits decide where no whole step runs."""
        if self._needs_autograd(u) or self.implementation == "fft":
            return False
        if self.implementation == "dense":
            return True
        # (the cheap test first: a batch-1 step() at N = 32, which stays dense, pays for every check here)
        if (trajectory or u.shape[0] * self.n_points**2 > self.whole_step_dense_work) and self._whole_step_fits(
                u.shape[0]) and u.dtype == self.dtype and c_kernels.available(u) and (trajectory or u.is_contiguous()):
            return False
        # float64 only: the dense products do not keep the mean exactly (rounding drift ~eps per
        # step), harmless in float64 but larger than the FFT path's in float32 (or TF32 on a GPU)
        limits = self.dense_limits.get(u.device.type)
        if self.dtype != torch.float64 or limits is None or (u.is_cuda and not full_rate_fp64(u.device)):
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
