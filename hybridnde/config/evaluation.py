"""Case section for evaluating a rollout against the truth."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import option

__all__ = ["EvaluateConfig"]


@dataclass(frozen=True)
class EvaluateConfig:
    vpt_threshold: float = option(0.5, "valid prediction time: first time the normalised error exceeds this", positive=True)
    lyapunov_exponent: float | None = option(None, "leading Lyapunov exponent of the truth, to report times in Lyapunov times",
                                             positive=True)
