"""The ETDRK4 Fourier-state step with its elementwise updates fused into four kernels: Triton on a GPU,
C on the CPU (``solvers.c_kernels``).

On a GPU a small step costs what its kernels cost to run one after another, not what they compute:
``fourier_step_into`` is 8 FFTs, 4 squares and 10 elementwise updates, each a kernel of a few
microseconds. The updates between two FFTs depend only on the FFTs' outputs, so each stretch is one
kernel here (the same exact rearrangements as ``solvers.etdrk4_stepping``, its module docstring)::

    a  = E2 v + q N(v)                                          (after N(v))
    b  = E2 v + q N(a);        s = f_u N(v) + f_ab N(a)         (after N(a))
    d  = E v + d_u N(v) + d_b N(b);   s += f_ab N(b)            (after N(b))
    v+ = E v + s + f_d N(d)                                     (after N(d)), in place

which leaves 8 FFTs, 4 squares and 4 fused kernels. Triton ships with CUDA builds of PyTorch; without
it nothing here is used on a GPU. Complex tensors are passed as their real views (re, im
interleaved), since Triton has no complex type. ``TRITON_INTERPRET=1`` runs the Triton kernels on the
CPU (tests); otherwise CPU tensors go to the same four stages compiled from C, where a compiler is
found (``solvers.c_kernels``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch
from torch import Tensor

from . import c_kernels

#: Triton ships with CUDA builds of torch, not with CPU ones; imported only when a fused step runs
HAVE_TRITON = importlib.util.find_spec("triton") is not None

__all__ = ["available", "fused_fourier_step_into"]

BLOCK = 256


#: the kernels index with 32-bit integers (``2 * index`` addresses the imaginary parts)
MAX_ENTRIES = 2**30 - 1
#: Triton's CPU interpreter runs the kernels on any device (read once: Triton reads it when kernels are defined)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _triton(u_hat: Tensor) -> bool:
    return HAVE_TRITON and (INTERPRETED or u_hat.device.type == "cuda")


def available(u_hat: Tensor) -> bool:
    """Whether fused kernels can step ``u_hat``: Triton for a CUDA tensor (or any, interpreted) with few
    enough entries for 32-bit indices; the compiled C kernels for a CPU tensor (``c_kernels.available``)."""
    if _triton(u_hat):
        return u_hat.numel() <= MAX_ENTRIES
    return c_kernels.available(u_hat)


def _real(x: Tensor) -> Tensor:
    """The interleaved real view of a contiguous complex tensor (what the kernels index)."""
    if not x.is_contiguous():
        raise ValueError("the fused ETDRK4 kernels need contiguous tensors")
    return torch.view_as_real(x)


def fused_fourier_step_into(u_hat: Tensor, plan, coefficients, nonlinear, workspace, kept: int | None = None) -> Tensor:
    """``fourier_step_into(u_hat, u_hat, ...)`` (in place, no gradients) with fused updates.

    ``u_hat: (batch, n_modes)`` complex, contiguous; ``coefficients`` a ``StageCoefficients`` over all
    modes; ``nonlinear(stage, x_hat)`` returns fresh contiguous tensors; ``workspace`` a
    ``FourierWorkspace`` (its ``e2_u`` and ``stage`` buffers hold the partial sum and stage values);
    ``kept``: the coefficients vanish from this mode on (a hint the C kernels use; ``None``: all modes).
    """
    if not _triton(u_hat):
        return c_kernels.fused_fourier_step_into(u_hat, plan, coefficients, nonlinear, workspace, kept)
    from . import _fused_kernels as kernels  # Triton, on first use

    c, w = coefficients, workspace
    total, modes = u_hat.numel(), u_hat.shape[-1]
    grid = ((total + BLOCK - 1) // BLOCK,)
    v, stage, s = _real(u_hat), _real(w.stage), _real(w.e2_u)
    e, e2 = _real(plan.E), _real(plan.E2)
    q, d_u, d_b, f_u, f_ab, f_d = (_real(x) for x in (c.q, c.d_u, c.d_b, c.f_u, c.f_ab, c.f_d))
    # Triton launches on the current device (and its stream), not the tensors' one
    with torch.cuda.device(u_hat.device) if u_hat.is_cuda else contextlib.nullcontext():
        n_u = _real(nonlinear(0, u_hat))
        kernels.stage_a[grid](v, n_u, e2, q, stage, total, modes, BLOCK=BLOCK)
        n_a = _real(nonlinear(1, w.stage))
        kernels.stage_b[grid](v, n_u, n_a, e2, q, f_u, f_ab, stage, s, total, modes, BLOCK=BLOCK)
        n_b = _real(nonlinear(1, w.stage))
        kernels.stage_d[grid](v, n_u, n_b, e, d_u, d_b, f_ab, stage, s, total, modes, BLOCK=BLOCK)
        n_d = _real(nonlinear(2, w.stage))
        kernels.stage_out[grid](v, n_d, s, e, f_d, total, modes, BLOCK=BLOCK)
    return u_hat
