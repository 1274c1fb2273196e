"""Kuramoto-Sivashinsky ``u_t = -c u u_x - u_xx - u_xxxx`` on a periodic domain ``[0, L)``, pseudo-spectral.

``KuramotoSivashinskySpectral``: real-FFT pseudo-spectral in space, ETDRK4 in time (Cox & Matthews
2002) with the coefficients computed once per ``dt`` by the contour integral of Kassam & Trefethen
2005, 2/3 dealiasing of the quadratic term. The closure joins the nonlinear term at every stage.
The step itself lives in ``solvers.etdrk4_stepping`` (fused, allocation-free without gradients;
a dense physical-space variant for tiny batches); docs/performance.md has the measurements. The
finite-difference host code of the same equation is ``solvers.kuramoto_sivashinsky_fd``.

``c`` is ``nonlinear_coefficient`` (1 for the standard equation; 0 leaves the nonlinear term to the
closure).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import compiled_steps, cpu_fft, fused_stages
from .base import Closure, PeriodicGrid, Solver
from .dense_path import DensePath
from .etdrk4_stepping import (DenseStepper, ETDRK4Plan, FourierWorkspace, StageCoefficients, etdrk4_coefficients,
                              fourier_step, fourier_step_into)
from .fused_checks import FusedKernelChecks

__all__ = ["KuramotoSivashinskySpectral", "dealiasing_mask", "etdrk4_coefficients"]

#: values of ``KuramotoSivashinskySpectral(implementation=...)``
IMPLEMENTATIONS = ("auto", "fft", "dense")


def dealiasing_mask(half: int, fraction: float = 2.0 / 3.0) -> np.ndarray:
    """Modes ``m = 0 .. N/2`` the quadratic term keeps (``half = N/2``): ``m < fraction * N/2``, strictly."""
    return np.arange(half + 1) < fraction * half - 1e-9


class KuramotoSivashinskySpectral(DensePath, FusedKernelChecks, PeriodicGrid, Solver):
    """Pseudo-spectral Kuramoto-Sivashinsky with ETDRK4.

    Args:
        domain_length: period ``L`` (22 is chaotic with leading Lyapunov exponent ~0.043-0.048).
        n_points: grid points ``N`` (even); ``x_j = j L / N``.
        dt: default time step (0.25 is accurate for L = 22, N = 64).
        dealiasing_fraction: keep modes ``m < fraction * N/2`` in the quadratic term (2/3 rule);
            1.0 switches dealiasing off. The cut is applied to the product: the kept modes are free
            of aliasing for fields band-limited to the cut (Orszag 1971: a product's mode ``p + q``
            wraps onto ``p + q - N``, above every kept mode when ``3 m < N``; so the cut is strict, or
            mode N/3 would take an aliased term at N divisible by 3), which a step without a closure
            keeps so (modes above the cut evolve linearly). Content above the cut -- an initial field
            with modes beyond ``fraction * N/2``, or a closure's tendency there, which is added
            unfiltered -- aliases into the kept modes of the next products; KS's linear term damps those
            modes by ``exp((k^2 - k^4) dt)`` a step (``e^-380`` at the first cut mode, 22, for L = 22,
            N = 64, dt = 0.25).
        nonlinear_coefficient: ``c`` in ``-c u u_x``.
        contour_points: points on the Kassam-Trefethen contour (32 is plenty in float64).
        implementation: how steps without gradients are computed (all give the same ETDRK4 step up to
            rounding): ``"fft"`` (8 real FFTs and fused elementwise updates), ``"dense"`` (physical
            space, one matrix product per stage: fastest where per-operation costs outweigh its
            ``O(N^2)`` arithmetic), or ``"auto"`` (dense in float64 within ``dense_limits`` of the
            device, else fft). Steps with gradients always use the FFT path.
        cuda_graphs, capture_closure: CUDA-graph replay of the steps (see ``Solver``): one launch a step
            instead of ~30 on a GPU; no effect on the CPU.

    The FFT path's elementwise updates run as four fused kernels (``solvers.fused_stages``): Triton on
    a GPU (part of CUDA builds of PyTorch), C on the CPU where a compiler is found
    (``solvers.c_kernels``; ``solvers.compiled_steps`` makes whole steps of them: the dense step
    without a closure, and on a power-of-two grid without a closure the whole Fourier step, transforms
    included, 8 or 4 members at once in vector lanes -- for ``step()`` of physical fields the transforms
    to Fourier space and back too: attribute ``whole_fourier_step``); on a GPU the dense step is one Triton
    kernel a stage (``solvers.fused_dense``); attribute ``fused_updates`` (default ``True``) turns all
    of that off. With the C kernels and ``ducc0`` installed (the ``fast`` extra), the quadratic term's
    FFTs of the other steps go through DUCC (``solvers.cpu_fft``; attribute ``ducc_fft``). Before their
    first step they are checked against the unfused torch step on smooth probe states (a failure or
    disagreement means unfused steps from then on, with a warning).

    States are physical-space fields ``u: (batch, n_points)``.
    """

    autonomous = True

    def __init__(self, *, domain_length: float = 22.0, n_points: int = 64, dt: float = 0.25,
                 dealiasing_fraction: float = 2.0 / 3.0, nonlinear_coefficient: float = 1.0,
                 contour_points: int = 64, closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64,
                 implementation: str = "auto", cuda_graphs: bool = True, capture_closure: bool = False):
        super().__init__(dt=dt, closure=closure, device=device, dtype=dtype)
        if n_points < 4 or n_points % 2:
            raise ValueError(f"n_points={n_points} must be an even number >= 4")
        if not 0 < domain_length < np.inf:
            raise ValueError(f"domain_length={domain_length} must be a positive, finite number")
        if contour_points < 1:
            raise ValueError(f"contour_points={contour_points} must be at least 1 (Kassam & Trefethen use 32-64)")
        if not 0 < dealiasing_fraction <= 1:
            raise ValueError(f"dealiasing_fraction={dealiasing_fraction} must be in (0, 1]")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation={implementation!r}; choose one of {IMPLEMENTATIONS}")
        self.domain_length = float(domain_length)
        self.n_points = int(n_points)
        self.dealiasing_fraction = float(dealiasing_fraction)
        self.nonlinear_coefficient = float(nonlinear_coefficient)
        self.contour_points = int(contour_points)
        self.implementation = implementation
        self.cuda_graphs = bool(cuda_graphs)
        self.capture_closure = bool(capture_closure)
        self.fused_updates = True
        self._fused_checked = False
        self.ducc_fft = cpu_fft.HAVE_DUCC
        self._ducc_squared: dict[int, cpu_fft.SquaredHat] = {}
        #: steps without a closure: the compiled whole Fourier step (``compiled_steps.FourierStep``)
        self.whole_fourier_step = True
        self._whole_step: compiled_steps.FourierStep | None = None

        modes = np.arange(self.n_points // 2 + 1)
        wavenumber = 2 * np.pi / self.domain_length * modes
        self._linear_hat_np = wavenumber**2 - wavenumber**4  # symbol of -d_xx - d_xxxx
        derivative = 1j * wavenumber
        derivative[-1] = 0.0  # odd derivative of the Nyquist mode is not representable on the grid
        keep = dealiasing_mask(self.n_points // 2, self.dealiasing_fraction)  # (the Nyquist mode is 0 anyway)
        # symbol of -c/2 d_x (u^2) with the dealiasing mask folded in
        nonlinear_hat = -0.5 * self.nonlinear_coefficient * derivative * keep

        self.complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        as_complex = dict(dtype=self.complex_dtype, device=self.device)
        self.wavenumber = torch.as_tensor(wavenumber, dtype=dtype, device=self.device)
        self.linear_hat = torch.as_tensor(self._linear_hat_np, dtype=dtype, device=self.device)
        self.nonlinear_hat = torch.as_tensor(nonlinear_hat, **as_complex)
        self.derivative_hat = torch.as_tensor(derivative, **as_complex)
        self._coefficients: dict[float, dict[str, Tensor]] = {}
        self._plans: dict[float, ETDRK4Plan] = {}
        self._dense: dict[tuple[float, int, bool], DenseStepper] = {}  # (dt, batch, closure or not)
        self._workspaces: dict[int, FourierWorkspace] = {}

    def __getstate__(self) -> dict:
        """Copies and pickles leave the step buffers behind (made again on first use): they are scratch,
        and neither their views nor the compiled step's raw addresses survive being copied apart."""
        state = super().__getstate__()
        state.update(_dense={}, _workspaces={}, _ducc_squared={}, _whole_step=None)
        return state

    # -- transforms -------------------------------------------------------------------------------
    def to_fourier(self, u: Tensor) -> Tensor:
        """``(batch, n) physical -> (batch, n // 2 + 1)`` real-FFT coefficients ``u_hat``."""
        return torch.fft.rfft(u, dim=-1)

    def to_physical(self, u_hat: Tensor) -> Tensor:
        return torch.fft.irfft(u_hat, n=self.n_points, dim=-1)

    # -- physics ----------------------------------------------------------------------------------
    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        u_hat = self.to_fourier(u)
        return self.to_physical(self.linear_hat * u_hat + self.nonlinear_hat * self.to_fourier(u * u))

    def jvp(self, t: Tensor | float, u: Tensor, v: Tensor) -> Tensor:
        """Exact directional derivative of ``known_rhs`` at ``u`` along ``v``: ``-c (u v)_x - v_xx - v_xxxx``.

        ``u, v: (batch, n)``; the quadratic term is dealiased as in ``known_rhs``.
        """
        return self.to_physical(self.linear_hat * self.to_fourier(v)
                                + 2.0 * self.nonlinear_hat * self.to_fourier(u * v))

    def nonlinear_hat_term(self, t: Tensor, u_hat: Tensor) -> Tensor:
        """Fourier transform of everything but the linear part: quadratic term plus closure."""
        u = self.to_physical(u_hat)
        if self.closure is None:
            return self.nonlinear_hat * self.to_fourier(u * u)
        return torch.addcmul(self.to_fourier(self.closure_tendency(t, u)), self.nonlinear_hat, self.to_fourier(u * u))

    # -- ETDRK4 -----------------------------------------------------------------------------------
    def coefficients(self, dt: float) -> dict[str, Tensor]:
        """ETDRK4 coefficients for ``dt``, computed once and cached on the solver's device."""
        if dt not in self._coefficients:
            raw = etdrk4_coefficients(self._linear_hat_np, dt, self.contour_points)
            self._coefficients[dt] = {name: torch.as_tensor(value, dtype=self.dtype, device=self.device)
                                      for name, value in raw.items()}
        return self._coefficients[dt]

    def plan(self, dt: float) -> ETDRK4Plan:
        """Precombined step coefficients for ``dt`` (complex, cached; see ``solvers.etdrk4_stepping``)."""
        plan = self._plans.get(dt)
        if plan is None:
            # combine in float64, round once to the solver's dtype
            raw = {name: torch.as_tensor(value, dtype=torch.complex128, device=self.device)
                   for name, value in etdrk4_coefficients(self._linear_hat_np, dt, self.contour_points).items()}
            symbol = self.nonlinear_hat.to(torch.complex128)

            def cast(stage: StageCoefficients) -> StageCoefficients:
                return StageCoefficients(**{name: getattr(stage, name).to(self.complex_dtype)
                                            for name in StageCoefficients.__dataclass_fields__})

            nonzero = torch.nonzero(symbol != 0)
            kept_modes = int(nonzero.max()) + 1 if len(nonzero) else 1  # the dealiasing cut
            folded = cast(StageCoefficients.from_coefficients(raw, symbol))
            plan = ETDRK4Plan(dt=dt, E=raw["E"].to(self.complex_dtype), E2=raw["E2"].to(self.complex_dtype),
                              folded=folded, folded_low=folded.truncated(kept_modes),
                              plain=cast(StageCoefficients.from_coefficients(raw, torch.ones_like(symbol))))
            self._plans[dt] = plan
        return plan

    def _fourier_workspace(self, batch: int) -> FourierWorkspace:
        workspace = self._workspaces.get(batch)
        if workspace is None:
            if len(self._workspaces) > 8:  # bounded: one per batch size in use
                self._workspaces.clear()
            workspace = FourierWorkspace(batch, self.n_points, complex_dtype=self.complex_dtype, device=self.device)
            self._workspaces[batch] = workspace
        return workspace

    def step_fourier(self, t: Tensor | float, u_hat: Tensor, dt: float | None = None) -> Tensor:
        """One ETDRK4 step on Fourier coefficients ``u_hat: (batch, n // 2 + 1)``; returns a new tensor.

        Cox & Matthews 2002, eq. (26)-(29), in the form of Kassam & Trefethen 2005, Fig. 2, with the
        exact rearrangements of ``solvers.etdrk4_stepping``.
        """
        return self._fourier_step(t, u_hat, self.resolve_dt(dt), in_place=False)

    def _fourier_step(self, t: Tensor | float, u_hat: Tensor, dt: float, *, in_place: bool) -> Tensor:
        """``in_place``: overwrite ``u_hat`` with the result when no gradient is needed (internal state)."""
        plan = self.plan(dt)
        if self._needs_autograd(u_hat):
            return fourier_step(u_hat, plan, *self._nonlinear_terms(t, dt))
        if in_place and self.closure is None:
            whole = self._whole_fourier_step(u_hat, plan)
            if whole is not None:  # no closure: the whole step in one compiled call
                return whole(u_hat, plan)
        workspace = self._fourier_workspace(u_hat.shape[0])
        coefficients, nonlinear = self._nonlinear_terms(t, dt, differentiable=False)
        low = plan.folded_low if self.closure is None else plan.plain
        if in_place and self.fused_updates and self._fusable(u_hat) and fused_stages.available(u_hat):
            fused_nonlinear = nonlinear if self.closure is not None else self._fused_squared_hat(u_hat)
            if self._fused_checked:
                return fused_stages.fused_fourier_step_into(u_hat, plan, coefficients, fused_nonlinear, workspace,
                                                            kept=low.q.shape[-1])
            return self._first_fused_step(u_hat, plan, coefficients, low, nonlinear, fused_nonlinear, workspace)
        out = u_hat if in_place else torch.empty_like(u_hat)
        return fourier_step_into(u_hat, out, plan, coefficients, low, nonlinear, workspace)

    def _squared_hat(self, stage: int, x_hat: Tensor) -> Tensor:
        """``rfft(irfft(x_hat)^2)``, squaring in place: the no-gradient quadratic term (symbol folded out)."""
        u = torch.fft.irfft(x_hat, n=self.n_points)
        return torch.fft.rfft(u.mul_(u))

    def _stage_times(self, t: Tensor | float, dt: float) -> tuple[Tensor, Tensor, Tensor]:
        """What the closure sees at the stages: ``t``, ``t + dt/2``, ``t + dt`` (0-dim tensors)."""
        t = self.as_time(t)
        return t, t + 0.5 * dt, t + dt

    def _nonlinear_terms(self, t: Tensor | float, dt: float, *, differentiable: bool = True):
        """``(coefficients, nonlinear)`` for the step functions; ``nonlinear`` returns fresh tensors.

        ``differentiable=False`` squares the inverse FFT's output in place.
        """
        plan, n = self.plan(dt), self.n_points
        irfft, rfft = torch.fft.irfft, torch.fft.rfft
        if self.closure is None:
            if differentiable:
                return plan.folded, lambda stage, x_hat: rfft(irfft(x_hat, n=n).square())
            return plan.folded, self._squared_hat
        stage_times, closure, symbol = self._stage_times(t, dt), self.closure_tendency, self.nonlinear_hat

        def with_closure(stage: int, x_hat: Tensor) -> Tensor:
            u = irfft(x_hat, n=n)  # never squared in place: the closure may keep it or return it
            return torch.addcmul(rfft(closure(stage_times[stage], u)), symbol, rfft(u * u))

        return plan.plain, with_closure

    def step(self, t: Tensor | float, u: Tensor, dt: float | None = None) -> Tensor:
        dt = self.dt if dt is None else self.resolve_dt(dt)
        # (inline for the per-step cost at batch 1) the dense step would broadcast a wrong shape, and
        # its reused buffers would take it; another dtype would come back in the solver's, or not
        if u.ndim != 2 or u.shape[1] != self.n_points or u.dtype != self.dtype:
            self.check_state(u)
        if u.shape[0] == 0:
            return u.clone()  # nothing to step (and MKL's FFTs refuse empty batches)
        if self._use_dense(u):
            return self._dense_step(self._dense_stepper(u, dt), t, u, dt)
        if self.closure is None:
            plan = self.plan(dt)
            whole = self._whole_physical_step(u, plan)
            if whole is not None:  # the transforms and the step in one compiled call
                return whole.physical(u, plan)
        # the transform is a new tensor, ours to update in place (fused kernels) when no gradient is needed
        return self.to_physical(self._fourier_step(t, self.to_fourier(u), dt, in_place=True))

    # trajectory() keeps its state between steps: Fourier coefficients (complex) on the FFT path,
    # the physical field (real) on the dense path, which needs no transforms at all
    # with ducc0, a batch's transforms in and out of a trajectory run on one thread: its states then do
    # not depend on the thread count (torch's share a batch among threads and round differently at
    # N <= 64 with 1 and 2; the whole step gives the same bits on any number). A lone member's
    # transform is one thread's work in torch too, and ~4 us a save cheaper there.
    def to_internal(self, u: Tensor) -> Tensor:
        if self._use_dense(u, trajectory=True):
            return super().to_internal(u)
        self._note_closure_weights(u)
        transformed = cpu_fft.rfft(u) if self.ducc_fft and u.shape[0] > 1 else None
        return self.to_fourier(u) if transformed is None else transformed  # a new tensor: ours to update in place

    def from_internal(self, state: Tensor) -> Tensor:
        if not state.is_complex():
            return super().from_internal(state)
        transformed = cpu_fft.irfft(state, self.n_points) if self.ducc_fft and state.shape[0] > 1 else None
        return self.to_physical(state) if transformed is None else transformed

    def _step_eagerly(self, t: Tensor | float, state: Tensor, dt: float) -> Tensor:
        if state.is_complex():  # the Fourier state is ours (made by to_internal): update it in place
            whole = self._whole_step
            # no closure: straight to the compiled whole step (small batches: the Python work is what costs)
            if whole is not None and self._whole_step_fits(state.shape[0]) and self._fusable(state):
                return whole(state, self.plan(dt))
            return self._fourier_step(t, state, dt, in_place=True)
        # dense path: the per-step Python work matters at batch 1 (~16 us a step), so reuse the stepper
        # directly, with _needs_autograd inlined (one call layer less on that hot path)
        closure = self.closure
        stepper = self._dense.get((dt, state.shape[0], closure is not None))
        if stepper is not None and not (torch.is_grad_enabled() and (state.requires_grad or closure is not None)):
            return stepper.step(state) if closure is None else self._dense_step(stepper, t, state, dt)
        return self.step(t, state, dt)

    def _graph_buffers(self, state: Tensor, dt: float) -> tuple:
        if state.is_complex():
            return (self._fourier_workspace(state.shape[0]), self.plan(dt))
        return (self._dense_stepper(state, dt),)
