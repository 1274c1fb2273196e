"""Jacobian norm and conditioning penalties as a ``LossTerm`` of the ``Trainer`` (Finlay et al. 2020;
Josias & Brink 2022).

The penalty (``hybridnde.regularizers.jacobian_norms``) is taken of the hybrid right-hand side
``solver.rhs = F_known + C_theta`` -- the field the solver integrates -- at every sample of the
batch's windows (states along the data trajectories, detached: the penalty shapes the vector field
where the data live, it does not differentiate through the data). Gradients reach ``C_theta`` only.
The fields are autonomous here, so they are evaluated at ``t = 0``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from solvers import Solver

from ..regularizers.jacobian_norms import JacobianPenalty
from .terms import Batch, Weighted, ramp

__all__ = ["JacobianPenaltyTerm", "sample_ids"]


def sample_ids(starts: Tensor, length: int) -> Tensor:
    """One integer per window sample, ``(batch * length,)`` in the windows' flattened order: windows
    start at ``starts: (batch, 2)`` = ``(member row, time index)`` and run over ``length`` consecutive
    samples, so overlapping windows name a shared sample alike."""
    times = starts[:, 1:2].cpu() + torch.arange(length)
    return (starts[:, :1].cpu() << 32 | times).reshape(-1)


class JacobianPenaltyTerm:
    """``weight * penalty(solver.rhs, 0, states)`` over all window samples of a batch.

    Args:
        penalty: a ``JacobianPenalty`` (``build_jacobian_penalty(name, ...)``); its ``name`` names the
            term in the log (``loss/frobenius``, ``loss/spectral``, ...).
        weight: its weight, reached linearly over ``warmup_epochs``.
    Warm-started penalties (spectral, Lanczos condition number) keep one vector per data sample
    (``row_ids`` from the windows' ``(member row, time index)``), so shuffled minibatches start from
    what earlier epochs found, and the store never outgrows the data.
    """

    def __init__(self, penalty: JacobianPenalty, *, weight: float, warmup_epochs: int = 0):
        self.penalty, self.weight, self.warmup_epochs = penalty, float(weight), int(warmup_epochs)
        self.name = penalty.name

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        windows = batch.windows
        states = windows.detach().reshape(-1, *windows.shape[2:])  # (batch * length, *state)
        time = solver.as_time(0.0)
        if getattr(self.penalty, "state", None) is not None:  # warm-started: one vector per data sample
            value = self.penalty(solver.rhs, time, states, row_ids=sample_ids(batch.starts, windows.shape[1]))
        else:
            value = self.penalty(solver.rhs, time, states)
        return {self.name: Weighted(value, ramp(self.weight, epoch, self.warmup_epochs))}

    def state_dict(self) -> dict[str, Tensor]:
        """The penalty's random stream and warm-start vectors: a resumed run continues bit for bit."""
        return getattr(self.penalty, "state_dict", dict)()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if hasattr(self.penalty, "load_state_dict"):
            self.penalty.load_state_dict(state)
