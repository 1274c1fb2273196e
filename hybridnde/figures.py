"""Figures of a rollout against the truth, as PNG files (matplotlib's Agg canvas; numpy only).

Each function takes plain arrays and returns a ``matplotlib.figure.Figure``; ``save_figure`` writes
it atomically. No pyplot and no global backend switch: the package never changes a user's
matplotlib state. Time axes are labelled with the file's time units (``"1"`` = nondimensional).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .io import atomic_path, package_version

__all__ = ["error_label", "energy_floor", "space_time_figure", "phase_portrait_figure", "error_growth_figure", "spectrum_figure",
           "invariant_drift_figure", "save_figure", "time_label"]

_PREDICTED_STYLE = {"linestyle": "--"}
#: spectra: modes below this fraction of the peak are round-off (or dealiased away) and not drawn; a
#: float32 file's round-off lies higher: ``spectrum_figure``'s ``floor`` (see ``energy_floor``)
_ENERGY_FLOOR = 1e-20


def energy_floor(precision: float) -> float:
    """The fraction of a spectrum's peak below which its modes are round-off, for states held to machine
    epsilon ``precision`` (float32: ~1e-12, where its dealiased modes sit near 1e-17..1e-14)."""
    return max(_ENERGY_FLOOR, (10.0 * precision) ** 2)


def time_label(units: str = "1", symbol: str = "t") -> str:
    """``"time t"`` with ``[units]`` unless the units are nondimensional."""
    return f"time {symbol}" + ("" if units in ("", "1") else f" [{units}]")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _lyapunov_axis(axis, lyapunov_exponent: float | None, start: float = 0.0) -> None:
    """A second time axis on top, in Lyapunov times ``lambda_1 (t - t_0)``."""
    if lyapunov_exponent:
        top = axis.secondary_xaxis("top", functions=(lambda t: (t - start) * lyapunov_exponent,
                                                     lambda s: s / lyapunov_exponent + start))
        top.set_xlabel(r"Lyapunov times $\lambda_1 (t - t_0)$")


def space_time_figure(x: np.ndarray, times: np.ndarray, truth: np.ndarray, predicted: np.ndarray, *,
                      title: str = "", time_units: str = "1", x_units: str = "1",
                      valid_time: float | None = None, predicted_label: str = "hybrid") -> Figure:
    """Truth, prediction and their difference as space-time diagrams of one member.

    Args:
        x: (n,) grid; times: (time,).
        truth, predicted: (time, n), on the same grid. NaN (after a blow-up) shows in grey.
        valid_time: absolute time at which the prediction stops being valid, marked on the
            prediction and error panels.
    """
    figure = _new_figure(13.0, 4.6)
    axes = figure.subplots(1, 3, sharex=True, sharey=True)
    spacing = x[1] - x[0] if x.size > 1 else 1.0
    interval = (times[-1] - times[0]) / (times.size - 1) if times.size > 1 else 1.0
    # each cell centred on its sample: a row spanned (T / n), not dt, and sat off its time
    extent = (x[0] - spacing / 2, x[-1] + spacing / 2, times[0] - interval / 2, times[-1] + interval / 2)
    # truth and prediction share one colour scale; the error gets its own so small errors show, capped at
    # the fields' (a blown-up member's 1e6 made everything before it white)
    difference = predicted - truth
    field_limit = _symmetric_limit(truth)
    panels = ((truth, "truth", field_limit, "u"), (predicted, predicted_label, field_limit, "u"),
              (difference, f"error ({predicted_label} - truth)", min(_symmetric_limit(difference), field_limit),
               "error"))
    for index, (axis, (field, name, limit, quantity)) in enumerate(zip(axes, panels)):
        colours = colormaps["RdBu_r" if index < 2 else "PuOr_r"].with_extremes(bad="0.75")  # NaN (blown up): grey
        image = axis.imshow(np.ma.masked_invalid(field), origin="lower", aspect="auto", extent=extent,
                            cmap=colours, vmin=-limit, vmax=limit, interpolation="nearest")
        axis.set_title(name)
        axis.set_xlabel("position x" + ("" if x_units in ("", "1") else f" [{x_units}]"))
        if valid_time is not None and index > 0 and valid_time < times[-1]:
            axis.axhline(valid_time, color="k", linestyle=":", linewidth=1.5, label="valid prediction time")
            axis.legend(loc="upper right", fontsize="small", framealpha=0.8)
        if index > 0:
            colorbar = figure.colorbar(image, ax=list(axes[:2]) if index == 1 else axis, shrink=0.9,
                                       extend="neither" if np.abs(np.nan_to_num(field)).max() <= limit else "both")
            colorbar.set_label(quantity)
    axes[0].set_ylabel(time_label(time_units))
    if not np.isfinite(predicted).all():
        axes[1].text(0.02, 0.98, "grey: blown up", transform=axes[1].transAxes, va="top", fontsize="small")
    figure.suptitle(title or "space-time diagram")
    return figure


def _symmetric_limit(field: np.ndarray) -> float:
    finite = np.abs(field[np.isfinite(field)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _component_pairs(n_components: int) -> list[tuple[int, int]]:
    """Which state components to plot against each other: (x, y) and (vx, vy) for two-body,
    all three planes for three components, consecutive pairs otherwise (at most three panels)."""
    if n_components == 3:
        return [(0, 1), (0, 2), (1, 2)]
    if n_components < 2:
        return []
    return [(i, i + 1) for i in range(0, n_components - 1, 2)][:3]


def phase_portrait_figure(truth: np.ndarray, predicted: np.ndarray, component_names: Sequence[str], *,
                          title: str = "", members: Sequence[int] = (0,), member_labels: Sequence[str] | None = None,
                          predicted_label: str = "hybrid") -> Figure:
    """Phase portraits of a few members: truth solid and pale, prediction dashed and opaque on top (one
    colour per member), start marked by a dot and the prediction's last finite state by a cross (a
    model that settles on a fixed point shows as a cross where its line stops).

    Args:
        truth, predicted: (member, time, component).
        component_names: one name per component (axis labels).
        members: indices (into the first axis) to draw, one colour each.
    """
    pairs = _component_pairs(truth.shape[-1])
    if not pairs:
        raise ValueError("a phase portrait needs at least two state components")
    figure = _new_figure(4.3 * len(pairs) + 0.6, 4.4)
    axes = np.atleast_1d(figure.subplots(1, len(pairs)))
    colours = [f"C{i}" for i in range(10)]
    labels = list(member_labels) if member_labels is not None else [f"member {m}" for m in members]
    for axis, (first, second) in zip(axes, pairs):
        for colour, member, label in zip(colours, members, labels):
            axis.plot(truth[member, :, first], truth[member, :, second], color=colour, linewidth=1.0, alpha=0.45,
                      label=f"truth, {label}", zorder=1)
            axis.plot(predicted[member, :, first], predicted[member, :, second], color=colour, linewidth=1.4,
                      label=f"{predicted_label}, {label}", zorder=2, **_PREDICTED_STYLE)
            axis.plot(truth[member, 0, first], truth[member, 0, second], "o", color=colour, markersize=5, zorder=3)
            finite = np.flatnonzero(np.isfinite(predicted[member, :, [first, second]]).all(axis=0))
            if finite.size:
                last = finite[-1]
                axis.plot(predicted[member, last, first], predicted[member, last, second], "X", color=colour,
                          markeredgecolor="k", markersize=9, zorder=3,
                          label=f"{predicted_label} at its last time, {label}")
        axis.set_xlabel(component_names[first])
        axis.set_ylabel(component_names[second])
        axis.set_title(f"{component_names[second]} against {component_names[first]}")
    axes[0].legend(fontsize="small", loc="best")
    figure.suptitle(title or "phase portrait (dot: start; cross: the prediction's last state)")
    return figure


def error_label(error_scale: str = "rms") -> str:
    """The y label of normalised-error plots for ``evaluate.error_scale``."""
    if error_scale == "anomaly":
        return r"normalised error $\|u - u^*\| / \mathrm{rms}(u^* - \langle u^* \rangle)$"
    return r"normalised error $\|u - u^*\| / \mathrm{rms}(u^*)$"


def error_growth_figure(times: np.ndarray, median: np.ndarray, lower: np.ndarray, upper: np.ndarray, *,
                        threshold: float, valid_time: float | None = None,
                        valid_time_spread: tuple[float, float] | None = None,
                        lyapunov_exponent: float | None = None, spread_label: str = "16-84th percentile",
                        title: str = "", time_units: str = "1", error_scale: str = "rms",
                        note: str = "") -> Figure:
    """Normalised error over time: median over members, a percentile band, the threshold and the
    valid prediction time (median, with its spread shaded). ``error_scale``: what the error was
    divided by (``evaluate.error_scale``), for the axis label.

    Args:
        times: (time,) absolute times; median, lower, upper: (time,) (``inf`` = diverged: a gap in the
            median, a band edge at the top of the axis).
        valid_time, valid_time_spread: absolute times (``t_0 + VPT``).
        note: written in the axis' upper left (e.g. how many members diverged).
    """
    figure = _new_figure(7.5, 4.6)
    axis = figure.subplots()

    everything = np.concatenate([np.ravel(lower), np.ravel(median), np.ravel(upper)]).astype(np.float64)
    logarithmic = bool((np.isfinite(everything) & (everything > 0)).any())

    def shown(values: np.ndarray) -> np.ndarray:
        """Gaps where the error is infinite (diverged) and, on a log axis, zero (exact)."""
        values = np.asarray(values, dtype=np.float64)
        return np.where(np.isfinite(values) & ((values > 0) | (not logarithmic)), values, np.nan)

    visible = shown(everything)
    if logarithmic:
        limits = (min(np.nanmin(visible), threshold) / 3, max(np.nanmax(visible), threshold) * 3)
    else:  # no positive finite error (identical files): a log axis would be empty
        limits = (-0.05 * threshold, 2 * threshold)
    low_edge, high_edge = (np.where(np.isposinf(edge), limits[1], shown(edge)) for edge in (lower, upper))
    axis.fill_between(times, low_edge, high_edge, color="C0", alpha=0.25, label=spread_label)
    axis.plot(times, shown(median), color="C0", linewidth=1.8, label="median over members")
    axis.axhline(threshold, color="C3", linestyle="--", linewidth=1.2, label=f"threshold {threshold:g}")
    if valid_time is not None and np.isfinite(valid_time):
        censored = " = horizon" if valid_time >= times[-1] else ""
        # the median of the members' own crossings: not where the median curve crosses the threshold
        axis.axvline(valid_time, color="k", linestyle=":", linewidth=1.5,
                     label=f"valid prediction time {valid_time - times[0]:.3g}{censored} (median of the members')")
        if valid_time_spread is not None and all(np.isfinite(valid_time_spread)):
            axis.axvspan(*valid_time_spread, color="k", alpha=0.08,
                         label=f"members' valid prediction times, {spread_label}")
    if logarithmic:
        axis.set_yscale("log")
    axis.set_ylim(*limits)
    if note:
        axis.text(0.02, 0.97, note, transform=axis.transAxes, va="top", fontsize="small")
    axis.set_xlim(times[0], times[-1])
    axis.set_xlabel(time_label(time_units))
    axis.set_ylabel(error_label(error_scale))
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize="small", loc="lower right")
    _lyapunov_axis(axis, lyapunov_exponent, start=float(times[0]))
    axis.set_title(title or "error growth")
    return figure


def spectrum_figure(wavenumber: np.ndarray, reference: np.ndarray, predicted_wavenumber: np.ndarray,
                    predicted: np.ndarray, *, title: str = "", distance: float | None = None,
                    predicted_label: str = "hybrid", undefined: bool = False,
                    floor: float = _ENERGY_FLOOR) -> Figure:
    """Time-averaged energy spectra ``E(k)`` of truth and prediction (the mean mode ``k = 0`` omitted).
    ``undefined``: too few of the prediction's states are finite for a spectrum (the metrics say so):
    its curve, drawn from the few before a blow-up, would look like a match; a note instead. ``floor``:
    modes below this fraction of a curve's peak are not drawn (``energy_floor`` of the states' precision).

    Args:
        wavenumber, reference: (modes,) of the truth; predicted_wavenumber, predicted: of the prediction.
    """
    figure = _new_figure(7.0, 4.6)
    axis = figure.subplots()
    def shown(energy: np.ndarray) -> np.ndarray:
        """Modes with no energy (removed by dealiasing) are left out rather than drawn at a floor."""
        energy = np.asarray(energy, dtype=np.float64)[1:]
        return np.where(energy > floor * np.nanmax(energy), energy, np.nan)

    axis.semilogy(wavenumber[1:], shown(reference), "o-", color="k", markersize=3, linewidth=1.2, label="truth")
    if undefined:
        axis.text(0.5, 0.5, f"{predicted_label}: undefined (too few finite states)", transform=axis.transAxes,
                  ha="center", color="C1")
    else:
        axis.semilogy(predicted_wavenumber[1:], shown(predicted), "s--", color="C1",
                      markersize=3, linewidth=1.2, label=predicted_label if distance is None
                      else f"{predicted_label} (mean |log10 ratio| = {distance:.3g})")
    axis.set_xlabel(r"wavenumber $k = 2\pi m / L$")
    axis.set_ylabel(r"energy $E(k) = \langle |\hat u_k|^2 \rangle$ (one-sided)")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title(title or "energy spectrum, averaged over members and time")
    return figure


def invariant_drift_figure(times: np.ndarray, drift: Mapping[str, np.ndarray], *,
                           reference_drift: Mapping[str, np.ndarray] | None = None, title: str = "",
                           time_units: str = "1", percentiles: tuple[float, float] = (16.0, 84.0),
                           predicted_label: str = "hybrid") -> Figure:
    """Relative drift ``|I(t) - I(t_0)| / |I(t_0)|`` of each invariant: median over members and a
    band; with ``reference_drift``, the truth file's own (integrator) drift dashed for comparison.

    Args:
        drift, reference_drift: name -> (member, time) curves: ``+inf`` after a member diverged (ranked
            above every finite drift, as in error growth: the median of the survivors hid them), NaN where
            the drift is undefined (left out).
    """
    from .metrics.errors import error_growth
    figure = _new_figure(7.5, 4.6)
    axis = figure.subplots()

    def positive(values: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(values) & (values > 0), values, np.nan)  # t_0 (exactly 0) is a gap

    def median_and_band(curves: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        low, median, high = error_growth(curves, percentiles=(percentiles[0], 50.0, percentiles[1]))
        return median, low, high

    levels = {name: median_and_band(np.asarray(curves, dtype=np.float64)) for name, curves in drift.items()}
    references = {name: median_and_band(np.asarray(reference_drift[name], dtype=np.float64))[0]
                  for name in drift if reference_drift is not None and name in reference_drift}
    finite = np.concatenate([np.ravel(level) for level in [*levels.values(), *references.values()]] + [np.zeros(0)])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    top = 3 * finite.max() if finite.size else 1.0  # where a band edge of diverged members is drawn
    for index, (name, (median, low, high)) in enumerate(levels.items()):
        colour = f"C{index}"
        low, high = (np.where(np.isposinf(edge), top, positive(edge)) for edge in (low, high))
        axis.fill_between(times, low, high, color=colour, alpha=0.2,
                          label=f"{name}, {percentiles[0]:g}-{percentiles[1]:g}th percentile")
        axis.plot(times, positive(median), color=colour, linewidth=1.6, label=f"{name}, {predicted_label} (median)")
        if name in references:
            axis.plot(times, positive(references[name]), color=colour, linewidth=1.0,
                      label=f"{name}, truth file (integrator drift)", **_PREDICTED_STYLE)
    if finite.size:
        axis.set_yscale("log")
        axis.set_ylim(top=top)
    axis.set_xlabel(time_label(time_units))
    axis.set_ylabel(r"relative drift $|I(t) - I(t_0)| / |I(t_0)|$")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title(title or f"drift of conserved quantities (band: {percentiles[0]:g}-{percentiles[1]:g}th percentile)")
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (a temporary file, then a rename), with the
    software that drew it (version and git commit) in its ``Software`` text chunk."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", metadata={"Software": f"hybridnde {package_version()}"})
    return path
