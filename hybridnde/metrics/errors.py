"""Forecast error against the truth: normalised error, valid prediction time, error growth, stability.

Normalised error (Pathak et al. 2018, Phys. Rev. Lett. 120, 024102, their E(t)):

    e_m(t) = || u_m(t) - u*_m(t) ||_2 / sqrt( < || u* ||_2^2 > )

with ``u_m`` the predicted state of member ``m``, ``u*_m`` its true state, ``|| . ||_2`` the
Euclidean norm over the whole state (all grid points or components) and ``< . >`` the mean over
all members and all compared times of the truth. The denominator is one number per comparison, so
errors of different members are on one scale; it is the truth's root-mean-square state norm (not
its standard deviation: a state of all zeros has error 1). Fields on finer grids have larger norms
but the same ratio.

``kind="anomaly"`` (``evaluate.error_scale``) divides by the root-mean-square norm of the truth's
departure from its mean state instead, ``sqrt(< || u* - <u*> ||_2^2 >)`` (the mean per state entry over
members and times): the standard deviation of the state, as normalised errors of Lorenz-63 forecasts
usually are (e.g. Vlachas et al. 2020, Neural Networks 126, 191). Where the mean state is far from 0
(Lorenz-63: z ~ 24) the plain norm is dominated by it, and a model stuck at a fixed point near the
attractor stays "valid" for many Lyapunov times. Both scales come from the compared truth (its
members and times): the anomaly scale is the attractor's standard deviation only when that covers the
attractor -- a long horizon or many members. For one Lorenz-63 trajectory it is 8.9-14.3 over 3-60
time units (the rms scale 28.0-29.8), so compare VPTs across runs of one horizon.

Valid prediction time (VPT): the first time ``e_m(t)`` exceeds a threshold (0.5 by default),
measured from the first compared time.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ERROR_SCALES", "reference_scale", "normalised_error", "valid_prediction_time", "error_growth", "stable_members",
           "resting_members", "finite_states"]


def _flatten_state(u: np.ndarray) -> np.ndarray:
    """``(member, time, *state) -> (member, time, state_size)``."""
    u = np.asarray(u, dtype=np.float64)
    return u.reshape(u.shape[0], u.shape[1], -1)


def finite_states(u: np.ndarray) -> np.ndarray:
    """``(member, time)``: whether every value of each state of ``u: (member, time, *state)`` is finite."""
    return np.isfinite(_flatten_state(u)).all(axis=-1)


#: what ``reference_scale`` measures the truth's size by (``evaluate.error_scale``)
ERROR_SCALES = ("rms", "anomaly")


def reference_scale(truth: np.ndarray, *, kind: str = "rms") -> float:
    """``sqrt(< ||u*||^2 >)``: RMS over members and times of the truth's Euclidean state norm, or with
    ``kind="anomaly"`` that of ``u* - <u*>`` (the module docstring).

    Args:
        truth: (member, time, *state); samples with a non-finite entry are left out.
    """
    if kind not in ERROR_SCALES:
        raise ValueError(f"kind={kind!r}; choose one of {ERROR_SCALES}")
    flat = _flatten_state(truth)
    finite = finite_states(flat)
    if not finite.any():
        raise ValueError("the reference has no finite state to normalise the error by")
    samples = flat[finite]  # (samples, state)
    # In units of the largest magnitude: the squares (and an anomaly's mean) of a huge but finite
    # truth would overflow to an infinite scale, every error 0, where the scale is representable.
    largest = float(np.abs(samples).max())
    if largest == 0.0:
        scale = 0.0
    else:
        samples = samples / largest
        if kind == "anomaly":
            samples = samples - samples.mean(axis=0)
        scale = largest * float(np.sqrt(np.sum(samples**2, axis=-1).mean()))
    if not np.isfinite(scale):
        raise ValueError(f"the reference states' RMS norm exceeds the float range (largest value "
                         f"{largest:.3g}); the normalised error is undefined")
    if scale == 0.0:
        what = "all zero" if kind == "rms" else "all equal (no variability)"
        raise ValueError(f"the reference states are {what}; the normalised error is undefined")
    return scale


def normalised_error(predicted: np.ndarray, truth: np.ndarray, *, scale: float | None = None) -> np.ndarray:
    """``e_m(t)`` of the module docstring.

    Args:
        predicted, truth: (member, time, *state), the same shape.
        scale: the denominator; default ``reference_scale(truth)``.
    Returns:
        (member, time): ``+inf`` where the prediction is non-finite (diverged), NaN where the truth
        is (undefined).
    """
    predicted, truth = _flatten_state(predicted), _flatten_state(truth)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} differ in shape")
    scale = reference_scale(truth) if scale is None else float(scale)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.sqrt(np.sum((predicted - truth) ** 2, axis=-1)) / scale
    error[~finite_states(predicted)] = np.inf
    error[~finite_states(truth)] = np.nan
    return error


def valid_prediction_time(error: np.ndarray, times: np.ndarray, *, threshold: float = 0.5,
                          blowup_time: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per member, the time from ``times[0]`` until ``error`` first exceeds ``threshold``.

    The crossing is interpolated linearly in the error between the last sample at or below the
    threshold and the first above it (samples where the truth is undefined skipped: the interpolation
    spans them). When the first sample above is non-finite (the member diverged between samples) the
    VPT is the last sample where it was still valid; with no valid sample before it, 0. A member that
    never exceeds the threshold gets the whole horizon ``times[-1] - times[0]`` (a censored value:
    see ``reached_horizon``). With ``blowup_time`` given, a member's VPT is at most
    ``blowup_time - times[0]``. NaN errors (undefined truth) are skipped; a member that never exceeds
    the threshold while its truth is defined gets the last time it is defined (censored there, and
    not counted as reaching the horizon: it was the horizon, valid where nothing was known), NaN when
    its truth is defined nowhere.

    Args:
        error: (member, time), e.g. from ``normalised_error``.
        times: (time,) increasing.
        blowup_time: (member,) with NaN where the member did not blow up.
    Returns:
        ``(vpt, reached_horizon)``, both (member,): VPT in the units of ``times``, and whether
        the member stayed valid (and did not blow up) to the last time.
    """
    error = np.asarray(error, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if error.ndim != 2 or error.shape[1] != times.shape[0]:
        raise ValueError(f"error {error.shape} must be (member, time) with time = {times.shape[0]}")
    if not threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be positive")
    start, horizon = times[0], times[-1] - times[0]
    exceeded = error > threshold  # inf counts, NaN does not
    any_exceeded = exceeded.any(axis=1)
    first = np.argmax(exceeded, axis=1)
    defined = ~np.isnan(error)  # the truth known (a diverged prediction's inf is defined)
    last_defined = error.shape[1] - 1 - np.argmax(defined[:, ::-1], axis=1)
    vpt = np.where(defined.any(axis=1), times[last_defined] - start, np.nan)
    vpt[defined[:, -1]] = horizon
    for member in np.flatnonzero(any_exceeded):
        k = first[member]
        if k == 0:
            vpt[member] = 0.0
            continue
        # the last sample before the crossing where the truth is defined (at or below the threshold,
        # finite): usually k - 1; undefined truth samples in between are interpolated over, never credited
        known = np.flatnonzero(defined[member, :k])
        if not known.size:  # nothing known valid before the first sample known to be over
            vpt[member] = 0.0
            continue
        j, after = known[-1], error[member, k]
        if np.isfinite(after):
            fraction = (threshold - error[member, j]) / (after - error[member, j])
            vpt[member] = times[j] + fraction * (times[k] - times[j]) - start
        else:  # diverged in between: valid until the last sample known to be
            vpt[member] = times[j] - start
    reached = ~any_exceeded & defined[:, -1]
    if blowup_time is not None:
        blowup_time = np.asarray(blowup_time, dtype=np.float64)
        blew_up = np.isfinite(blowup_time)
        vpt = np.where(blew_up, np.minimum(vpt, np.maximum(blowup_time - start, 0.0)), vpt)
        reached &= ~blew_up
    return vpt, reached


def error_growth(error: np.ndarray, *, percentiles=(16.0, 50.0, 84.0)) -> np.ndarray:
    """Percentiles over members of the error at every time: ``(len(percentiles), time)``.

    Diverged members (``+inf``) rank as ``+inf``, so the median turns infinite once more than half
    the members have diverged; where the truth is undefined (NaN: a reference member that blew up)
    the member is left out of that time's percentiles (NaN at a time with none left) -- it was ranked
    as diverged, and the curves went infinite with no prediction diverged.
    """
    from .summary import quantiles

    error = np.asarray(error, dtype=np.float64)
    undefined = np.isnan(error)
    if not undefined.any():
        return quantiles(error, percentiles, axis=0)
    return np.stack([quantiles(column[~gap], percentiles) for column, gap in zip(error.T, undefined.T)], axis=-1)


def stable_members(predicted: np.ndarray, *, status: np.ndarray | None = None,
                   blowup_time: np.ndarray | None = None) -> np.ndarray:
    """Members stable to the horizon: status ok (0), every state finite, no blow-up time.

    Args:
        predicted: (member, time, *state).
        status: (member,) CF flag values (0 = ok), optional.
        blowup_time: (member,), NaN where none, optional.
    Returns:
        (member,) bool.
    """
    stable = finite_states(predicted).all(axis=1)
    if status is not None:
        stable &= np.asarray(status) == 0
    if blowup_time is not None:
        stable &= np.isnan(np.asarray(blowup_time, dtype=np.float64))
    return stable


#: ``resting_members``: a member is at rest when it moves less than this share of the truth's motion
RESTING_MOTION_RATIO = 1e-3


def resting_members(predicted: np.ndarray, truth: np.ndarray, *, last: float = 0.25,
                    ratio: float = RESTING_MOTION_RATIO, until: np.ndarray | None = None) -> np.ndarray:
    """Members that are at rest while the truth keeps moving, over the last ``last`` share of the saved
    times (``until``: per member, of the saved times before that index instead, e.g. the member's valid
    time: then a long valid time is the truth lingering near a resting model, not skill; Lorenz-63 near
    one of its unstable foci). At rest: the largest temporal standard deviation of any state entry is
    below ``ratio`` times the truth's over the same times; the truth moves when its own exceeds 1e-6 of
    its rms state size.

    Args:
        predicted, truth: (member, time, *state) on common times.
        until: (member,) indices into time, or ``None`` (the whole horizon).
    Returns:
        (member,) bool; False for members with non-finite states in the window, fewer than 2 saved times
        in it, or a truth at rest itself.
    """
    predicted, truth = _flatten_state(predicted), _flatten_state(truth)
    members, n_times = predicted.shape[:2]
    ends = np.full(members, n_times) if until is None else np.clip(np.asarray(until, dtype=np.int64), 0, n_times)
    with np.errstate(invalid="ignore"):
        size = np.sqrt(np.nanmean(truth**2)) if np.isfinite(truth).any() else 0.0
    resting = np.zeros(members, dtype=bool)
    for member, end in enumerate(ends):
        start = min(int(end * (1 - last)), int(end) - 2)
        if start < 0:
            continue
        window, true_window = predicted[member, start:end], truth[member, start:end]
        if not (np.isfinite(window).all() and np.isfinite(true_window).all()):
            continue
        motion, true_motion = window.std(axis=0).max(), true_window.std(axis=0).max()
        resting[member] = true_motion > 1e-6 * size and motion < ratio * true_motion
    return resting
