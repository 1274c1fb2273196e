"""The whole ETDRK4 steps as single calls into the compiled CPU kernels (``solvers.c_kernels``).

``FourierStep``: the Fourier step without a closure -- four stages and eight real transforms of a
group of members at once, one member per vector lane, in cache (``fourier_step_packed`` and, for
physical fields, ``physical_step_packed`` in ``_kernels.c``). ``DenseStep``: the dense physical-space
step without a closure. The solver vets each before first use (``solvers.fused_checks``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .c_kernels import _SUFFIX, _address, library, threads_for

__all__ = ["WHOLE_STEP_GRAIN", "whole_step_fits", "FourierStep", "DenseStep"]

#: the whole Fourier step shares its groups of lanes among threads from this many complex entries on
#: (and two groups): it does more work per entry than a stage kernel (2 threads / 1, N = 64: 1.02x at
#: 528 entries, 1.20x at 1056, 1.49x at 2112; N = 256, 2064 entries: 1.54x)
WHOLE_STEP_GRAIN = 1024

def whole_step_fits(batch: int, n_points: int) -> bool:
    """Whether ``FourierStep`` is the faster step for ``batch`` members of ``n_points``: at every size
    measured, on one thread and on several (its members in vector lanes: 1.6-1.9x the DUCC transforms
    with the stage kernels between them at the issue's batched sizes, level with the per-member step it
    replaced at batch 1; docs/performance.md, "Members in vector lanes"). The one place that chooses, so
    that tests can send a step to the stage kernels instead (``tests/conftest.py``, ``stage_kernels``)."""
    return True


class FourierStep:
    """The whole ETDRK4 Fourier step without a closure as one compiled call (``fourier_step`` in
    ``_kernels.c``: the four stages and eight real transforms of ``lanes`` members at once, one member
    per vector lane, in cache): ``u_hat: (batch, n // 2 + 1)``, a contiguous CPU tensor of
    ``complex_dtype``, stepped in place.

    One ctypes call a step where the FFT path makes ~12 Python-level calls, and ~2x its arithmetic
    speed (docs/performance.md, "Members in vector lanes"); ``n_points`` a power of two (``supports``).
    The plan's addresses are packed once per plan, so a step is one ctypes call of four arguments plus
    a few attribute reads.
    """

    def __init__(self, n_points: int, complex_dtype: torch.dtype):
        if not self.supports(n_points):
            raise ValueError(f"the compiled Fourier step needs a power of two >= 4 points, not {n_points}")
        self.n_points, self.complex_dtype = n_points, complex_dtype
        half, suffix = n_points // 2, _SUFFIX[complex_dtype]
        # twiddles in float64, rounded once to the step's precision
        self.omega = torch.as_tensor(np.exp(-2j * np.pi * np.arange(half) / n_points), dtype=complex_dtype)
        lib = library()
        #: members a call steps together (32 bytes of them, 64 with AVX-512: 4 or 8 in float64)
        self.lanes = int(getattr(lib, "whole_step_lanes_" + suffix)())
        #: batches whose probes take every code path: wide groups and a lone member (lanes + 1), a
        #: narrow group (2); the solver checks each entry point on them before first use
        self.probe_batches = (self.lanes + 1, 2)
        # per thread: 7 rows of modes + the transform's m complex values, each entry a vector of lanes
        self._scratch_entries = (16 * half + 14) * self.lanes
        self._scratch = torch.empty(self._scratch_entries, dtype=self.omega.real.dtype)
        self._function = getattr(lib, "fourier_step_packed_" + suffix)
        self._physical_function = getattr(lib, "physical_step_packed_" + suffix)
        #: position of complex sample j in the transforms' bit-reversed order (log2(n / 2) bits)
        bits = (half - 1).bit_length()
        self._bit_reversal = torch.tensor([int(f"{j:0{bits}b}"[::-1], 2) if bits else 0 for j in range(half)],
                                          dtype=torch.int64)
        self._plan, self._arguments = None, None
        #: whether ``physical`` made the torch step on the probes (the solver checks before first use)
        self.physical_checked = False

    @staticmethod
    def supports(n_points: int) -> bool:
        return n_points >= 4 and n_points & (n_points - 1) == 0

    def __reduce__(self):
        return FourierStep, (self.n_points, self.complex_dtype)

    def _bind(self, plan) -> None:
        """Pack the grid sizes and the addresses of ``plan``'s folded coefficients (no closure), the
        scratch and the bit-reversal table into one int64 tensor, the kernel's one argument besides the
        states."""
        c = plan.folded
        self._plan = plan  # keeps the tensors behind the addresses alive
        self._arguments = torch.tensor([self.n_points // 2, plan.folded_low.q.shape[-1], *(
            _address(x) for x in (plan.E, plan.E2, c.q, c.d_u, c.d_b, c.f_u, c.f_ab, c.f_d, self.omega, self._scratch,
                                  self._bit_reversal))], dtype=torch.int64)

    def _threads(self, batch: int, entries: Tensor, plan) -> int:
        """Threads for ``batch`` members (``entries``: the state, its size deciding), with the scratch
        grown for them and the arguments packed for ``plan``."""
        threads = min(threads_for(entries, WHOLE_STEP_GRAIN), -(-batch // self.lanes)) or 1
        if threads * self._scratch_entries > self._scratch.numel():
            self._scratch = torch.empty(threads * self._scratch_entries, dtype=self.omega.real.dtype)
            self._plan = None
        if plan is not self._plan:
            self._bind(plan)
        return threads

    def __call__(self, u_hat: Tensor, plan) -> Tensor:
        """One step of ``u_hat`` in place with ``plan`` (an ``ETDRK4Plan`` of this grid and dtype)."""
        batch = u_hat.shape[0]
        threads = self._threads(batch, u_hat, plan)
        self._function(threads, batch, u_hat.data_ptr(), self._arguments.data_ptr())
        torch.autograd.graph.increment_version(u_hat)
        return u_hat

    def physical(self, u: Tensor, plan) -> Tensor:
        """One step of physical fields ``u: (batch, n)`` (contiguous, CPU, the real dtype): a new tensor,
        ``u`` left alone. The transforms to Fourier space and back run in the same call, in cache."""
        batch = u.shape[0]
        out = torch.empty_like(u)
        threads = self._threads(batch, u, plan)
        self._physical_function(threads, batch, u.data_ptr(), out.data_ptr(), self._arguments.data_ptr())
        return out


class DenseStep:
    """``DenseStepper.step`` (no closure) as one compiled call: ``u: (batch, n)`` -> a new tensor.

    Holds the stepper's workspace and matrices (their addresses are taken once); ``u`` must be a
    contiguous CPU tensor of the stepper's dtype and batch size (``accepts``).
    """

    def __init__(self, stepper):
        if stepper.with_closure:
            raise ValueError("the compiled dense step has no closure slots")
        self.batch, self.n_points = stepper.workspace.shape[0], stepper.stage.shape[-1]
        self.dtype = stepper.workspace.dtype
        self.shape = torch.Size((self.batch, self.n_points))
        self._stepper = stepper  # keeps the buffers below alive
        self._function = getattr(library(), "dense_step_" + _SUFFIX[self.dtype])
        self._buffers = tuple(_address(x) for x in (stepper.workspace, stepper.stage, stepper.a_matrix,
                                                    stepper.b_matrix, stepper.d_matrix, stepper.final_matrix))

    def accepts(self, u: Tensor) -> bool:
        return (u.dtype is self.dtype and u.is_cpu and u.shape == self.shape and u.is_contiguous()
                and not u.requires_grad)

    def __reduce__(self):
        # copies and pickles of a stepper drop the compiled step (its raw addresses point into the
        # original's buffers); they step with torch operations
        return _no_compiled_step, ()

    def __call__(self, u: Tensor) -> Tensor:
        out = torch.empty_like(u)
        self._function(self.batch, self.n_points, u.data_ptr(), *self._buffers, out.data_ptr())
        return out


def _no_compiled_step() -> None:
    """What a copied or unpickled ``DenseStep`` becomes (see ``DenseStep.__reduce__``)."""
    return None
