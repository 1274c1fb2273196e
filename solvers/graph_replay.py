"""How a ``Solver`` replays its steps as CUDA graphs (``cuda_graphs`` captures and replays one step).

``GraphReplay`` is the part of ``solvers.base.Solver`` that decides when a step is replayed, keeps
the captured steps (one per state tensor, ``dt``, closure and closure weights), captures new ones and
trusts them only once their first replay made the eager step's increment (``same_increment``); what
the solver's attributes mean is in ``Solver``'s docstring. It relies on the solver's ``closure``,
``dtype``, ``autonomous``, ``_step_eagerly`` and ``_needs_autograd``.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .cuda_graphs import CapturedStep, GraphCache, GraphCaptureError, module_tensor_addresses

__all__ = ["GraphReplay", "same_increment"]


class GraphReplay:
    """Mixin of ``Solver``: CUDA-graph replay of ``step_internal`` (see ``Solver``)."""

    #: devices whose steps are replayed as captured graphs (``cuda_graphs``)
    graph_device_types: tuple[str, ...] = ("cuda",)
    #: what captures a step; a class attribute so tests can stand in for CUDA on the CPU
    captured_step_type = CapturedStep

    def _init_graphs(self) -> None:
        self.cuda_graphs = True
        self.capture_closure = False
        self._captured = GraphCache()
        self._capture_failed = False  # a graph failed once: step eagerly from then on
        self._closure_addresses: tuple = ()  # of the closure's weights, refreshed by to_internal

    def _step_reads_time(self) -> bool:
        """Whether a step depends on ``t`` (then the graph gets it as an input)."""
        return self.closure is not None or not self.autonomous

    def _graph_buffers(self, state: Tensor, dt: float) -> tuple:
        """Objects holding buffers that ``_step_eagerly`` reuses between calls (a graph writes into them)."""
        return ()

    def _replays(self, state: Tensor) -> bool:
        """Whether ``step_internal`` replays a CUDA graph for ``state``."""
        return (self.cuda_graphs and not self._capture_failed and state.device.type in self.graph_device_types
                and (self.closure is None or self.capture_closure) and not self._needs_autograd(state)
                and state.numel() > 0)

    def _note_closure_weights(self, u: Tensor) -> None:
        if self.closure is not None and self._replays(u):  # once per trajectory, not per step (~16 us)
            self._closure_addresses = module_tensor_addresses(self.closure)

    def reset_cuda_graphs(self) -> None:
        """Drop every captured step (they are captured again when needed) and allow graphs again."""
        self._captured.clear()
        self._capture_failed = False

    def _replay(self, t: Tensor | float, state: Tensor, dt: float) -> bool:
        """Step ``state`` in place by replaying its graph (captured now if new); ``False``: step eagerly."""
        key = GraphCache.key(state, dt, id(self.closure), self._closure_addresses)
        captured = self._captured.get(key)
        if captured is not None:
            captured.replay(t)
            return True
        try:
            captured = self._capture(state, dt)
        except GraphCaptureError as error:  # e.g. a closure that synchronises with the host
            self._stop_graphs(f"capture failed ({error})")
            return False
        # trusted (and cached) only once its first replay has made the eager step's increment
        before = state.clone()
        expected = self._step_eagerly(t, before.clone(), dt)
        captured.replay(t)
        if not same_increment(before, state, expected):
            state.copy_(expected)
            self._stop_graphs("a replayed step differs from the eager step")
            return True
        self._captured.put(key, captured)
        return True

    def _capture(self, state: Tensor, dt: float) -> CapturedStep:
        # always a device tensor: a float t would become a host-to-device copy inside the step
        # (``as_time``), which a capture refuses; refilled before each replay only when read
        time = torch.zeros((), dtype=self.dtype, device=state.device)

        def step_in_place(s: Tensor) -> None:
            stepped = self._step_eagerly(time, s, dt)
            if stepped is not s:
                s.copy_(stepped)

        return self.captured_step_type(step_in_place, state, time=time if self._step_reads_time() else None,
                                       keep_alive=(*self._graph_buffers(state, dt), self.closure, time))

    def _stop_graphs(self, reason: str) -> None:
        warnings.warn(f"CUDA graphs: {reason}; {type(self).__name__} steps without graphs from now on "
                      "(reset_cuda_graphs() tries again)", RuntimeWarning, stacklevel=4)
        self._capture_failed = True
        self._captured.clear()


def same_increment(before: Tensor, replayed: Tensor, expected: Tensor) -> bool:
    """Whether a replayed step made the eager step's increment, member by member.

    Increments, not states, are compared, so that a step too small to show against the state's size
    (an empty graph in float32 with a small ``dt``) is still caught: per member, the increments may
    differ by 1e-3 of the increment plus rounding (16 ulps of the state). Non-finite entries (blown-up
    members) must coincide.
    """
    if not torch.equal(torch.isfinite(replayed), torch.isfinite(expected)):
        return False

    def finite(x: Tensor) -> Tensor:
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)

    increment = finite(expected - before)
    error = (finite(replayed - before) - increment).abs().flatten(1).amax(1)
    size = finite(before).abs().flatten(1).amax(1)
    bound = 1e-3 * increment.abs().flatten(1).amax(1) + 16 * torch.finfo(size.dtype).eps * size
    return bool((error <= bound).all())
