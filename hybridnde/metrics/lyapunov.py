"""Leading Lyapunov exponent of any solver (with or without a closure) from two nearby trajectories.

Benettin, Galgani & Strelcyn 1976 (Phys. Rev. A 14, 2338) / Benettin et al. 1980: integrate a
reference trajectory ``u`` and a companion ``w = u + d_0 e`` side by side; every ``renormalise_every``
steps accumulate ``log(|w - u| / d_0)`` and pull ``w`` back to distance ``d_0`` along ``w - u``. The
separation aligns with the most unstable direction, and

    lambda_1 ~ (1 / T) sum_k log(|w - u|_k / d_0)

over a measured time ``T`` after an alignment (transient) phase. Works for every ``Solver``: it only
calls ``solver.step``, so a closure in the hook is part of the dynamics measured. Members are
batched: reference and companion trajectories of all members are one batch of ``2 * batch`` states.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from solvers import Solver

__all__ = ["LyapunovEstimate", "leading_lyapunov_exponent"]


@dataclass(frozen=True)
class LyapunovEstimate:
    """The estimate over members: ``exponent`` (mean of the finite per-member values, i.e. the
    time average over all measured time), its ``standard_error``, the ``per_member`` values
    (NaN for a member whose trajectory diverged), the measured ``duration`` per member, and the
    number of ``diverged`` members."""

    exponent: float
    standard_error: float
    per_member: np.ndarray
    duration: float
    diverged: int

    def as_dict(self) -> dict:
        return {"exponent": self.exponent, "standard_error": self.standard_error, "duration": self.duration,
                "members": int(self.per_member.size), "diverged": self.diverged,
                "per_member": [float(v) for v in self.per_member]}


def _norms(difference: Tensor) -> Tensor:
    """Euclidean norm over the state of each member: ``(batch, *state) -> (batch,)``."""
    return torch.linalg.vector_norm(difference.reshape(difference.shape[0], -1), dim=1)


@torch.no_grad()
def leading_lyapunov_exponent(solver: Solver, u0: Tensor, *, duration: float, transient: float = 0.0,
                              renormalise_every: int = 1, relative_perturbation: float | None = None,
                              seed: int = 0, t0: float = 0.0, blowup_threshold: float = math.inf) -> LyapunovEstimate:
    """Estimate the leading Lyapunov exponent of ``solver``'s dynamics (closure included).

    Args:
        solver: any host solver; it is stepped with its own ``dt``.
        u0: (batch, *state) starting states on the solver's device and dtype, one estimate each.
        duration: measured time per member, in the solver's time units (rounded to whole steps).
        transient: time run first, with renormalisation but without accumulating, so that states
            reach the attractor and the separation aligns with the leading direction.
        renormalise_every: steps between renormalisations. Between two of them the separation
            must stay small (linear regime): keep ``renormalise_every * dt * lambda_1`` well below
            ``log(1 / relative_perturbation)``.
        relative_perturbation: ``d_0 / |u|`` per member, reset at every renormalisation (``|u|``
            the state's current Euclidean norm); default ``sqrt(machine epsilon)`` of the
            dtype (1.5e-8 in float64, 3.5e-4 in float32), small enough to stay linear and large
            enough that round-off in ``w - u`` stays negligible.
        seed: seed of the random initial separation directions (drawn on the CPU).
        blowup_threshold: a member whose state has a component beyond it has diverged, as a rollout
            marks it (``rollout.blowup_threshold``): an unbounded growth is no Lyapunov exponent (the
            bare KS host's linear growth read 0.22, "0 diverged", at |u| = 2e63).
    Returns:
        A ``LyapunovEstimate`` in inverse time units of the solver.
    """
    solver.check_state(u0)
    if not duration > 0 or transient < 0 or renormalise_every < 1:
        raise ValueError(f"need duration > 0, transient >= 0, renormalise_every >= 1; got {duration}, "
                         f"{transient}, {renormalise_every}")
    dt = solver.dt
    measured_steps = max(renormalise_every, int(round(duration / dt / renormalise_every)) * renormalise_every)
    transient_steps = int(round(transient / dt / renormalise_every)) * renormalise_every
    if relative_perturbation is None:
        relative_perturbation = math.sqrt(torch.finfo(u0.dtype).eps)
    batch = u0.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    direction = torch.randn((batch, *u0.shape[1:]), generator=generator, dtype=torch.float64)
    direction = direction.to(device=u0.device, dtype=u0.dtype)
    shape = (batch,) + (1,) * (u0.ndim - 1)

    def separation_size(u: Tensor) -> Tensor:
        """d_0 per member, relative to the current state: round-off in ``w - u`` scales with ``|u|``."""
        return relative_perturbation * torch.clamp(_norms(u), min=1e-12)

    def companion(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``w`` pulled back to distance ``d_0`` from ``u``; returns it, the distance before, and ``d_0``."""
        separation = w - u
        distance, size = _norms(separation), separation_size(u)
        return u + separation * (size / distance).reshape(shape), distance, size

    w, _, size = companion(u0, u0 + direction)
    start = (u0, w, size)
    state = torch.cat([u0, w])  # (2 batch, *state): reference trajectories, then companions
    log_growth = torch.zeros(batch, dtype=torch.float64, device=u0.device)
    finite = torch.ones(batch, dtype=torch.bool, device=u0.device)
    for index in range(transient_steps + measured_steps):
        state = solver.step(t0 + index * dt, state)
        if (index + 1) % renormalise_every:
            continue
        u = state[:batch]
        w, distance, new_size = companion(u, state[batch:])
        # a diverged member stops counting; its states are reset so it cannot poison the batch
        largest = u.reshape(batch, -1).abs().amax(dim=1)  # (NaN where any entry is)
        ok = torch.isfinite(distance) & (distance > 0) & torch.isfinite(largest) & (largest <= blowup_threshold)
        finite &= ok
        if index >= transient_steps:
            log_growth += torch.where(finite, torch.log(distance / size), torch.zeros_like(distance)).double()
        keep = finite.reshape(shape)
        u, w = torch.where(keep, u, start[0]), torch.where(keep, w, start[1])
        size = torch.where(finite, new_size, start[2])
        state = torch.cat([u, w])
    measured_time = measured_steps * dt
    per_member = (log_growth / measured_time).cpu().numpy()
    per_member[~finite.cpu().numpy()] = np.nan
    values = per_member[np.isfinite(per_member)]
    exponent = float(values.mean()) if values.size else math.nan
    standard_error = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan
    return LyapunovEstimate(exponent=exponent, standard_error=standard_error, per_member=per_member,
                            duration=measured_time, diverged=int((~finite).sum()))
