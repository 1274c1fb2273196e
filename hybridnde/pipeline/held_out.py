"""Whether the truth a pipeline scores against is held out: do its members start from training states?

The rollouts start from the reference's first states. The pipeline draws them with ``rollout.seed``,
but a case can still hand the closure states it was trained on: ``rollout.initial_conditions``
naming the training truth, ``rollout.seed`` equal to ``initial_condition.seed``, or an
``initial_condition.file`` that both draws read. The reference's first states are therefore looked
up, bit for bit, among every state of the training data (any member, any saved time).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["members_from_training_states"]

#: training members read at a time (bounds memory for large truths)
_MEMBERS_PER_READ = 16


def _rows(values: np.ndarray) -> list[bytes]:
    """One key per state: ``values: (rows, *state)`` in float64, so a float32 file matches its float64 copy."""
    flat = np.ascontiguousarray(values, dtype=np.float64).reshape(values.shape[0], -1)
    return [row.tobytes() for row in flat]


def members_from_training_states(reference: str | Path, truth: str | Path, *, members=None) -> int | None:
    """How many of ``reference``'s members start (``u`` at its first time) from a state that is in
    ``truth``, the training data; ``None`` where their states cannot be compared (other grids).

    Both files: ``u(member, time, *state)`` as the pipeline writes them. ``members``: the member
    labels to look at (a rollout's, which may use fewer than the reference has); default all.
    """
    with xr.open_dataset(reference) as dataset:
        u = dataset["u"] if members is None else dataset["u"].sel(member=list(members))
        first = u.isel(time=0).values
    with xr.open_dataset(truth) as dataset:
        u = dataset["u"]
        if tuple(u.shape[2:]) != tuple(first.shape[1:]):
            return None
        wanted: dict[bytes, list[int]] = {}
        for member, key in enumerate(_rows(first)):
            wanted.setdefault(key, []).append(member)
        seen: set[int] = set()
        for start in range(0, u.shape[0], _MEMBERS_PER_READ):
            block = u.isel(member=slice(start, start + _MEMBERS_PER_READ)).values
            for key in _rows(block.reshape(-1, *block.shape[2:])):
                seen.update(wanted.get(key, ()))
            if len(seen) == len(first):
                break
    return len(seen)
