"""Moving periodic fields between grids: the filter that defines a sub-grid closure's target."""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["restrict_to_grid", "other_domain_length", "check_domain_length", "point_tolerance"]


def other_domain_length(x, domain_length: float) -> float | None:
    """The period ``L = N (x_1 - x_0)`` of a file's grid ``x: (N,)`` (``x_j = j L / N``) where it is not
    ``domain_length``; ``None`` where it is, or where fewer than two points or no ``x`` say."""
    if x is None or len(x) < 2:
        return None
    found = len(x) * float(x[1] - x[0])
    # 1e-6, as alignment's grid check: a float32 grid (files from other tools) holds x to ~6e-8
    return None if math.isclose(found, domain_length, rel_tol=1e-6) else found


def point_tolerance(n_points: int, domain_length: float) -> float:
    """How far a file's grid point may lie from ``x_j = j L / N`` and still be it: 1e-3 of a cell, or a
    float32 coordinate's rounding (~6e-8 of the domain), whichever is larger (N up to ~16000)."""
    return max(1e-3 * domain_length / n_points, 8 * float(np.spacing(np.float32(domain_length))))


def check_domain_length(dataset, domain_length: float | None, path, expected: str) -> None:
    """``DataError`` naming ``path`` where the grid ``x`` of an open dataset gives another period than
    ``domain_length`` (``expected`` says whose: "the host's") or other points than ``x_j = j L / N``;
    nothing without a length or an ``x``."""
    from .errors import DataError

    x = dataset["x"].values if "x" in dataset.coords else None
    found = other_domain_length(x, domain_length) if domain_length else None
    if found is not None:
        raise DataError(f"{path}: its domain length {found:g} differs from {expected} {domain_length:g}")
    if domain_length and x is not None and len(x):
        # the fields are taken as samples at x_j = j L / N: a grid shifted from it (cell centres) would be
        # moved by the shift without a word (alignment refuses the same in a pair of files)
        spacing = domain_length / len(x)
        offset = float(np.abs(np.asarray(x, dtype=np.float64) - spacing * np.arange(len(x))).max())
        if offset > point_tolerance(len(x), domain_length):
            raise DataError(f"{path}: its grid points are not x_j = j L / N (x differs by up to {offset:.3g}, "
                            f"{offset / spacing:.3g} of a cell, from {len(x)} points from 0 over {domain_length:g}); "
                            "interpolate the fields onto that grid first")


def restrict_to_grid(u, n_coarse: int):
    """Spectral truncation of periodic fields onto ``n_coarse`` points (a sharp low-pass filter).

    Keeps Fourier modes ``|m| < n_coarse / 2`` (on an even coarse grid its Nyquist mode is dropped,
    since a real field cannot represent its sine part; an odd grid has none) and samples on the coarse
    grid ``x_j = j L / n_coarse``. Fields already on ``n_coarse`` points are returned as they are.
    Works on numpy arrays and torch tensors, any leading shape; ``u: (..., n_fine)``.
    """
    n_fine = u.shape[-1]
    if n_coarse == n_fine:
        return u
    if n_coarse > n_fine or n_fine % n_coarse:
        raise ValueError(f"cannot restrict {n_fine} points to {n_coarse}: n_coarse must divide n_fine")
    kept = (n_coarse + 1) // 2  # modes 0 .. ceil(n_coarse / 2) - 1: an odd grid has no Nyquist mode to drop
    if isinstance(u, torch.Tensor):
        u_hat = torch.fft.rfft(u, dim=-1)[..., :kept] * (n_coarse / n_fine)
        return torch.fft.irfft(u_hat, n=n_coarse, dim=-1)
    u_hat = np.fft.rfft(u, axis=-1)[..., :kept] * (n_coarse / n_fine)
    return np.fft.irfft(u_hat, n=n_coarse, axis=-1)
