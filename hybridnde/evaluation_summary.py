"""``hybridnde evaluate``'s plain-text table of the headline numbers of ``evaluate_files``' result."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .metrics.statistics import KL_BINS

__all__ = ["format_summary", "percent_down", "lyapunov_estimate"]


def percent_down(share: float) -> str:
    """``share`` as a percentage rounded down to 0.1: a share just under 1 never reads "100%", nor one just
    over 0 "0%" (it reads "<0.1%")."""
    return "<0.1%" if 0 < share < 0.001 else f"{math.floor(1000 * share) / 10:g}%"


def lyapunov_estimate(estimate: Mapping[str, Any]) -> str:
    """An exponent of ``evaluate --lyapunov`` with its standard error and what it was measured on,
    e.g. "0.905 +- 0.012 (8 members x 22.1 time units)"; one member has no error bar, and says so (a
    lone Lorenz-63 member over 20 Lyapunov times reads 0.81 against the attractor's 0.906)."""
    exponent, error = estimate.get("exponent"), estimate.get("standard_error")
    members, duration = int(estimate.get("members") or 0), estimate.get("duration")
    diverged = int(estimate.get("diverged") or 0)
    if exponent is None or not math.isfinite(exponent):
        return f"n/a ({diverged} of {members} members diverged)" if diverged else "n/a"
    text = f"{exponent:.4g}" + (f" +- {error:.2g}" if error is not None and math.isfinite(error) else "")
    if not members or duration is None:
        return text
    counted = members - diverged
    return f"{text} ({counted} member{'s' if counted > 1 else ''} x {duration:.3g} time units" + \
        (f", {diverged} more diverged" if diverged else "") + ("; one member: no error bar)" if counted == 1 else ")")


def format_summary(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the headline numbers of ``evaluate_files``' result."""
    spread = metrics["spread_percentiles"]
    lo_key, hi_key = f"p{spread[0]:g}", f"p{spread[1]:g}"

    def number(value: Any) -> str:
        return "inf/undefined" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    def median_spread(summary: Mapping[str, Any]) -> str:
        return f"{number(summary['median'])}  [{number(summary[lo_key])}, {number(summary[hi_key])}]"

    rows = [("members x times", f"{metrics['members']} x {metrics['times']} (horizon {number(metrics['horizon'])})"),
            ("error threshold", number(metrics["threshold"])
             + (" (of the error over the truth's standard deviation: evaluate.error_scale = anomaly)"
                if metrics.get("error_scale_kind") == "anomaly" else "")),
            ("valid prediction time", median_spread(metrics["valid_prediction_time"]))]
    if "valid_prediction_time_lyapunov" in metrics:
        rows.append(("  in Lyapunov times", median_spread(metrics["valid_prediction_time_lyapunov"])))
    # rounded down: 999 stable members of 1000 read 99.9%, not 100% (helper-107's audit)
    rows += [("valid to the horizon", f"{percent_down(metrics['reached_horizon_fraction'])} of members"),
             ("stable to the horizon", f"{percent_down(metrics['stable_fraction'])} of members")]
    # as report.md: a model at rest while the truth moves, and one at rest already while "valid" (its valid
    # time then measures how long the truth lingered near rest, not skill)
    if metrics.get("resting_members"):
        rows.append(("at rest at the end", f"{metrics['resting_members']} of {metrics['members']} members, while the "
                                           "truth moves (last quarter of the horizon)"))
    if metrics.get("resting_while_valid"):
        rows.append(("  before valid ended", f"{metrics['resting_while_valid']} of {metrics['members']} members"))
    rows.append(("initial error", median_spread(metrics["initial_error"])))
    for name, drift in metrics.get("invariant_drift", {}).items():
        rows.append((f"{name} drift", f"{median_spread(drift['rollout'])}  (reference {number(drift['reference']['median'])})"))
    if "mean_drift" in metrics:
        drift = metrics["mean_drift"]
        rows.append(("spatial mean drift", f"{median_spread(drift['rollout'])}  (of the truth's rms; reference "
                                           f"{number(drift['reference']['median'])})"))
    share = metrics.get("statistics_finite_share")
    finite = f"; over the {percent_down(share)} finite states" if share is not None and share < 1 else ""
    if "spectrum" in metrics:
        modes = metrics["spectrum"].get("compared_modes") or []
        over = f", {len(modes)} modes in {modes[0]}-{modes[-1]}" if modes else ""
        distance = number(metrics["spectrum"]["distance"])
        rows.append(("spectrum distance", f"{distance} (mean |log10 E/E*|{over}{finite})"))
    kl = metrics["kl_divergence"]
    rows.append(("KL divergence", f"{number(kl['value'])} nats ({kl.get('bins', KL_BINS)}-bin histograms{finite})"))
    if "lyapunov" in metrics:
        lyapunov = metrics["lyapunov"]
        rows.append(("Lyapunov exponent", f"model {lyapunov_estimate(lyapunov['model'])}, truth "
                                          f"{lyapunov_estimate(lyapunov['truth'])}"))
    for source in ("rollout", "reference"):
        for key, value in metrics.get("cost", {}).get(source, {}).items():
            rows.append((f"{source} {key}", number(value)))
    width = max(len(name) for name, _ in rows)
    header = f"{metrics.get('case') or 'evaluation'}: {metrics['rollout']} against {metrics['reference']}"
    lines = [header, f"(median [{lo_key}, {hi_key}] over members)"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    lines += [f"  note: {note}" for note in metrics.get("notes", [])]
    return "\n".join(lines)
