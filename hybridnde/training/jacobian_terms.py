"""Jacobian norm and conditioning penalties as a ``LossTerm`` of the ``Trainer`` (Finlay et al. 2020;
Josias & Brink 2022).

The penalty (``hybridnde.regularizers.jacobian_norms``) is taken of one of two fields
(``training.jacobian_penalty_field``), at every sample of the batch's windows (states along the data
trajectories, detached: the penalty shapes the vector field where the data live, it does not
differentiate through the data):

* ``"closure"``: what the closure adds to the host's right-hand side, ``P C_theta`` (``P`` the host's
  ``closure_contribution``: all of it, or a second-order host's accelerations) -- the learned field,
  as the directional regularizer sees it;
* ``"rhs"``: the hybrid right-hand side ``solver.rhs = F_known + C_theta``, the field the solver
  integrates. In a residual host its Jacobian is ``J_known + J_C``: the penalty's gradient drives
  ``J_C`` towards ``-J_known`` (on the KS host, N = 64: sigma_max 6.9e3 against the closure's 0.23,
  and 300 Adam steps on the Frobenius penalty alone taught a random CNN anti-hyperdiffusion).

Gradients reach ``C_theta`` only. The fields are autonomous here, so they are evaluated at ``t = 0``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from solvers import Solver

from ..regularizers.jacobian_norms import JacobianPenalty
from .terms import Batch, Weighted, ramp

__all__ = ["FIELDS", "JacobianPenaltyTerm", "closure_field", "sample_ids"]

#: the fields a penalty can act on (``training.jacobian_penalty_field`` once "auto" is resolved)
FIELDS = ("closure", "rhs")


def closure_field(solver: Solver):
    """``(t, u) -> P C_theta(t, u)``: what the solver's closure adds to its right-hand side."""
    return lambda t, u: solver.closure_contribution(solver.closure_tendency(t, u))


def sample_ids(starts: Tensor, length: int) -> Tensor:
    """One integer per window sample, ``(batch * length,)`` in the windows' flattened order: windows
    start at ``starts: (batch, 2)`` = ``(member row, time index)`` and run over ``length`` consecutive
    samples, so overlapping windows name a shared sample alike."""
    times = starts[:, 1:2].cpu() + torch.arange(length)
    return (starts[:, :1].cpu() << 32 | times).reshape(-1)


class JacobianPenaltyTerm:
    """``weight * penalty(field, 0, states)`` over all window samples of a batch.

    Args:
        penalty: a ``JacobianPenalty`` (``build_jacobian_penalty(name, ...)``); its ``name`` names the
            term in the log (``loss/frobenius``, ``loss/spectral``, ...).
        weight: its weight, reached linearly over ``warmup_epochs``.
        field: ``"closure"`` (the closure's contribution ``P C_theta``) or ``"rhs"`` (``solver.rhs``,
            the default here as before the choice existed; a case's ``"auto"`` is resolved by ``build_terms``).
    Warm-started penalties (spectral, Lanczos condition number) keep one vector per data sample
    (``row_ids`` from the windows' ``(member row, time index)``), so shuffled minibatches start from
    what earlier epochs found, and the store never outgrows the data.
    """

    def __init__(self, penalty: JacobianPenalty, *, weight: float, warmup_epochs: int = 0, field: str = "rhs"):
        if field not in FIELDS:
            raise ValueError(f"field={field!r}; choose one of {FIELDS}")
        self.penalty, self.weight, self.warmup_epochs = penalty, float(weight), int(warmup_epochs)
        self.name, self.field = penalty.name, field

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        windows = batch.windows
        states = windows.detach().reshape(-1, *windows.shape[2:])  # (batch * length, *state)
        time = solver.as_time(0.0)
        field = solver.rhs if self.field == "rhs" else closure_field(solver)
        if getattr(self.penalty, "state", None) is not None:  # warm-started: one vector per data sample
            value = self.penalty(field, time, states, row_ids=sample_ids(batch.starts, windows.shape[1]))
        else:
            value = self.penalty(field, time, states)
        return {self.name: Weighted(value, ramp(self.weight, epoch, self.warmup_epochs))}

    def state_dict(self) -> dict[str, Tensor]:
        """The penalty's random stream and warm-start vectors: a resumed run continues bit for bit."""
        return getattr(self.penalty, "state_dict", dict)()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if hasattr(self.penalty, "load_state_dict"):
            self.penalty.load_state_dict(state)
