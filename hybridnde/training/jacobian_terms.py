"""Jacobian norm and conditioning penalties as a ``LossTerm`` of the ``Trainer`` (Finlay et al. 2020;
Josias & Brink 2022).

The penalty (``hybridnde.regularizers.jacobian_norms``) is taken of the hybrid right-hand side
``solver.rhs = F_known + C_theta`` -- the field the solver integrates -- at every sample of the
batch's windows (states along the data trajectories, detached: the penalty shapes the vector field
where the data live, it does not differentiate through the data). Gradients reach ``C_theta`` only.
The fields are autonomous here, so they are evaluated at ``t = 0``.
"""
from __future__ import annotations

from torch import nn

from solvers import Solver

from ..regularizers.jacobian_norms import JacobianPenalty
from .terms import Batch, Weighted, ramp

__all__ = ["JacobianPenaltyTerm"]


class JacobianPenaltyTerm:
    """``weight * penalty(solver.rhs, 0, states)`` over all window samples of a batch.

    Args:
        penalty: a ``JacobianPenalty`` (``build_jacobian_penalty(name, ...)``); its ``name`` names the
            term in the log (``loss/frobenius``, ``loss/spectral``, ...).
        weight: its weight, reached linearly over ``warmup_epochs``.
    Warm-started penalties (spectral, Lanczos condition number) keep their vectors per batch, keyed by
    the windows' ``(member, start)`` pairs, so full-batch training reuses them every epoch.
    """

    def __init__(self, penalty: JacobianPenalty, *, weight: float, warmup_epochs: int = 0):
        self.penalty, self.weight, self.warmup_epochs = penalty, float(weight), int(warmup_epochs)
        self.name = penalty.name

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        windows = batch.windows
        states = windows.detach().reshape(-1, *windows.shape[2:])  # (batch * length, *state)
        time = solver.as_time(0.0)
        if getattr(self.penalty, "state", None) is not None:  # warm-started: one key per batch composition
            value = self.penalty(solver.rhs, time, states, key=tuple(batch.starts.reshape(-1).tolist()))
        else:
            value = self.penalty(solver.rhs, time, states)
        return {self.name: Weighted(value, ramp(self.weight, epoch, self.warmup_epochs))}
