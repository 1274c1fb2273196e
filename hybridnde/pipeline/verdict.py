"""The one sentence a report opens with (``verdict``): how long the hybrid model stays valid and
stable against the bare host, and the concerns a reader must not miss (a model at rest, drifting
invariants or spatial mean, statistics unlike the truth's). Thresholds are module constants.

Every number comes from ``metrics.json``; nothing is recomputed here.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .formatting import given, number, spread_keys

__all__ = ["verdict", "at_rest_while_valid", "members_seen", "STATISTICS_DIFFER_NATS", "INVARIANT_DRIFT_UNPHYSICAL",
           "INVARIANT_DRIFT_NOTED", "TRIVIAL_BASELINES"]


def _ratio_phrase(hybrid: float | None, bare: float | None, *, at_least: bool = False) -> str:
    """``at_least``: ``hybrid`` is censored at the horizon, so the ratio is a lower bound."""
    if hybrid is None or bare is None or not bare > 0:
        return ""
    ratio = hybrid / bare
    return f", {'at least ' if at_least else ''}{number(ratio)}x the bare host solver's {number(bare)}" if ratio >= 1 \
        else f", below the bare host solver's {number(bare)}"


def members_seen(seen: int, members: int) -> str:
    return "all of them" if seen == members else f"{seen} of them"


#: KL divergence (nats) of the state histograms above which the verdict says the statistics differ:
#: N(0, 1) against N(0, 0.5^2) is 0.8, so above 1 the model visits other states than the truth
STATISTICS_DIFFER_NATS = 1.0


def _spreads_overlap(one: Mapping[str, Any], other: Mapping[str, Any], keys: tuple[str, str]) -> bool:
    """Whether two summaries' percentile bands (e.g. p16-p84 of the VPT over members) overlap."""
    bands = [(summary.get(keys[0]), summary.get(keys[1])) for summary in (one, other)]
    if any(value is None or not math.isfinite(value) for band in bands for value in band):
        return False
    (low, high), (other_low, other_high) = bands
    return low <= other_high and other_low <= high


#: what a bare host is where it is no real competitor (``hybrid.setup``): said beside the ratio to it
TRIVIAL_BASELINES = {"second_order": "a bare second-order host has no forces: it keeps its initial velocities"}

#: median relative drift of an invariant above which the verdict says the states are not physical,
#: and above which it says the invariant drifts
INVARIANT_DRIFT_UNPHYSICAL = 1.0
INVARIANT_DRIFT_NOTED = 0.1


def verdict(metrics: Mapping[str, Any], *, held_out: bool = True, setup: str | None = None) -> str:
    """One sentence: how long the hybrid model stays valid and stable, against the bare host, and
    whether it was at rest while the truth moved before its valid time ended (then the valid time
    measures how long the truth lingered near the resting state, e.g. Lorenz-63 near a fixed point:
    said first, without Lyapunov times), whether it comes to rest by the horizon, whether its
    invariants drift beyond physical states, and whether its long-run state statistics are far from the
    truth's. ``held_out=False``: the reference is the training trajectory's own start
    (``stages.repeats_training_start``); ``setup``: ``hybrid.setup``, for bare hosts that are no real
    competitor (``TRIVIAL_BASELINES``)."""
    vpt = metrics["valid_prediction_time"]
    baseline = metrics.get("baseline")
    members = metrics["members"]
    resting = int(metrics.get("resting_members") or 0)
    lingering = int(metrics.get("resting_while_valid") or 0)
    at_rest = at_rest_while_valid(metrics)
    units = "time units" if metrics.get("time_units", "1") in ("", "1") else metrics["time_units"]
    # a median member valid to the horizon: the median VPT is the horizon, a lower bound (censored)
    censored = (metrics.get("reached_horizon_fraction") or 0.0) >= 0.5
    text = ""
    if at_rest:
        text = (f"The hybrid model is at rest in {lingering} of {members} members while the truth keeps moving, before "
                "its valid time ends, so that time measures how long the truth lingers near the resting state, not "
                "skill: ")
    text += f"{'it' if at_rest else 'The hybrid model'} stays within the error threshold for " \
            f"{'at least ' if censored else ''}{number(vpt['median'])} {units}"
    if "valid_prediction_time_lyapunov" in metrics and not at_rest:
        text += f" ({number(metrics['valid_prediction_time_lyapunov']['median'])} Lyapunov times)"
    if censored:
        reached = round(metrics["reached_horizon_fraction"] * members)
        text += f" ({reached} of {members} members are valid to the horizon)"
    seen = metrics.get("members_from_training_states", 0)
    if not held_out:
        text += f", from the training trajectory's own start ({members} member; nothing held out)"
    elif seen:
        text += (f", median over {members} members, {members_seen(int(seen), members)} from "
                 "states in the training data (not held out)")
    elif seen is None:
        text += f", median over {members} members (not checked against the training data: another grid)"
    else:
        text += f", median over {members} held-out members"
    if baseline:
        notes = []
        low, high = keys = spread_keys(metrics)
        if censored and (baseline.get("reached_horizon_fraction") or 0.0) >= 0.5:
            # (no ratio, so no note on the spreads that would qualify one)
            ratio = ", as the bare host solver's"
            notes.append("both valid to the horizon for most members: no ratio")
        else:
            ratio = _ratio_phrase(vpt["median"], baseline["valid_prediction_time"]["median"], at_least=censored)
            if ratio and _spreads_overlap(vpt, baseline["valid_prediction_time"], keys):
                notes.append(f"their {low}-{high} spreads over members overlap")
        if ratio and setup in TRIVIAL_BASELINES:
            notes.append(TRIVIAL_BASELINES[setup])
        text += ratio + (f" ({'; '.join(notes)})" if notes else "")
    text += f"; {metrics['stable_members']} of {members} members stay stable to the horizon of " \
            f"{given(metrics['horizon'])}"
    if baseline:
        text += f" (bare host: {baseline['stable_members']} of {baseline['members']})"
    if resting and not at_rest:
        text += f"; {resting} of {members} members come to rest by the horizon while the truth keeps moving"
    concerns = []
    drifting, noted = [], []
    for name, drift in (metrics.get("invariant_drift") or {}).items():
        median = (drift.get("rollout") or {}).get("median")
        own = (drift.get("reference") or {}).get("median") or 0.0  # the truth's integrator's drift
        if median is None or not math.isfinite(median):
            continue
        if median > INVARIANT_DRIFT_UNPHYSICAL:  # whatever the integrator does, these are not its states
            drifting.append(f"{name} drifts by {number(median)}")
        elif median > max(INVARIANT_DRIFT_NOTED, 10 * own):
            noted.append(f"{name} drifts by {number(median)}")
    # "its energy drifts by 2.17" (it read "its energy by 2.17 drift")
    if drifting:
        concerns.append(f"its {' and '.join(drifting)} (median over members of the largest relative drift): "
                        "its states are not the system's")
    if noted:
        concerns.append(f"its {' and '.join(noted)} (median over members of the largest relative drift)")
    mean = metrics.get("mean_drift") or {}
    moved, kept = (mean.get("rollout") or {}).get("median"), (mean.get("reference") or {}).get("median")
    if moved is not None and kept is not None and math.isfinite(moved) and moved > INVARIANT_DRIFT_NOTED > 100 * kept:
        concerns.append(f"its spatial mean drifts by {number(moved)} of the field's rms (median over members; the "
                        "truth conserves it)")
    kl = (metrics.get("kl_divergence") or {}).get("value")
    if kl is not None and math.isfinite(kl) and kl > STATISTICS_DIFFER_NATS:
        concerns.append(f"its states are distributed unlike the truth's over the horizon (KL divergence {number(kl)} "
                        "nats between their histograms)")
    if concerns:
        text += f"; {'and' if at_rest else 'but'} " + ", and ".join(concerns)
    return text + "."


def at_rest_while_valid(metrics: Mapping[str, Any]) -> bool:
    """Most members at rest while the truth moved, before their valid time ended (``verdict``)."""
    return int(metrics.get("resting_while_valid") or 0) * 2 > metrics["members"]
