"""Ensemble summaries: quantiles that treat a diverged member as infinitely bad, median and spread.

Every metric is computed per member and summarised by its median and a spread of percentiles
(16th/84th by default: the +-1 sigma band of a Gaussian, but robust to outliers). A member whose
value is ``+inf`` (a diverged error) ranks above every finite value instead of poisoning the
summary with NaN; NaN means "no value" and is dropped.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["DEFAULT_SPREAD", "quantiles", "summarise", "json_ready"]

#: percentiles reported as the spread over members
DEFAULT_SPREAD: tuple[float, float] = (16.0, 84.0)


def quantiles(values: np.ndarray, percentiles: Sequence[float], *, axis: int = 0) -> np.ndarray:
    """Percentiles of ``values`` along ``axis`` with linear interpolation, ``+inf``-safe.

    NaN entries are treated as ``+inf`` (callers map "undefined" to NaN only where it means
    "diverged"; use ``summarise`` to drop NaN instead). Unlike ``numpy.percentile``, two infinite
    neighbours give ``inf`` rather than NaN.

    Args:
        values: any shape; the quantiles are taken along ``axis``.
        percentiles: in [0, 100].
    Returns:
        ``(len(percentiles), *shape without axis)``.
    """
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    values = np.where(np.isnan(values), np.inf, values)
    ordered = np.sort(values, axis=0)
    count = ordered.shape[0]
    if count == 0:
        return np.full((len(percentiles), *ordered.shape[1:]), np.nan)
    out = []
    for percentile in percentiles:
        position = float(percentile) / 100.0 * (count - 1)
        lower, upper = int(math.floor(position)), int(math.ceil(position))
        low, high = ordered[lower], ordered[upper]
        with np.errstate(invalid="ignore"):
            blended = low + (position - lower) * (high - low)
        out.append(np.where(low == high, low, blended))
    return np.stack(out)


def summarise(values: Sequence[float] | np.ndarray, *, spread: Sequence[float] = DEFAULT_SPREAD,
              per_member: bool = False) -> dict[str, Any]:
    """Median, spread percentiles, min, max and count of the non-NaN ``values`` (one per member).

    Keys: ``median``, ``p<lo>``, ``p<hi>`` (e.g. ``p16``, ``p84``), ``min``, ``max``, ``count``,
    and ``per_member`` (the values themselves) when asked.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    defined = values[~np.isnan(values)]
    result: dict[str, Any] = {}
    if defined.size:
        levels = quantiles(defined, [50.0, *spread])
        result["median"] = float(levels[0])
        for percentile, level in zip(spread, levels[1:]):
            result[f"p{percentile:g}"] = float(level)
        result["min"], result["max"] = float(defined.min()), float(defined.max())
    else:
        result["median"] = math.nan
        for percentile in spread:
            result[f"p{percentile:g}"] = math.nan
        result["min"] = result["max"] = math.nan
    result["count"] = int(defined.size)
    if per_member:
        result["per_member"] = [float(v) for v in values]
    return result


def json_ready(value: Any) -> Any:
    """``value`` with numpy scalars/arrays turned into Python ones and NaN/inf into ``None``.

    Strict JSON has no NaN or Infinity; ``null`` then means "undefined or infinite" and each
    metric's documentation says which.
    """
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return [json_ready(item) for item in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value
