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

__all__ = ["relative_drift_curves", "invariant_drift", "mean_drift"]


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


def mean_drift(u: np.ndarray, scale: float) -> np.ndarray:
    """``max_t |mean_x u(t) - mean_x u(t_0)| / scale`` per member of fields ``u: (member, time, x)``, over
    the times its state is finite (a member that blew up: until then); NaN without a finite start. The
    spatial mean is conserved by Kuramoto-Sivashinsky (conservative form), so it drifts only by
    round-off in the truth: ``evaluate`` divides by the truth's pointwise rms."""
    with np.errstate(invalid="ignore", over="ignore"):
        means = u.mean(axis=-1)
        change = np.abs(means - means[:, :1])
    change[~np.isfinite(change)] = -np.inf  # a non-finite state: not a drift of the mean
    drift = change.max(axis=1, initial=-np.inf) / scale
    return np.where(np.isfinite(drift), drift, np.nan)
