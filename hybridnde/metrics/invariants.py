"""Drift of conserved quantities (energy, angular momentum, Casimirs) along predicted trajectories.

For a conservative system each invariant ``I`` (from the solver's ``invariants(u)``) is constant
along the exact flow, so its relative drift

    drift_m = max_t |I(u_m(t)) - I(u_m(t_0))| / |I(u_m(t_0))|

measures how far a learned model has left the true level set (Hairer, Lubich & Wanner, Geometric
Numerical Integration, Ch. IV). Where ``I(t_0) = 0`` the absolute drift is reported instead.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["relative_drift_curves", "invariant_drift"]


def relative_drift_curves(invariant: np.ndarray) -> np.ndarray:
    """``|I(t) - I(t_0)| / |I(t_0)|`` per member and time.

    Args:
        invariant: (member, time) values of one invariant.
    Returns:
        (member, time); NaN where the invariant is non-finite.
    """
    invariant = np.asarray(invariant, dtype=np.float64)
    initial = invariant[:, :1]
    denominator = np.where(np.abs(initial) > 0, np.abs(initial), 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(invariant - initial) / denominator


def invariant_drift(invariants: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Maximum relative drift over time of every invariant, per member.

    Args:
        invariants: name -> (member, time) values, e.g. ``{"energy": ..., "angular_momentum": ...}``.
    Returns:
        name -> (member,): NaN for a member with any non-finite value (it diverged; such members
        are counted by the stable fraction, not here).
    """
    out = {}
    for name, values in invariants.items():
        curves = relative_drift_curves(values)
        finite = np.isfinite(curves).all(axis=1)
        drift = np.full(curves.shape[0], np.nan)
        if curves.shape[1]:
            drift[finite] = curves[finite].max(axis=1)
        out[name] = drift
    return out
