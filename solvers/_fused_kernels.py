"""The Triton kernels of ``solvers.fused_stages`` (imported only when a fused step runs: importing
Triton costs ~0.15 s, which CPU users need not pay). Complex arrays are interleaved (re, im) real
views; ``mode = index % modes`` picks the coefficient of an entry's Fourier mode.
"""
import triton
import triton.language as tl


@triton.jit
def _load(pointer, index, mask):
    """Complex entries ``index`` of an interleaved (re, im) array."""
    return tl.load(pointer + 2 * index, mask=mask), tl.load(pointer + 2 * index + 1, mask=mask)


@triton.jit
def _store(pointer, index, mask, real, imag):
    tl.store(pointer + 2 * index, real, mask=mask)
    tl.store(pointer + 2 * index + 1, imag, mask=mask)


@triton.jit
def _mul_add(real, imag, c_pointer, x_pointer, index, mode, mask):
    """``(real, imag) + c[mode] * x[index]``, complex."""
    cr, ci = _load(c_pointer, mode, mask)
    xr, xi = _load(x_pointer, index, mask)
    return real + cr * xr - ci * xi, imag + cr * xi + ci * xr


@triton.jit
def _scaled(c_pointer, x_pointer, index, mode, mask):
    """``c[mode] * x[index]``, complex."""
    cr, ci = _load(c_pointer, mode, mask)
    xr, xi = _load(x_pointer, index, mask)
    return cr * xr - ci * xi, cr * xi + ci * xr


@triton.jit
def stage_a(v, n_u, e2, q, a, total, modes, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < total
    mode = index % modes
    real, imag = _scaled(e2, v, index, mode, mask)
    real, imag = _mul_add(real, imag, q, n_u, index, mode, mask)
    _store(a, index, mask, real, imag)


@triton.jit
def stage_b(v, n_u, n_a, e2, q, f_u, f_ab, b, s, total, modes, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < total
    mode = index % modes
    real, imag = _scaled(e2, v, index, mode, mask)
    real, imag = _mul_add(real, imag, q, n_a, index, mode, mask)
    _store(b, index, mask, real, imag)
    real, imag = _scaled(f_u, n_u, index, mode, mask)
    real, imag = _mul_add(real, imag, f_ab, n_a, index, mode, mask)
    _store(s, index, mask, real, imag)


@triton.jit
def stage_d(v, n_u, n_b, e, d_u, d_b, f_ab, d, s, total, modes, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < total
    mode = index % modes
    real, imag = _scaled(e, v, index, mode, mask)
    real, imag = _mul_add(real, imag, d_u, n_u, index, mode, mask)
    real, imag = _mul_add(real, imag, d_b, n_b, index, mode, mask)
    _store(d, index, mask, real, imag)
    real, imag = _load(s, index, mask)
    real, imag = _mul_add(real, imag, f_ab, n_b, index, mode, mask)
    _store(s, index, mask, real, imag)


@triton.jit
def stage_out(v, n_d, s, e, f_d, total, modes, BLOCK: tl.constexpr):
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = index < total
    mode = index % modes
    real, imag = _load(s, index, mask)
    real, imag = _mul_add(real, imag, e, v, index, mode, mask)
    real, imag = _mul_add(real, imag, f_d, n_d, index, mode, mask)
    _store(v, index, mask, real, imag)
