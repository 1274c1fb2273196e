"""Case section for ensemble rollouts of the hybrid model."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import option

__all__ = ["RolloutConfig"]


@dataclass(frozen=True)
class RolloutConfig:
    members: int = option(64, "ensemble members", positive=True)
    steps: int = option(1000, "solver steps per member", positive=True)
    save_every: int = option(1, "keep every k-th step in the output", positive=True)
    batch_size: int = option(0, "members stepped together (0: sized automatically to the memory budget)", nonnegative=True)
    seed: int = option(1, "seed of the initial conditions; member i draws from the stream (seed, i) only", nonnegative=True)
