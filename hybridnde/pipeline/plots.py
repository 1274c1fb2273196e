"""The run's own figures: training curves and error growth of several rollouts on one plot.

Drawn from what the stages wrote (``closure.log.jsonl``, the metrics' error-growth curves), with
matplotlib's Agg canvas and no pyplot, like ``hybridnde.figures``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..figures import error_label, save_figure, time_label

__all__ = ["read_training_log", "training_curves_figure", "error_growth_comparison_figure", "held_out_validation"]


def read_training_log(path: Path) -> list[dict[str, Any]]:
    """The epochs of a ``closure.log.jsonl`` (empty when it is missing); unreadable lines are skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def held_out_validation(metadata: Mapping[str, Any] | None) -> bool:
    """Whether a closure's validation members (its metadata's ``data``) were held out of training: not
    when they are the training members themselves (one trajectory; data.py warns)."""
    data = (metadata or {}).get("data", {})
    validation = list(data.get("validation_members", []))
    return not validation or validation != list(data.get("train_members", []))


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _positive(values: Sequence[Any]) -> np.ndarray:
    """Values as floats, with ``None``, non-finite and non-positive ones as gaps (log axes)."""
    array = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.where(np.isfinite(array) & (array > 0), array, np.nan)


def _upper_edge(upper: Sequence[Any], lower: Sequence[Any], top: float) -> np.ndarray:
    """A band's upper percentile with its ``null``s (infinite: diverged members, where the lower one is still
    a number) at ``top``: as gaps, the band vanished just where it is widest."""
    infinite = np.array([u is None and low is not None for u, low in zip(upper, lower)], dtype=bool)
    return np.where(infinite, top, _positive(upper))


def training_curves_figure(records: Sequence[Mapping[str, Any]], out: Path, *, title: str = "",
                           best_epoch: int | None = None, held_out: bool = True) -> Path | None:
    """Loss, validation loss and each loss term per epoch (log scale) -> PNG ``out``, the kept closure's
    epoch (``best_epoch``) marked; ``None`` when the log is empty. ``held_out=False``: validation ran on
    the training members (nothing held out), and the curve says so."""
    if not records:
        return None
    figure = _figure(7.0, 4.2)
    axis = figure.subplots()
    epochs = [record["epoch"] for record in records]
    axis.plot(epochs, _positive([r.get("loss") for r in records]), color="C0", linewidth=1.8, label="training loss")
    axis.plot(epochs, _positive([r.get("val_loss") for r in records]), color="C1", linewidth=1.8,
              label="validation loss" if held_out else "validation loss (on the training members: none held out)")
    terms = sorted({key for record in records for key in record if key.startswith("loss/")})
    if len(terms) > 1:  # with one term it is the training loss itself
        for index, key in enumerate(terms):
            axis.plot(epochs, _positive([r.get(key) for r in records]), color=f"C{index + 2}", linestyle="--",
                      linewidth=1.0, label=key)
    if best_epoch is not None and best_epoch in epochs:
        axis.axvline(best_epoch, color="k", linestyle=":", linewidth=1.2,
                     label=f"kept closure: epoch {best_epoch} (lowest validation loss)")
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title(title or "training")
    return save_figure(figure, out)


def error_growth_comparison_figure(curves: Sequence[tuple[str, Mapping[str, Any]]], out: Path, *,
                                   title: str = "") -> Path | None:
    """Median normalised error (with its percentile band, up to 4 curves) of rollouts against one truth.

    ``curves``: ``(label, metrics)`` with ``metrics`` as ``evaluate_files`` returns them (their
    ``error_growth``, ``threshold``, ``valid_prediction_time`` and ``lyapunov_exponent``).
    """
    curves = [(label, metrics) for label, metrics in curves if metrics and metrics.get("error_growth")]
    if not curves:
        return None
    figure = _figure(7.5, 4.6)
    axis = figure.subplots()
    first = curves[0][1]
    spread = first["spread_percentiles"]
    low, high = f"p{spread[0]:g}", f"p{spread[1]:g}"
    start = float(first["start_time"])
    bands = len(curves) <= 4  # more bands would hide each other
    # one bare host grey in every figure, so a colour means the same variant across figures; the
    # others cycle through matplotlib's colours without its grey (C7)
    single_bare_host = sum(label.startswith("bare host") for label, _ in curves) == 1
    palette = [f"C{index}" for index in range(10) if index != 7]
    coloured = 0
    end = start
    # variants scored on other scales or exponents (--compare evaluate.error_scale=...) share no axis label
    scales = list(dict.fromkeys(metrics.get("error_scale_kind", "rms") for _, metrics in curves))
    exponents = set(metrics.get("lyapunov_exponent") for _, metrics in curves)
    values = [value for _, metrics in curves for key in (low, "median", high)
              for value in _positive(metrics["error_growth"][key]) if np.isfinite(value)]
    ceiling = 3 * max(values + [metrics["threshold"] for _, metrics in curves])  # where diverged bands end
    for label, metrics in curves:
        if single_bare_host and label.startswith("bare host"):
            colour = "0.45"
        else:
            colour, coloured = palette[coloured % len(palette)], coloured + 1
        growth = metrics["error_growth"]
        times = np.asarray(growth["time"], dtype=np.float64)
        end = max(end, float(times[-1])) if times.size else end
        median = metrics["valid_prediction_time"]["median"]
        shown = f"{label} (VPT {median:.3g})" if median is not None else label
        if len(scales) > 1:
            shown += f", error / {metrics.get('error_scale_kind', 'rms')} scale"
        if bands:
            axis.fill_between(times, _positive(growth[low]), _upper_edge(growth[high], growth[low], ceiling),
                              color=colour, alpha=0.15)
        axis.plot(times, _positive(growth["median"]), color=colour, linewidth=1.8, label=shown)
        if median is not None:
            axis.axvline(start + median, color=colour, linestyle=":", linewidth=1.2)
    for threshold in dict.fromkeys(metrics["threshold"] for _, metrics in curves):  # (--compare evaluate.vpt_threshold)
        axis.axhline(threshold, color="k", linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
    axis.plot([], [], color="0.3", linestyle=":", linewidth=1.2, label="median valid prediction time (dotted)")
    if bands:
        axis.fill_between([], [], [], color="0.3", alpha=0.15, label=f"{spread[0]:g}-{spread[1]:g}th percentile band")
    if end > start:
        axis.set_xlim(start, end)
    axis.set_yscale("log")
    axis.set_ylim(top=ceiling)
    axis.set_xlabel(time_label(first.get("time_units", "1")))
    axis.set_ylabel(error_label(scales[0]) if len(scales) == 1 else "normalised error (each curve's scale: legend)")
    axis.grid(True, which="major", alpha=0.3)
    axis.legend(fontsize="small", loc="lower right")
    exponent = first.get("lyapunov_exponent") if len(exponents) == 1 else None
    if exponent:
        top = axis.secondary_xaxis("top", functions=(lambda t: (t - start) * exponent, lambda s: s / exponent + start))
        top.set_xlabel(r"Lyapunov times $\lambda_1 (t - t_0)$")
    axis.set_title(title or f"error growth: median over members, band {spread[0]:g}-{spread[1]:g}th percentile")
    return save_figure(figure, out)
