"""Case section for evaluating a rollout against the truth."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import option

__all__ = ["EvaluateConfig"]


@dataclass(frozen=True)
class EvaluateConfig:
    vpt_threshold: float = option(0.5, "valid prediction time: first time the normalised error exceeds this", positive=True)
    error_scale: str = option("rms", "what the error is normalised by: rms = the truth's root-mean-square state norm "
                              "(Pathak et al. 2018); anomaly = that of its departure from the mean state (its standard "
                              "deviation; for states whose mean is far from 0, e.g. Lorenz-63)",
                              choices=("rms", "anomaly"))
    lyapunov_exponent: float | None = option(None, "leading Lyapunov exponent of the truth, to report times in Lyapunov times",
                                             positive=True)
