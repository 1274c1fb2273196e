"""Metrics of a rollout against the truth, one concept per module.

* ``errors``: normalised error, valid prediction time, error growth, stable and resting members
* ``invariants``: drift of conserved quantities (the invariants of ODEs, a field's spatial mean)
* ``spectra``: energy spectra of periodic fields and their distance
* ``statistics``: KL divergence between state histograms (attractor statistics), over the samples
  where model and truth are both finite
* ``lyapunov``: leading Lyapunov exponent of any solver, closure included (torch)
* ``cost``: function evaluations and wall time from file attributes
* ``summary``: median and spread over members, JSON-ready values

All but ``lyapunov`` need numpy only.
"""
from .cost import cost_from_attributes
from .errors import (error_growth, finite_states, normalised_error, reference_scale, resting_members,
                     stable_members, valid_prediction_time)
from .invariants import invariant_drift, mean_drift, relative_drift_curves
from .spectra import compared_modes, energy_spectrum, spectral_distance, wavenumbers
from .statistics import KL_BINS, KL_EPSILON, common_finite_samples, histogram_kl_divergence
from .summary import DEFAULT_SPREAD, json_ready, quantiles, summarise

__all__ = [
    "reference_scale", "normalised_error", "valid_prediction_time", "error_growth", "stable_members", "resting_members",
    "finite_states", "invariant_drift", "mean_drift", "relative_drift_curves", "energy_spectrum", "wavenumbers",
    "spectral_distance", "compared_modes", "histogram_kl_divergence", "common_finite_samples", "KL_BINS",
    "KL_EPSILON", "cost_from_attributes", "DEFAULT_SPREAD", "quantiles", "summarise", "json_ready",
    "leading_lyapunov_exponent", "LyapunovEstimate",
]


def __getattr__(name: str):
    # the Lyapunov estimate steps a solver (torch); import it only when asked for
    if name in ("leading_lyapunov_exponent", "LyapunovEstimate"):
        from . import lyapunov

        return getattr(lyapunov, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
