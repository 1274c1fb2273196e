"""The spectral KS step's quadratic term through DUCC (``ducc0``, the FFT library behind JAX on CPUs).

On the CPU the 8 real FFTs are ~70% of an ETDRK4 step (docs/performance.md), and DUCC does the
batched transforms of these sizes in 0.55-0.95x the time of torch's MKL-backed ``torch.fft``; its
``out=`` arguments also let the step reuse its output buffers instead of allocating 8 arrays a step.
Optional, as pyqg treats pyFFTW: ``pip install ducc0`` (the ``fast`` extra); without it the step
uses ``torch.fft``. Used with the compiled C kernels, single-threaded (``nthreads=1``): where the C
stages run on several threads (``solvers.c_kernels.threads_for``) torch's FFTs are faster, as DUCC's
``nthreads`` does not speed up these batched 1-d transforms (docs/performance.md, "Threads").
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch
from torch import Tensor

__all__ = ["HAVE_DUCC", "SquaredHat", "rfft", "irfft"]

#: ``HYBRIDNDE_DUCC=0`` leaves the transforms to torch (solvers' attribute ``ducc_fft`` per solver)
HAVE_DUCC = importlib.util.find_spec("ducc0") is not None and os.environ.get("HYBRIDNDE_DUCC", "1") != "0"


_COMPLEX = {torch.float64: torch.complex128, torch.float32: torch.complex64}
_REAL = {complex_dtype: real for real, complex_dtype in _COMPLEX.items()}
_NUMPY = {torch.float64: "complex128", torch.float32: "complex64", torch.complex128: "float64", torch.complex64: "float32"}
_ducc_fft = None  # ducc0.fft, imported on first use (~10 ms)


def _fft_module():
    global _ducc_fft
    if _ducc_fft is None:
        import ducc0

        _ducc_fft = ducc0.fft
    return _ducc_fft


def _as_array(x: Tensor):
    """A numpy view of ``x`` (lazily conjugated or negated tensors resolved first), or ``None`` where numpy
    cannot see it (a tensor under torch.func)."""
    if x.is_conj():
        x = x.resolve_conj()
    if x.is_neg():
        x = x.resolve_neg()
    try:
        return x.numpy()
    except RuntimeError:
        return None


def rfft(u: Tensor) -> Tensor | None:
    """``torch.fft.rfft(u, dim=-1)`` by DUCC on one thread, or ``None`` where DUCC cannot take ``u``
    (not on the CPU, needing gradients, another dtype, a tensor numpy cannot see: under torch.func).

    One thread on purpose: torch's batched real FFTs of N <= 64 round differently with 1 and 2 threads
    (measured: torch 2.13, MKL), so a trajectory's states would depend on the thread count.
    """
    if not (HAVE_DUCC and u.is_cpu and u.dtype in _COMPLEX and not u.requires_grad):
        return None
    source = _as_array(u)
    if source is None:
        return None
    out = np.empty((*u.shape[:-1], u.shape[-1] // 2 + 1), dtype=_NUMPY[u.dtype])
    _fft_module().r2c(source, axes=(u.ndim - 1,), forward=True, inorm=0, out=out, nthreads=1)
    return torch.from_numpy(out)


def irfft(u_hat: Tensor, n: int) -> Tensor | None:
    """``torch.fft.irfft(u_hat, n=n, dim=-1)`` by DUCC on one thread, or ``None`` (as ``rfft``)."""
    if not (HAVE_DUCC and u_hat.is_cpu and u_hat.dtype in _REAL and not u_hat.requires_grad
            and u_hat.shape[-1] == n // 2 + 1):
        return None
    source = _as_array(u_hat)
    if source is None:
        return None
    out = np.empty((*u_hat.shape[:-1], n), dtype=_NUMPY[u_hat.dtype])
    # inorm=2: divide by n on the way back, as irfft does
    _fft_module().c2r(source, axes=(u_hat.ndim - 1,), lastsize=n, forward=False, inorm=2, out=out, nthreads=1)
    return torch.from_numpy(out)


class SquaredHat:
    """``rfft(irfft(x_hat)^2)`` for ``x_hat: (batch, n // 2 + 1)`` on the CPU, into reused buffers.

    The results cycle through four output buffers -- ``N(v), N(a), N(b), N(d)`` of one ETDRK4 step,
    all alive until its last update -- so a result stays valid for the next three calls only.
    """

    def __init__(self, batch: int, n_points: int, complex_dtype: torch.dtype):
        import ducc0  # ~10 ms, on first use

        self._c2r, self._r2c = ducc0.fft.c2r, ducc0.fft.r2c
        real_dtype = torch.float64 if complex_dtype == torch.complex128 else torch.float32
        self.n_points = n_points
        self.shape = torch.Size((batch, n_points // 2 + 1))
        self._physical_tensor = torch.empty(batch, n_points, dtype=real_dtype)
        self._physical = self._physical_tensor.numpy()
        self._outputs = [torch.empty(self.shape, dtype=complex_dtype) for _ in range(4)]
        self._output_arrays = [output.numpy() for output in self._outputs]
        self._next = 0
        #: numpy views of the inputs by address (the state and the workspace's stage buffer: ~1 us a
        #: call saved); an address's view reads whatever tensor of this shape lives there now
        self._input_arrays: dict[int, object] = {}

    def __reduce__(self):
        # scratch buffers only: a copy (deepcopy, pickle) gets its own, with the numpy views sharing
        # their tensors' memory (copied separately they would not)
        return SquaredHat, (self.shape[0], self.n_points, self._outputs[0].dtype)

    def __call__(self, stage: int, x_hat: Tensor) -> Tensor:
        index = self._next
        self._next = (index + 1) % 4
        physical = self._physical
        address = x_hat.data_ptr()
        array = self._input_arrays.get(address)
        if array is None or array.shape != tuple(x_hat.shape):
            if len(self._input_arrays) >= 2:  # a trajectory's state and the stage buffer; step() brings a
                self._input_arrays.clear()       # new state each call, so at most one old one is kept
            array = self._input_arrays[address] = x_hat.numpy()
        # inorm=2: divide by N on the way back, as irfft does
        self._c2r(array, axes=(1,), lastsize=self.n_points, forward=False, inorm=2, out=physical)
        self._physical_tensor.square_()  # torch's, not numpy's: a blown-up member overflows silently, as in torch's step
        self._r2c(physical, axes=(1,), forward=True, inorm=0, out=self._output_arrays[index])
        return self._outputs[index]
