"""Number and text formatting shared by the run's reports (``report``, ``comparison``)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..evaluation_summary import percent_down

__all__ = ["number", "given", "spread_keys", "median_spread", "percent", "relative_link"]


def number(value: Any, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept (2.00, not 2: a measured 2.0
    read as a round count); integers as they are; ``None`` and non-finite values ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value:#.{digits}g}".replace(".e", "e").rstrip(".")


def given(value: Any) -> str:
    """A value the case sets (or one made of such: a horizon, a sampling interval) as one writes it:
    0.01, 8 (``number`` would say 0.0100 and 8.00, a measured look)."""
    if value is None:
        return "n/a"
    value = float(value)
    return f"{value:g}" if math.isfinite(value) else "n/a"


def spread_keys(metrics: Mapping[str, Any]) -> tuple[str, str]:
    low, high = metrics.get("spread_percentiles", (16.0, 84.0))
    return f"p{low:g}", f"p{high:g}"


def median_spread(summary: Mapping[str, Any] | None, keys: tuple[str, str]) -> str:
    if not summary:
        return "n/a"
    return f"{number(summary.get('median'))} [{number(summary.get(keys[0]))}, {number(summary.get(keys[1]))}]"


def percent(fraction: Any, count: int | None = None, total: int | None = None) -> str:
    if fraction is None:
        return "n/a"
    text = percent_down(float(fraction))  # as `hybridnde evaluate` says it: 999 of 1000 is not "100%"
    return f"{text} ({count}/{total})" if count is not None and total is not None else text


def relative_link(path: Path | str, folder: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(folder))
    except ValueError:
        try:
            return str(Path("..") / path.relative_to(folder.parent))
        except ValueError:
            return str(path)
