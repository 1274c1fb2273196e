"""How ``KuramotoSivashinskySpectral`` vets its fused kernels before trusting them.

The fused paths -- Triton kernels on a GPU (``solvers.fused_stages``, and the dense step's stages:
``solvers.fused_dense``), compiled C kernels and DUCC transforms on the CPU (``solvers.c_kernels``,
``solvers.cpu_fft``), the compiled whole Fourier step and the compiled dense step -- each replace torch
operations of the ETDRK4 step; ``fused_updates`` switches them all off. Each is run once on
a smooth probe state next to the plain torch step; a failure or a different increment (``solvers.graph_replay.same_increment``) means the
torch step from then on, with a warning. The states they may touch at all are those ``_fusable``
admits: the kernels read raw memory and write the state in place.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from . import c_kernels, compiled_steps, cpu_fft, fused_dense, fused_stages
from .graph_replay import same_increment
from .etdrk4_stepping import DenseStepper, ETDRK4Plan, FourierWorkspace, StageCoefficients, fourier_step_into

__all__ = ["FusedKernelChecks"]


class FusedKernelChecks:
    """Mixin of ``KuramotoSivashinskySpectral`` (which provides the grid, dtypes, transforms,
    ``_squared_hat`` and the attributes ``_fused_checked``, ``ducc_fft``, ``_ducc_squared``, ``_dense``,
    ``whole_fourier_step`` and ``_whole_step``); the switch ``fused_updates`` is its own."""

    @property
    def fused_updates(self) -> bool:
        """Whether the fused paths run (Triton or C stage kernels, DUCC transforms, the compiled and fused
        dense and whole steps). Turning it off holds from the next step on, also for dense steppers
        that already have a compiled or fused step and for steps already captured as CUDA graphs."""
        return self._fused_updates

    @fused_updates.setter
    def fused_updates(self, value: bool) -> None:
        self._fused_updates = bool(value)
        if not value:
            for stepper in getattr(self, "_dense", {}).values():
                stepper.compiled = stepper.fused = None
            captured = getattr(self, "_captured", None)
            if captured is not None:
                captured.clear()  # graphs made with the fused paths (captured again, unfused, when next needed)

    def _fuse_dense_stepper(self, stepper: DenseStepper) -> None:
        """Give a new ``stepper`` its kernels, once they made its torch step's increment on a probe: the
        Triton stages (``fused_dense.FusedDenseStep``) where Triton runs (a GPU, or interpreted), else the
        compiled C step (``compiled_steps.DenseStep``, CPU, no closure slots). The Triton stages of a stepper
        with closure slots are checked with a stand-in closure that depends on time and state (the
        solver's own closure must see exactly 4 calls a step; whether its outputs may be read in place
        is learned from its own first step, ``closure_key``)."""
        if not self.fused_updates:
            return
        probe = self.to_physical(self._fused_probe(stepper.u))
        if fused_dense.available(stepper.u):
            fused = fused_dense.FusedDenseStep(stepper)
            times = tuple(torch.tensor(t, dtype=probe.dtype, device=probe.device) for t in (0.3, 0.4, 0.5))

            def stand_in(t: Tensor, x: Tensor) -> Tensor:
                return 0.1 * torch.sin(x) + t

            def step(dense) -> Tensor:  # the stepper's torch step or the fused one
                return dense.step_with_closure(probe, stand_in, times) if stepper.with_closure else dense.step(probe)

            if self._fused_agrees(probe, step(stepper), lambda: step(fused)):
                stepper.fused = fused
        elif not stepper.with_closure and c_kernels.available(stepper.workspace):
            compiled = compiled_steps.DenseStep(stepper)
            if self._fused_agrees(probe, stepper.step(probe), lambda: compiled(probe)):
                stepper.compiled = compiled

    def _first_fused_step(self, u_hat: Tensor, plan: ETDRK4Plan, coefficients: StageCoefficients,
                          low: StageCoefficients, nonlinear, fused_nonlinear, workspace: FourierWorkspace) -> Tensor:
        """The fused kernels' first step, after checking them (and DUCC's transforms, where used) against
        the unfused torch step on a smooth probe state of the same shape (not the state itself, whose
        blown-up members would differ in where they turn NaN, nor with the closure, which must see
        exactly 4 calls a step): a failure or a different increment means unfused steps from then on,
        with a warning."""
        probe = self._fused_probe(u_hat)
        expected = self._unfused_probe_step(probe, plan, coefficients, low, workspace)
        kept = low.q.shape[-1]
        probe_nonlinear = self._fused_squared_hat(u_hat)
        self._fused_checked = True
        if not self._fused_agrees(probe, expected, lambda: fused_stages.fused_fourier_step_into(
                probe.clone(), plan, coefficients, probe_nonlinear, workspace, kept=kept)):
            return fourier_step_into(u_hat, u_hat, plan, coefficients, low, nonlinear, workspace)
        return fused_stages.fused_fourier_step_into(u_hat, plan, coefficients, fused_nonlinear, workspace, kept=kept)

    def _whole_step_fits(self, batch: int) -> bool:
        """Whether a step of ``batch`` members is one for the compiled whole step (no closure, kernels on,
        a power-of-two grid, a size ``compiled_steps.whole_step_fits``)."""
        return (self.closure is None and self.fused_updates and self.whole_fourier_step
                and compiled_steps.FourierStep.supports(self.n_points) and compiled_steps.whole_step_fits(batch, self.n_points))

    def _whole_fourier_step(self, u_hat: Tensor, plan: ETDRK4Plan):
        """The compiled whole step (``compiled_steps.FourierStep``) for ``u_hat`` where it applies, once it
        made the torch step's increment on probe states through each of its code paths; else ``None``."""
        if not (self._whole_step_fits(u_hat.shape[0]) and self._fusable(u_hat) and c_kernels.available(u_hat)):
            return None
        if self._whole_step is None:
            whole = compiled_steps.FourierStep(self.n_points, self.complex_dtype)
            if not self._whole_step_agrees(whole, plan, u_hat, physical=False):
                return None
            self._whole_step = whole
        return self._whole_step

    def _whole_step_agrees(self, whole, plan: ETDRK4Plan, like: Tensor, *, physical: bool) -> bool:
        """Whether ``whole`` (a ``compiled_steps.FourierStep``) made the torch step's increment on probes of
        each batch in ``whole.probe_batches`` (every code path it has), through its Fourier entry point
        or, ``physical``, its physical one; ``like``: a tensor on the device to probe on."""
        for batch in whole.probe_batches:
            probe = self._fused_probe(like.new_empty((batch, 1)))
            expected = self._unfused_probe_step(probe, plan, plan.folded, plan.folded_low, self._fourier_workspace(batch))
            if physical:
                probe, expected = self.to_physical(probe), self.to_physical(expected)
                step = lambda probe=probe: whole.physical(probe, plan)
            else:
                step = lambda probe=probe: whole(probe.clone(), plan)
            if not self._fused_agrees(probe, expected, step):
                return False
        return True

    def _whole_physical_step(self, u: Tensor, plan: ETDRK4Plan):
        """The compiled whole step for a public ``step()`` of physical fields ``u: (batch, n)`` -- the
        transforms to Fourier space and back in the same call -- where it applies, once its physical
        entry point made the torch step on its own probes (on top of ``_whole_fourier_step``'s); else
        ``None``."""
        if not (self._whole_step_fits(u.shape[0]) and u.dtype == self.dtype and u.is_cpu and self.device.type == "cpu"
                and u.is_contiguous() and not u.is_neg() and not u.requires_grad and c_kernels.available(u)):
            return None
        whole = self._whole_step
        if whole is None:  # a template of the Fourier state's shape, dtype and device for its checks
            template = u.new_empty((u.shape[0], self.n_points // 2 + 1), dtype=self.complex_dtype)
            whole = self._whole_fourier_step(template, plan)
            if whole is None:
                return None
        if not whole.physical_checked:
            if not self._whole_step_agrees(whole, plan, u, physical=True):
                self._whole_step = None
                return None
            whole.physical_checked = True
        return whole

    def _fusable(self, u_hat: Tensor) -> bool:
        """Whether the fused kernels may read ``u_hat`` as raw memory next to the solver's coefficients and
        buffers: its shape ``(batch, n // 2 + 1)``, dtype and device type (``step()`` does not check
        states; the torch step raises on a wrong one), dense, no lazy conjugate or negation, and no
        autograd history to corrupt (the kernels write it in place)."""
        return (u_hat.dtype == self.complex_dtype and u_hat.device.type == self.device.type and u_hat.ndim == 2
                and u_hat.shape[1] == self.n_points // 2 + 1 and u_hat.is_contiguous() and not u_hat.is_conj()
                and not u_hat.is_neg() and not u_hat.requires_grad)

    def _fused_squared_hat(self, u_hat: Tensor):
        """The quadratic term of fused steps: DUCC's transforms into reused buffers on the CPU where
        ``ducc0`` is installed (``solvers.cpu_fft``; attribute ``ducc_fft``), else ``_squared_hat``.

        Where the C stages run on several threads (``c_kernels.threads_for``) torch's FFTs, which
        split their batch the same way, are faster than DUCC's (whose ``nthreads`` does not speed up
        these batched 1-d transforms): docs/performance.md, "Threads"."""
        if not (self.ducc_fft and u_hat.is_cpu) or c_kernels.threads_for(u_hat) > 1:
            return self._squared_hat
        squared = self._ducc_squared.get(u_hat.shape[0])
        if squared is None:
            try:
                squared = cpu_fft.SquaredHat(u_hat.shape[0], self.n_points, self.complex_dtype)
            except Exception as error:  # noqa: BLE001 -- an installed but broken ducc0: torch's FFTs
                warnings.warn(f"DUCC transforms unavailable ({type(error).__name__}: {error}); "
                              f"{type(self).__name__} uses torch.fft", RuntimeWarning, stacklevel=3)
                self.ducc_fft = False
                return self._squared_hat
            if len(self._ducc_squared) > 8:  # bounded: one per batch size in use
                self._ducc_squared.clear()
            self._ducc_squared[u_hat.shape[0]] = squared
        return squared

    def _fused_agrees(self, probe: Tensor, expected: Tensor, fused_step) -> bool:
        """Whether ``fused_step()`` (the fused kernels on ``probe``) made the unfused step's increment
        ``expected``; if not (or if it fails), a warning and ``fused_updates = False`` for good."""
        try:
            agrees = same_increment(probe, fused_step(), expected)
        except Exception as error:  # noqa: BLE001 -- any compiler or launch failure: keep the unfused path
            agrees, reason = False, f"failed ({type(error).__name__}: {error})"
        else:
            reason = "differ from the unfused step"
        if not agrees:
            warnings.warn(f"fused ETDRK4 updates {reason}; {type(self).__name__} uses the unfused step from now on",
                          RuntimeWarning, stacklevel=3)
            self.fused_updates = False
        return agrees

    def _unfused_probe_step(self, probe: Tensor, plan: ETDRK4Plan, coefficients: StageCoefficients,
                            low: StageCoefficients, workspace: FourierWorkspace) -> Tensor:
        """The plain torch step of ``probe`` (left alone), without a closure: what the fused Fourier
        paths must reproduce."""
        return fourier_step_into(probe.clone(), torch.empty_like(probe), plan, coefficients, low,
                                 self._squared_hat, workspace)

    def _fused_probe(self, like: Tensor) -> Tensor:
        """Fourier coefficients of smooth O(1) fields, one per member of ``like`` (its shape and device)."""
        x = torch.arange(self.n_points, dtype=self.dtype, device=like.device) / self.n_points
        phase = torch.arange(like.shape[0], dtype=self.dtype, device=like.device)[:, None] / max(like.shape[0], 1)
        return self.to_fourier(torch.cos(2 * np.pi * (x + phase)) + 0.3 * torch.sin(6 * np.pi * x))
