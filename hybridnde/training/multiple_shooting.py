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

from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["segment_bounds", "MultipleShooting"]

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
        steps = times[1:] - times[:-1]
        uniform = bool(torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-9, atol=0.0)) if len(steps) else True
        self.batched = autonomous and uniform

    @property
    def n_segments(self) -> int:
        return len(self.bounds)

    def initial_states(self) -> Tensor:
        """(n_segments, batch, n): the first observation, then corrected observations at each start."""
        starts = [start for start, _ in self.bounds]
        first = self.observations[:, 0][None]
        later = self.observations[:, starts[1:]].movedim(1, 0) + self.corrections
        return torch.cat([first, later])

    def segments(self, vector_field: VectorField, integrate: Integrate) -> list[Tensor]:
        """Predicted states of every segment, each ``(batch, stop - start + 1, n)``."""
        u0 = self.initial_states()
        batch = self.observations.shape[0]
        if self.batched:
            longest = max(stop - start for start, stop in self.bounds) + 1
            relative = self.times[:longest] - self.times[0]
            flat = integrate(vector_field, u0.reshape(-1, u0.shape[-1]), relative)  # (segments * batch, longest, n)
            stacked = flat.reshape(self.n_segments, batch, longest, -1)
            return [stacked[k, :, : stop - start + 1] for k, (start, stop) in enumerate(self.bounds)]
        return [integrate(vector_field, u0[k], self.times[start: stop + 1]) for k, (start, stop) in enumerate(self.bounds)]

    def forward(self, vector_field: VectorField, integrate: Integrate) -> tuple[Tensor, Tensor, Tensor]:
        """``(prediction, data_loss, continuity)``: the joined prediction ``(batch, m, n)``, its mean
        squared error against the observations, and the mean squared jump at the segment joins."""
        pieces = self.segments(vector_field, integrate)
        joined = torch.cat([piece[:, :-1] for piece in pieces[:-1]] + [pieces[-1]], dim=1)
        data_loss = (joined - self.observations).pow(2).mean()
        if len(pieces) > 1:
            ends = torch.stack([piece[:, -1] for piece in pieces[:-1]])
            starts = torch.stack([piece[:, 0] for piece in pieces[1:]])
            continuity = (ends - starts).pow(2).mean()
        else:
            continuity = data_loss.new_zeros(())
        return joined, data_loss, continuity

    def loss(self, vector_field: VectorField, integrate: Integrate) -> Tensor:
        _, data_loss, continuity = self(vector_field, integrate)
        return data_loss + self.continuity_weight * continuity
