"""Whether the truth a pipeline scores against is held out: do its members start from training states?

The rollouts start from the reference's first states. The pipeline draws them with ``rollout.seed``,
but a case can still hand the closure states it was trained on: ``rollout.initial_conditions``
naming the training truth, ``rollout.seed`` equal to ``initial_condition.seed``, or an
``initial_condition.file`` that both draws read. The reference's first states are therefore looked
up among every state of the training data (any member, any saved time), equal up to rounding: within
``RELATIVE_TOLERANCE`` in the 2-norm. Not bit for bit: the truth's spin-up (8 members in the quick KS
case) and the reference's (16) are batched differently, so the same draw ended 1e-11 apart and a
reference started from the training states was reported held out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["members_from_training_states"]

#: training members read at a time (bounds memory for large truths)
_MEMBERS_PER_READ = 16
#: training states compared with all wanted ones at a time (bounds the distance matrix)
_ROWS_PER_COMPARISON = 4096
#: two states are the same up to rounding when ``||a - b|| <= RELATIVE_TOLERANCE * max(||a||, ||b||)``:
#: far above rounding differences (1e-11 relative after a chaotic spin-up batched differently; 6e-8 for a
#: float32 copy), far below the distance of two distinct draws
RELATIVE_TOLERANCE = 1e-6


def _flat(values: np.ndarray) -> np.ndarray:
    """``values: (rows, *state)`` as float64 rows ``(rows, n)``."""
    return np.ascontiguousarray(values, dtype=np.float64).reshape(values.shape[0], -1)


def _matches(wanted: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which of ``wanted: (m, n)`` equal some row of ``rows: (r, n)`` up to rounding, ``(m,)`` booleans.

    Squared distances by ``|a|^2 + |b|^2 - 2 a.b``: its cancellation error (~1e-16 |a|^2) is far below
    the tolerance's square (1e-12 |a|^2).
    """
    found = np.zeros(len(wanted), dtype=bool)
    wanted_norms = np.einsum("ij,ij->i", wanted, wanted)
    for start in range(0, len(rows), _ROWS_PER_COMPARISON):
        block = rows[start:start + _ROWS_PER_COMPARISON]
        block_norms = np.einsum("ij,ij->i", block, block)
        squared = wanted_norms[:, None] + block_norms[None, :] - 2.0 * (wanted @ block.T)
        bound = RELATIVE_TOLERANCE**2 * np.maximum(wanted_norms[:, None], block_norms[None, :])
        found |= (squared <= bound).any(axis=1)
    return found


def members_from_training_states(reference: str | Path, truth: str | Path, *, members=None) -> int | None:
    """How many of ``reference``'s members start (``u`` at its first time) from a state that is in
    ``truth``, the training data, up to rounding (module docstring); ``None`` where their states cannot
    be compared (other grids).

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
        wanted = _flat(first)
        seen = np.zeros(len(wanted), dtype=bool)
        for start in range(0, u.shape[0], _MEMBERS_PER_READ):
            block = u.isel(member=slice(start, start + _MEMBERS_PER_READ)).values
            seen |= _matches(wanted, _flat(block.reshape(-1, *block.shape[2:])))
            if seen.all():
                break
    return int(seen.sum())
