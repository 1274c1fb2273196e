"""Multiple shooting: the training window split into segments, each integrated from its own free
initial state, with a penalty on the jumps between segments (Bock & Plitt 1984; the baseline of
Ko et al. 2023).

The observation times ``t_0 .. t_{m-1}`` are split into ``n_segments`` contiguous pieces that share
their boundary samples (``numpy.array_split`` sizes). Segment ``k`` starts at sample ``s_k`` from the
state ``u_data(t_{s_k}) + correction_k``; the corrections are trainable parameters initialised at zero
(they absorb the observation noise of the starting samples). The first segment starts from the first
observation, as vanilla training does. The loss is

    mean_i ||u_pred(t_i) - u_data(t_i)||^2 / n + continuity_weight * mean_k ||u_k(t_{s_{k+1}}) - u_{k+1}(t_{s_{k+1}})||^2 / n

with the prediction at a shared boundary sample taken from the later segment.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from solvers import Solver
from solvers.integrators import odeint_adaptive

from .terms import AdaptiveRolloutLoss, Batch, Weighted

__all__ = ["segment_bounds", "shoot", "MultipleShooting", "MultipleShootingLoss"]

VectorField = Callable[[Tensor, Tensor], Tensor]
#: ``integrate(vector_field, u0: (batch, n), times: (k,)) -> (batch, k, n)``, the trainer's solver
Integrate = Callable[[VectorField, Tensor, Tensor], Tensor]


def segment_bounds(n_samples: int, n_segments: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` sample indices of each segment, ``stop`` inclusive and shared with the
    next segment's ``start``; lengths differ by at most one (``numpy.array_split`` of the intervals)."""
    intervals = n_samples - 1
    if n_segments < 1 or intervals < n_segments:
        raise ValueError(f"cannot split {n_samples} samples into {n_segments} segments of at least one interval; "
                         f"use 1 <= n_segments <= {max(intervals, 1)}")
    base, extra = divmod(intervals, n_segments)
    bounds, start = [], 0
    for k in range(n_segments):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shoot(vector_field: VectorField, observations: Tensor, times: Tensor, initial_states: Tensor,
          bounds: list[tuple[int, int]], integrate: Integrate, *, batched: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Integrate every segment and join them.

    Args:
        observations: (batch, m, n) data at ``times: (m,)``.
        initial_states: (n_segments, batch, n) starting state of each segment.
        bounds: ``segment_bounds(m, n_segments)``.
        batched: integrate all segments as one batch from relative times (autonomous field, equally
            spaced samples); else one solve per segment at absolute times.
    Returns ``(prediction, data_loss, continuity)``: the joined prediction ``(batch, m, n)`` (a shared
    boundary sample taken from the later segment), its mean squared error against the observations,
    and the mean squared jump at the joins (0 for one segment).
    """
    batch = observations.shape[0]
    n_segments = len(bounds)
    if batched:
        longest = max(stop - start for start, stop in bounds) + 1
        relative = times[:longest] - times[0]
        flat = integrate(vector_field, initial_states.reshape(-1, initial_states.shape[-1]), relative)
        stacked = flat.reshape(n_segments, batch, longest, -1)  # (segment, batch, time, n)
        pieces = [stacked[k, :, : stop - start + 1] for k, (start, stop) in enumerate(bounds)]
    else:
        pieces = [integrate(vector_field, initial_states[k], times[start: stop + 1])
                  for k, (start, stop) in enumerate(bounds)]
    joined = torch.cat([piece[:, :-1] for piece in pieces[:-1]] + [pieces[-1]], dim=1)
    data_loss = (joined - observations).pow(2).mean()
    if n_segments > 1:
        ends = torch.stack([piece[:, -1] for piece in pieces[:-1]])
        starts = torch.stack([piece[:, 0] for piece in pieces[1:]])
        continuity = (ends - starts).pow(2).mean()
    else:
        continuity = data_loss.new_zeros(())
    return joined, data_loss, continuity


def _uniform(times: Tensor) -> bool:
    steps = times[1:] - times[:-1]
    return bool(torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9, atol=0.0)) if len(steps) else True


class MultipleShooting(nn.Module):
    """Segments with free initial states over a training window.

    Args:
        observations: (batch, m, n) observed states at ``times``.
        times: (m,) observation times.
        n_segments: number of shooting segments.
        continuity_weight: weight of the mean squared jump between consecutive segments.
        autonomous: the vector field ignores ``t``; then all segments are integrated as one batch
            from relative times (one adaptive solve instead of ``n_segments``). Needs equally spaced
            samples; otherwise (or for ``autonomous=False``) the segments are solved one by one.
    The corrections are ``nn.Parameter``s: give ``shooting.parameters()`` to the optimiser too.
    """

    def __init__(self, observations: Tensor, times: Tensor, *, n_segments: int, continuity_weight: float = 1.0,
                 autonomous: bool = True):
        super().__init__()
        if observations.ndim != 3 or observations.shape[1] != times.shape[0]:
            raise ValueError(f"observations must be (batch, m, n) with m = len(times) = {times.shape[0]}, "
                             f"got {tuple(observations.shape)}")
        if continuity_weight < 0:
            raise ValueError(f"continuity_weight={continuity_weight} must be zero or positive")
        self.bounds = segment_bounds(times.shape[0], n_segments)
        self.continuity_weight = float(continuity_weight)
        self.register_buffer("observations", observations.detach().clone())
        self.register_buffer("times", times.detach().clone())
        batch, _, n = observations.shape
        self.corrections = nn.Parameter(torch.zeros(max(n_segments - 1, 0), batch, n, dtype=observations.dtype,
                                                    device=observations.device))
        self.batched = autonomous and _uniform(times)

    @property
    def n_segments(self) -> int:
        return len(self.bounds)

    def initial_states(self) -> Tensor:
        """(n_segments, batch, n): the first observation, then corrected observations at each start."""
        starts = [start for start, _ in self.bounds]
        first = self.observations[:, 0][None]
        later = self.observations[:, starts[1:]].movedim(1, 0) + self.corrections
        return torch.cat([first, later])

    def forward(self, vector_field: VectorField, integrate: Integrate) -> tuple[Tensor, Tensor, Tensor]:
        """``(prediction, data_loss, continuity)``, see ``shoot``."""
        return shoot(vector_field, self.observations, self.times, self.initial_states(), self.bounds, integrate,
                     batched=self.batched)

    def loss(self, vector_field: VectorField, integrate: Integrate) -> Tensor:
        _, data_loss, continuity = self(vector_field, integrate)
        return data_loss + self.continuity_weight * continuity


class MultipleShootingLoss(AdaptiveRolloutLoss):
    """Multiple shooting over each training window, a ``LossTerm`` for the ``Trainer``.

    Every window ``(batch, steps + 1, n)`` is split into ``n_segments`` segments; segment ``k > 0`` starts
    from the window's sample ``s_k`` plus a trainable correction stored per ``(member, sample)`` of
    the training trajectories (``corrections: (members, times, *state)``, zero-initialised), so a window
    seen again continues from its corrections. They are gathered as rows of a table with sparse
    gradients, and ``sparse_parameters()`` gives the table to the trainer's lazy Adam: a batch moves
    only the corrections of its own windows (AdamW's moments and decay moved every one, every step, by
    up to ~10x one step's move); ``state_dict()`` gives them to its checkpoints. Terms: ``multiple_shooting`` (data MSE, weight 1) and
    ``continuity`` (mean squared jump, ``continuity_weight``). ``predict`` -- validation, rollouts --
    is the plain model from the window's first sample. Adaptive torchdiffeq solves, NFE counted.
    """

    name = "multiple_shooting"
    uses_window_times = False  # segments run on the window's own clock from 0

    def __init__(self, *, steps: int, n_segments: int, continuity_weight: float, trajectory_shape: tuple[int, ...],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64, method: str = "dopri5",
                 rtol: float = 1e-7, atol: float = 1e-9, adjoint: bool = False, autonomous: bool = True):
        super().__init__(steps=steps, method=method, rtol=rtol, atol=atol, adjoint=adjoint)
        self.bounds = segment_bounds(steps + 1, n_segments)
        if continuity_weight < 0:
            raise ValueError(f"continuity_weight={continuity_weight} must be zero or positive")
        self.continuity_weight, self.autonomous = float(continuity_weight), bool(autonomous)
        self.trajectory_shape = tuple(trajectory_shape)
        (members, times), state = self.trajectory_shape[:2], self.trajectory_shape[2:]
        self.table = nn.Parameter(torch.zeros(members * times, max(1, math.prod(state)), device=device, dtype=dtype))

    @property
    def corrections(self) -> Tensor:
        """``(members, times, *state)``: a view of the table (writes through it)."""
        return self.table.view(self.trajectory_shape)

    def sparse_parameters(self) -> Iterator[nn.Parameter]:
        yield self.table

    def state_dict(self) -> dict[str, Tensor]:
        return {"corrections": self.corrections.detach().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            self.corrections.copy_(state["corrections"])

    def _integrate(self, solver: Solver) -> Integrate:
        params = list(solver.closure.parameters()) if isinstance(solver.closure, nn.Module) else None

        def integrate(field: VectorField, u0: Tensor, times: Tensor) -> Tensor:
            prediction, counter = odeint_adaptive(field, u0, times, method=self.method, rtol=self.rtol, atol=self.atol,
                                                  adjoint=self.adjoint, adjoint_params=params)
            self._counters.append((counter, counter.nfe))
            return prediction
        return integrate

    def __call__(self, model: nn.Module, solver: Solver, batch: Batch, epoch: int) -> dict[str, Weighted]:
        windows = batch.windows[:, : self.steps + 1]
        times = torch.arange(windows.shape[1], dtype=windows.dtype, device=windows.device) * batch.sample_interval
        members, first = batch.starts[:, 0].to(self.corrections.device), batch.starts[:, 1].to(self.corrections.device)
        later = [start for start, _ in self.bounds[1:]]
        if later:
            offsets = torch.as_tensor(later, device=first.device)
            rows = members[None, :] * self.trajectory_shape[1] + first[None, :] + offsets[:, None]
            observed = windows[:, later].movedim(1, 0)  # (segments-1, batch, *state)
            corrections = nn.functional.embedding(rows, self.table, sparse=True).view_as(observed)
            starts = torch.cat([windows[:, 0][None], observed + corrections])
        else:
            starts = windows[:, 0][None]
        _, data_loss, continuity = shoot(solver.rhs, windows, times, starts, self.bounds, self._integrate(solver),
                                         batched=self.autonomous)
        return {self.name: Weighted(data_loss, 1.0), "continuity": Weighted(continuity, self.continuity_weight)}
