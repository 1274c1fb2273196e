"""The figures ``hybridnde evaluate --figures DIR`` writes for a rollout paired with its reference, and
how a set of them and the metrics replace an earlier evaluation's (``publish_evaluation``)."""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .alignment import AlignedPair
from .interrupts import interrupts_deferred
from .metrics import error_growth, normalised_error, relative_drift_curves
from .metrics.statistics import MIN_FINITE_SHARE
from .output_paths import atomic_path

__all__ = ["write_figures", "publish_evaluation", "EVALUATION_FIGURES"]

log = logging.getLogger(__name__)

#: the figures ``write_figures`` may draw (``<name>.png``): which ones depends on the states
EVALUATION_FIGURES = ("error_growth", "space_time", "spectrum", "phase_portrait", "invariant_drift")


def publish_evaluation(metrics: dict[str, Any], out: Path | None, *, drawn: Iterable[str | Path] = (),
                       folder: Path | None = None, names: Iterable[str] = ()) -> str:
    """Put an evaluation in place as one, interrupts held: ``metrics["figures"]`` becomes the places in
    ``folder`` of the figures ``drawn`` into a ``staging_folder``; the JSON goes to a temporary file beside
    ``out`` (if any), then the figures replace the earlier ones, and the JSON is renamed last. The
    figures of ``names`` (``<name>.png``) an earlier evaluation drew that this one did not are removed
    (a set-up without a bare host has no hybrid-vs-bare-host plot): the folder shows one evaluation,
    not parts of two. Returns the JSON text."""
    drawn = [Path(path) for path in drawn]
    with interrupts_deferred():
        if folder is not None:
            metrics["figures"] = [str(folder / path.name) for path in drawn]
        text = json.dumps(metrics, indent=2, allow_nan=False)
        with atomic_path(out) if out is not None else contextlib.nullcontext() as temporary:
            if temporary is not None:  # (a full disk fails here, before any figure is replaced)
                temporary.write_text(text + "\n")
            if folder is not None:
                _replace_figures(drawn, folder, names)
    return text


def _replace_figures(drawn: list[Path], folder: Path, names: Iterable[str]) -> None:
    for path in drawn:
        os.replace(path, folder / path.name)
    replaced = {path.name for path in drawn}
    for name in names:
        stale = folder / f"{name}.png"
        if stale.name not in replaced and stale.is_file():
            log.info("removing %s: from an earlier evaluation, not drawn for this one", stale)
            stale.unlink()


def _representative_member(metrics: Mapping[str, Any]) -> int:
    """Index of the member whose VPT is closest to the median (ties: the first; members without a VPT,
    their truth undefined throughout, are passed over: argmin took NaN as the closest)."""
    vpt = np.asarray(metrics["valid_prediction_time"]["per_member"], dtype=np.float64)
    median = metrics["valid_prediction_time"]["median"]
    distance = np.abs(vpt - (np.nan if median is None else median))
    return int(np.nanargmin(distance)) if np.isfinite(distance).any() else 0


def write_figures(pair: AlignedPair, metrics: Mapping[str, Any], directory: str | Path, *, title: str = "",
                  invariants: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
                  predicted_label: str = "hybrid") -> list[Path]:
    """PNG figures of ``pair`` into ``directory``: error growth; space-time diagrams and spectra for
    fields; phase portraits and invariant drift for ODE states; the rollout is ``predicted_label`` in
    them. Returns the paths written."""
    from . import figures

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""
    start, spread = float(pair.times[0]), metrics["spread_percentiles"]
    vpt = metrics["valid_prediction_time"]
    lo_key, hi_key = f"p{spread[0]:g}", f"p{spread[1]:g}"
    error = normalised_error(pair.predicted, pair.truth, scale=metrics["error_scale"])
    levels = error_growth(error, percentiles=(spread[0], 50.0, spread[1]))
    diverged_members = int(np.isposinf(error).any(axis=1).sum())
    written = []
    growth = figures.error_growth_figure(
        pair.times, levels[1], levels[0], levels[2], threshold=metrics["threshold"],
        valid_time=start + vpt["median"], valid_time_spread=(start + vpt[lo_key], start + vpt[hi_key]),
        lyapunov_exponent=metrics.get("lyapunov_exponent"), time_units=pair.time_units,
        error_scale=metrics.get("error_scale_kind", "rms"),
        note=f"{diverged_members} of {pair.members.size} members diverged (error infinite)" if diverged_members else "",
        spread_label=f"{spread[0]:g}-{spread[1]:g}th percentile over {pair.members.size} members",
        title=f"{prefix}normalised error (VPT: median {vpt['median']:.3g}, "
              f"{lo_key}-{hi_key} {vpt[lo_key]:.3g}-{vpt[hi_key]:.3g})")
    written.append(figures.save_figure(growth, directory / "error_growth.png"))
    member = _representative_member(metrics)
    label = f"member {int(pair.members[member])}"
    if pair.state_dim == "x":
        diagram = figures.space_time_figure(
            np.asarray(pair.state_coords, dtype=np.float64), pair.times, pair.truth[member], pair.predicted[member],
            valid_time=start + vpt["per_member"][member], time_units=pair.time_units, predicted_label=predicted_label,
            title=f"{prefix}{label} (VPT closest to the median)")
        written.append(figures.save_figure(diagram, directory / "space_time.png"))
        spectrum, share = metrics["spectrum"], metrics["statistics_finite_share"]
        wavenumber = np.asarray(spectrum["wavenumber"])
        over = "" if share >= 1 else f" (over the {100 * share:.3g}% finite states)"
        plot = figures.spectrum_figure(wavenumber, np.asarray(spectrum["reference"]), wavenumber,
                                       np.asarray(spectrum["rollout"]), distance=spectrum["distance"],
                                       predicted_label=predicted_label, undefined=share < MIN_FINITE_SHARE,
                                       floor=figures.energy_floor(pair.precision),
                                       title=f"{prefix}energy spectrum, mean over members and time{over}")
        written.append(figures.save_figure(plot, directory / "spectrum.png"))
    else:
        names = [str(c) for c in pair.state_coords]
        shown = sorted({member, *range(min(2, pair.members.size))})[:3]
        portrait = figures.phase_portrait_figure(
            pair.truth, pair.predicted, names, members=shown, predicted_label=predicted_label,
            member_labels=[f"member {int(pair.members[m])}" for m in shown],
            title=f"{prefix}phase portraits (dot: start; cross: the prediction's last state)")
        written.append(figures.save_figure(portrait, directory / "phase_portrait.png"))
        if invariants is not None:
            diverged = ~np.isfinite(pair.predicted).all(axis=-1)  # (member, time): ranked above any drift
            curves = {name: np.where(diverged, np.inf, relative_drift_curves(values))
                      for name, values in invariants(pair.predicted).items()}
            reference = {name: relative_drift_curves(values) for name, values in invariants(pair.truth).items()}
            drift = figures.invariant_drift_figure(pair.times, curves, reference_drift=reference,
                                                   time_units=pair.time_units, predicted_label=predicted_label,
                                                   percentiles=(float(spread[0]), float(spread[1])),
                                                   title=f"{prefix}drift of the true system's invariants")
            written.append(figures.save_figure(drift, directory / "invariant_drift.png"))
    return written
