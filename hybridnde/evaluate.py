"""Compare a rollout file with a reference file: metrics (a JSON-ready dict), figures, a summary.

``evaluate_files(rollout.nc, truth.nc)`` pairs the two (``alignment``: common members, times and
grid), then measures, per member and summarised by median and spread:

* valid prediction time (VPT) at ``evaluate.vpt_threshold``, in time units and, when the case
  gives ``evaluate.lyapunov_exponent``, in Lyapunov times; the fraction reaching the horizon;
* error growth: percentiles over members of the normalised error at every time;
* the fraction of members stable to the horizon (status ok, every state finite);
* drift of the true system's invariants (two-body energy and angular momentum, rigid-body Casimir
  and energy, ...), for the rollout and for the reference (the integrator's own drift);
* for fields: the time-averaged energy spectrum of both, their distance and the modes it compares,
  and the drift of the spatial mean (conserved by Kuramoto-Sivashinsky) over the truth's rms;
* KL divergence between 50-bin histograms of predicted and true states (bins and epsilon recorded);
* cost figures from the files' attributes (NFE, wall time);
* optionally the leading Lyapunov exponent of the model and of the truth (``lyapunov_comparison``).

Definitions are in ``hybridnde.metrics``; ``null`` in the JSON means undefined or infinite.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .alignment import AlignedPair, align_trajectories
from .evaluation_figures import write_figures
from .evaluation_lyapunov import closure_for_lyapunov, lyapunov_comparison, recorded_closure, solver_columns
from .config import CaseConfig, ConfigError
from .evaluation_case import case_from_attributes, check_same_system, system_differences
from .interrupts import interrupts_deferred
from .io import STATUS_FLAGS, DataError, open_trajectories, package_version, platform_description
from .evaluation_summary import format_summary
from .metrics import (DEFAULT_SPREAD, KL_BINS, KL_EPSILON, common_finite_samples, compared_modes, cost_from_attributes,
                      energy_spectrum, error_growth, finite_states, histogram_kl_divergence, invariant_drift, json_ready,
                      mean_drift, normalised_error, reference_scale, resting_members, spectral_distance,
                      stable_members, summarise, valid_prediction_time, wavenumbers)
from .metrics.statistics import MIN_FINITE_SHARE

__all__ = ["evaluate_files", "compute_metrics", "case_from_attributes", "invariants_function",
           "lyapunov_comparison", "write_figures", "format_summary"]

log = logging.getLogger(__name__)

#: error-growth curves longer than this are subsampled evenly in the JSON (figures use every time)
MAX_CURVE_POINTS = 1000
#: an initial normalised error above this fraction of the threshold means the files start apart
INITIAL_MISMATCH = 0.1


def invariants_function(case: CaseConfig | None, components: Sequence[str] | None = None
                        ) -> Callable[[np.ndarray], dict[str, np.ndarray]] | None:
    """``u (..., component) -> {name: (...)}`` from the true system's solver, or ``None`` when it
    conserves nothing (or the case is unknown). ``components``: the names of ``u``'s columns (a file's
    order, matched to the solver's by name); default the solver's own order."""
    if case is None:
        return None
    import torch

    from .systems import build_solver

    solver = build_solver(case.system, case.time, device="cpu", dtype=torch.float64)
    probe = getattr(solver, "invariants", None)
    if probe is None or not probe(torch.zeros((1, *solver.state_shape), dtype=torch.float64) + 1.0):
        return None

    columns = solver_columns(components, solver)

    def invariants(u: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            values = solver.invariants(torch.as_tensor(np.asarray(u, dtype=np.float64)[..., columns]))
        return {name: value.numpy() for name, value in values.items()}

    return invariants


def _subsample(count: int, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(int))


def _blowups_compared(pair: AlignedPair) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """``(blowup_time, status, later)`` as the scores see them: a blow-up after the last time compared
    (a reference shorter than the rollout) is outside the horizon -- its member was valid and stable
    over every time scored -- and ``later`` counts such members."""
    if pair.blowup_time is None:
        return None, pair.status, 0
    blowup_time = np.asarray(pair.blowup_time, dtype=np.float64)
    later = blowup_time > pair.times[-1]
    status = pair.status
    if status is not None:
        status = np.where(later & (np.asarray(status) == STATUS_FLAGS["blew_up"]), STATUS_FLAGS["ok"], status)
    return np.where(later, np.nan, blowup_time), status, int(later.sum())


def compute_metrics(pair: AlignedPair, *, threshold: float = 0.5, lyapunov_exponent: float | None = None,
                    invariants: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
                    spread: Sequence[float] = DEFAULT_SPREAD, error_scale: str = "rms") -> dict[str, Any]:
    """All metrics of ``pair`` that need no solver, as a dict (numpy values; see ``json_ready``).
    ``error_scale``: ``reference_scale``'s ``kind``."""
    spread = tuple(float(p) for p in spread)
    times, start = pair.times, float(pair.times[0])
    try:
        scale = reference_scale(pair.truth, kind=error_scale)
    except ValueError as error:  # a reference with nothing to measure against: bad input, not a crash
        raise DataError(f"{error} (over the {pair.times.size} times the files share)") from None
    error = normalised_error(pair.predicted, pair.truth, scale=scale)
    blowup_time, status, later = _blowups_compared(pair)
    vpt, reached = valid_prediction_time(error, times, threshold=threshold, blowup_time=blowup_time)
    stable = stable_members(pair.predicted, status=status, blowup_time=blowup_time)
    metrics: dict[str, Any] = {
        "members": int(pair.members.size), "times": int(times.size), "start_time": start,
        "horizon": float(times[-1] - start), "time_units": pair.time_units, "threshold": float(threshold),
        "lyapunov_exponent": lyapunov_exponent, "error_scale": scale, "error_scale_kind": error_scale,
        "spread_percentiles": list(spread),
        "initial_error": summarise(error[:, 0], spread=spread),
        "valid_prediction_time": summarise(vpt, spread=spread, per_member=True),
        "reached_horizon_fraction": float(reached.mean()),
        "stable_fraction": float(stable.mean()), "stable_members": int(stable.sum()),
        # at rest while the truth moves: at the horizon's end, and already before the valid time ended
        # (then the VPT measures how long the truth lingered near the resting state, not skill)
        "resting_members": int(resting_members(pair.predicted, pair.truth).sum()),
        "resting_while_valid": int(resting_members(pair.predicted, pair.truth,
                                                   until=np.searchsorted(times, start + vpt, side="right")).sum()),
        "notes": list(pair.notes),
    }
    if later:
        metrics["notes"].append(f"{later} member(s) blew up after the last time compared ({times[-1]:.6g}): within "
                                "the horizon they count as stable")
    ended = int((np.isnan(error[:, -1]) & ~np.isnan(error).all(axis=1) & ~(error > threshold).any(axis=1)).sum())
    if ended:  # valid as far as the truth goes: a lower bound, and not "valid to the horizon"
        metrics["notes"].append(f"the truth is undefined before the horizon for {ended} member(s) that stay within "
                                "the threshold while it is defined: their valid time ends where the truth does "
                                "(a lower bound)")
    metrics["valid_prediction_time"]["members"] = [int(m) for m in pair.members]
    if lyapunov_exponent:
        metrics["valid_prediction_time_lyapunov"] = summarise(vpt * lyapunov_exponent, spread=spread)
    initial = error[:, 0][np.isfinite(error[:, 0])]  # (members that blew up at once: said by their status)
    if initial.size and np.median(initial) > INITIAL_MISMATCH * threshold:
        note = (f"the files start apart (median initial error {np.median(initial):.3g}): are they from the "
                "same initial conditions? Roll out from the reference's states: --set "
                "rollout.initial_conditions=REFERENCE.nc (as `hybridnde run` does)")
        metrics["notes"].append(note)
        log.warning(note)
    levels = error_growth(error, percentiles=(spread[0], 50.0, spread[1]))
    keep = _subsample(times.size)
    # at most MAX_CURVE_POINTS of the times, evenly spread, first and last kept: "of_times" says how many
    metrics["error_growth"] = {"time": times[keep], f"p{spread[0]:g}": levels[0][keep], "median": levels[1][keep],
                               f"p{spread[1]:g}": levels[2][keep], "of_times": int(times.size)}
    if invariants is not None and pair.state_dim == "component":
        predicted_values, true_values = invariants(pair.predicted), invariants(pair.truth)
        drift, reference_drift = invariant_drift(predicted_values), invariant_drift(true_values)
        metrics["invariant_drift"] = {name: {"rollout": summarise(drift[name], spread=spread),
                                             "reference": summarise(reference_drift[name], spread=spread)}
                                      for name in drift}
        finite = finite_states(pair.predicted).all(axis=1)
        for name, values in drift.items():
            undefined = int((np.isnan(values) & finite).sum())  # finite states, yet no invariant
            if undefined:
                defined = int(np.isfinite(values).sum())
                rest = (f"the drift summarises the other {defined}" if defined else
                        "no member has a drift to summarise")
                note = (f"{name} drift: undefined for {undefined} of {len(values)} rollout members whose states stay "
                        f"finite -- they leave the invariant's domain (e.g. a population below zero, where its "
                        f"logarithm is undefined); {rest}")
                metrics["notes"].append(note)
                log.warning(note)
    predicted, truth, share = common_finite_samples(pair.predicted, pair.truth)
    metrics["statistics_finite_share"] = share
    defined = share >= MIN_FINITE_SHARE
    if not defined:
        note = (f"spectrum and histogram statistics undefined: only {100 * share:.3g}% of the predicted states "
                f"(member x time) are finite (at least {100 * MIN_FINITE_SHARE:g}% needed)")
        metrics["notes"].append(note)
        log.info(note)
    if pair.state_dim == "x":
        spectrum, reference_spectrum = energy_spectrum(predicted), energy_spectrum(truth)
        length = pair.domain_length or 1.0
        distance = spectral_distance(spectrum, reference_spectrum) if defined else math.nan
        modes = compared_modes(spectrum, reference_spectrum) if defined and np.isfinite(spectrum).all() else []
        metrics["spectrum"] = {"wavenumber": wavenumbers(pair.truth.shape[-1], length),
                               "rollout": spectrum, "reference": reference_spectrum, "distance": distance,
                               "compared_modes": [int(m) for m in modes]}
        if math.isinf(distance):
            metrics["notes"].append("energy spectrum distance infinite (null in the JSON): the rollout's spectrum is "
                                    "non-finite, or it leaves a mode it should carry empty")
        metrics["kl_divergence"] = {"value": histogram_kl_divergence(predicted, truth) if defined else math.nan,
                                    "per_component": {}}
        # Kuramoto-Sivashinsky conserves the spatial mean (conservative form): its drift, over the truth's
        # pointwise rms
        pointwise = float(np.sqrt(np.nanmean(np.where(np.isfinite(pair.truth), pair.truth, np.nan) ** 2)))
        metrics["mean_drift"] = {"rollout": summarise(mean_drift(pair.predicted, pointwise), spread=spread),
                                 "reference": summarise(mean_drift(pair.truth, pointwise), spread=spread),
                                 "scale": pointwise}
    else:
        per_component = {str(name): histogram_kl_divergence(predicted[..., i], truth[..., i]) if defined else math.nan
                         for i, name in enumerate(pair.state_coords)}
        values = [v for v in per_component.values() if np.isfinite(v)]
        metrics["kl_divergence"] = {"value": float(np.mean(values)) if values else math.nan,
                                    "per_component": per_component}
    metrics["kl_divergence"].update(bins=KL_BINS, epsilon=KL_EPSILON)
    return metrics


def evaluate_files(rollout_path: str | Path, reference_path: str | Path, *, case: CaseConfig | None = None,
                   threshold: float | None = None, match_members: str = "coordinate",
                   time_tolerance: float | None = None, spread: Sequence[float] = DEFAULT_SPREAD,
                   figures_dir: str | Path | None = None, lyapunov: bool = False, closure_path: str | Path | None = None,
                   ) -> dict[str, Any]:
    """Metrics of a rollout file against a reference file, JSON-ready (NaN and inf become ``None``).

    ``case`` defaults to the one stored in the reference (then the rollout); it supplies the VPT
    threshold and Lyapunov exponent (``[evaluate]``) and the true system's invariants. ``threshold``
    overrides the case's. With ``lyapunov`` (needs a case), the leading exponents of the model
    (``closure_path`` in the host solver) and of the truth are estimated too. ``figures_dir``:
    write PNG figures there. Raises ``DataError`` for missing or mismatched files.
    """
    rollout_path, reference_path = Path(rollout_path), Path(reference_path)
    # lazily opened: only the paired members and times are read from disk
    rollout = open_trajectories(rollout_path, load=False)
    try:
        reference = open_trajectories(reference_path, load=False)
    except DataError:
        rollout.close()
        raise
    with rollout, reference, interrupts_deferred():  # (the reads: a Ctrl-C inside the library is swallowed)
        note = check_same_system(dict(rollout.attrs), dict(reference.attrs), rollout_path, reference_path)
        pair = align_trajectories(rollout, reference, match_members=match_members, time_tolerance=time_tolerance,
                                  names=(str(rollout_path), str(reference_path)))
        rollout_attrs, reference_attrs = dict(rollout.attrs), dict(reference.attrs)
    metrics = _evaluate_pair(pair, rollout_path, reference_path, rollout_attrs, reference_attrs, case=case,
                             threshold=threshold, spread=spread, figures_dir=figures_dir, lyapunov=lyapunov,
                             closure_path=closure_path)
    if note:
        metrics["notes"].append(note)
    return metrics


def _evaluate_pair(pair: AlignedPair, rollout_path: Path, reference_path: Path, rollout_attrs: Mapping[str, Any],
                   reference_attrs: Mapping[str, Any], *, case: CaseConfig | None, threshold: float | None,
                   spread: Sequence[float], figures_dir: str | Path | None, lyapunov: bool,
                   closure_path: str | Path | None) -> dict[str, Any]:
    stored_reference = case_from_attributes(reference_attrs, str(reference_path))
    stored_rollout = case_from_attributes(rollout_attrs, str(rollout_path))
    stored, given = stored_reference or stored_rollout, case
    if case is None:
        case = stored
    elif stored is not None and case.system.name != stored.system.name:
        raise DataError(f"--case {case.case.name!r} is a {case.system.name} case but the files hold "
                        f"{stored.system.name} (case {stored.case.name!r}); pass the case the files were made with")
    elif stored is not None and (differing := system_differences(case, stored)):
        raise DataError(f"--case {case.case.name!r} has another [system] than the files' (case {stored.case.name!r}): "
                        f"{'; '.join(differing)} (files -> --case); pass the case the files were made with, or "
                        "leave --case out to use the one they store")
    threshold = threshold if threshold is not None else (case.evaluate.vpt_threshold if case else 0.5)
    if not threshold > 0:
        raise ConfigError(f"threshold = {threshold!r} must be positive")
    exponent = case.evaluate.lyapunov_exponent if case else None
    invariants = invariants_function(case, pair.state_coords) if pair.state_dim == "component" else None
    closure = None
    if lyapunov:
        if case is None:
            raise DataError("the Lyapunov estimate needs the case: pass --case CASE.toml (the files store none)")
        # the model is what made the prediction: the --case given for it, else the case it stores (a
        # simulation's own system, unless a --closure says which hybrid to measure); the truth runs the
        # reference's states with the reference's own case (its grid)
        model_case = given or stored_rollout or case
        simulated = rollout_attrs.get("stage") == "simulate" and closure_path is None
        if not simulated:
            closure = closure_for_lyapunov(rollout_attrs, rollout_path, closure_path, model_case)
    metrics = compute_metrics(pair, threshold=threshold, lyapunov_exponent=exponent, invariants=invariants,
                              spread=spread, error_scale=case.evaluate.error_scale if case else "rms")
    metrics = {"rollout": str(rollout_path), "reference": str(reference_path),
               "case": case.case.name if case else None, **metrics,
               "software": f"hybridnde {package_version()}", "platform": platform_description("cpu"),
               "cost": {"rollout": cost_from_attributes(rollout_attrs), "reference": cost_from_attributes(reference_attrs)}}
    if lyapunov:
        metrics["lyapunov"] = lyapunov_comparison(case, pair, closure=closure, truth_case=stored_reference,
                                                  model_case=model_case, simulated=simulated)
        metrics["notes"] += [f"Lyapunov {name}: {result['note']}" for name, result in metrics["lyapunov"].items()
                             if isinstance(result, dict) and "note" in result]
    if figures_dir is not None:
        title = case.case.name if case else rollout_path.stem
        # "hybrid" only for a rollout with a closure: a bare host's or a simulation's states are a prediction
        label = "hybrid" if recorded_closure(rollout_attrs) else "prediction"
        metrics["figures"] = [str(p) for p in write_figures(pair, metrics, figures_dir, title=title, invariants=invariants,
                                                            predicted_label=label)]
    return json_ready(metrics)
