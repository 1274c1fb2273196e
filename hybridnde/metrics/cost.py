"""What a run cost, as recorded in its NetCDF global attributes: function evaluations and wall time."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["COST_ATTRIBUTES", "cost_from_attributes"]

#: attributes read as cost figures (``nfe*``: right-hand-side evaluations of adaptive solvers)
COST_ATTRIBUTES = ("nfe", "wall_seconds", "member_steps_per_second")


def cost_from_attributes(attributes: Mapping[str, Any]) -> dict[str, float]:
    """The cost figures among ``attributes``: ``nfe``, ``nfe_*``, ``wall_seconds``,
    ``member_steps_per_second`` (those present, as numbers; others are ignored)."""
    out: dict[str, float] = {}
    for key, value in attributes.items():
        if key in COST_ATTRIBUTES or key.startswith("nfe_"):
            try:
                number = float(np.asarray(value).ravel()[0])
            except (TypeError, ValueError, IndexError):
                continue
            out[key] = int(number) if key.startswith("nfe") and number.is_integer() else number
    return out
