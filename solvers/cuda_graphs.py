"""Replaying one in-place time step as a CUDA graph.

A small ETDRK4 step on a GPU is some 25 kernels of a few microseconds each; launched one by one from
Python, the launches (not the arithmetic) set the pace. Captured once into a CUDA graph, the whole
step is a single launch (NVIDIA, CUDA C++ Programming Guide, "CUDA Graphs"; ``torch.cuda.CUDAGraph``).

A graph replays fixed memory addresses, so a captured step belongs to one state tensor (its address,
shape and dtype) and updates it in place; every buffer the step reads or writes must outlive the
graph, which is why ``CapturedStep`` keeps references to them. The step time is an input like the
state: a 0-dim device tensor (``time``) that the step must read as a tensor, refilled before each replay
(a Python float would be recorded as a constant).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["CapturedStep", "GraphCache", "GraphCaptureError", "module_tensor_addresses"]


class GraphCaptureError(RuntimeError):
    """The step ran eagerly but could not be recorded (it synchronises with the host, say)."""


class CapturedStep:
    """``step_in_place(state)`` captured once on ``state``'s CUDA device; ``replay()`` runs it again.

    ``keep_alive``: objects holding buffers the step uses (workspaces, matrices); referenced here so
    they cannot be freed while the graph may still write into them. ``state`` itself is not kept:
    the graph is looked up by its address (``GraphCache``), so it serves whichever tensor lives there.
    ``time``: the 0-dim tensor ``step_in_place`` reads the step's start time from, or ``None`` when the
    step does not depend on it.

    Errors of the step itself (shapes, memory) surface from the warm-up run as they would eagerly;
    only a failure to record raises ``GraphCaptureError``. Neither leaves ``state`` changed.
    """

    def __init__(self, step_in_place: Callable[[Tensor], object], state: Tensor, *, keep_alive: tuple = (),
                 time: Tensor | None = None):
        if state.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA tensor; the state is on {state.device}")
        self.keep_alive = keep_alive
        self.time = time
        device = state.device
        caller_stream = torch.cuda.current_stream(device)
        # Our own capture stream on the state's device: torch.cuda.graph's default stream is one per
        # process, made on whichever device captured first; on another device the step's kernels
        # would run eagerly during "capture" and the graph would record nothing.
        side = torch.cuda.Stream(device=device)
        with torch.cuda.device(device):
            # Warm up on a scratch copy (PyTorch's recipe for capture): FFT plans, cuBLAS handles and
            # the allocator's blocks are made before capture, and the state is untouched.
            scratch = state.clone()
            side.wait_stream(caller_stream)
            with torch.cuda.stream(side):
                step_in_place(scratch)
            caller_stream.wait_stream(side)
            del scratch
            self.graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: only this thread's CUDA calls may break the capture
                with torch.cuda.graph(self.graph, stream=side, capture_error_mode="thread_local"):
                    step_in_place(state)  # recorded, not run
            except RuntimeError as error:
                raise GraphCaptureError(str(error)) from error
            finally:
                # a failed capture_end skips torch.cuda.graph's stream restore: restore it ourselves
                torch.cuda.set_stream(caller_stream)

    def replay(self, t: Tensor | float = 0.0) -> None:
        """Advance the state by one step from time ``t`` (read only when the step depends on it).

        Launches on the current stream; the graph itself runs on the device it was captured on."""
        if self.time is not None:
            if isinstance(t, Tensor):
                self.time.copy_(t.reshape(()) if t.ndim else t)  # one time of any shape, as Solver.as_time takes it
            else:
                self.time.fill_(t)
        self.graph.replay()


class GraphCache:
    """Captured steps of one solver, keyed by what a graph depends on; bounded (oldest dropped)."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._steps: dict[tuple, CapturedStep] = {}

    @staticmethod
    def key(state: Tensor, *extra) -> tuple:
        """What a captured step of ``state`` depends on: its memory and layout, plus ``extra``."""
        return (state.data_ptr(), tuple(state.shape), tuple(state.stride()), state.dtype, state.device, *extra)

    def get(self, key: tuple) -> CapturedStep | None:
        return self._steps.get(key)

    def put(self, key: tuple, step: CapturedStep) -> None:
        if len(self._steps) >= self.capacity:
            self._steps.pop(next(iter(self._steps)))
        self._steps[key] = step

    def clear(self) -> None:
        self._steps.clear()

    def __len__(self) -> int:
        return len(self._steps)


def module_tensor_addresses(module) -> tuple:
    """Addresses of a ``torch.nn.Module``'s parameters and buffers (``()`` for other callables): a graph
    reads a closure's weights from these, so a new set (``load_state_dict(assign=True)``, ``.to()``)
    needs a new capture. In-place updates (optimiser steps, plain ``load_state_dict``) keep them."""
    if not isinstance(module, torch.nn.Module):
        return ()
    # read once per trajectory: straight from each submodule's own dicts, since parameters() and
    # buffers() walk the modules twice through named generators (15 us against 6 us for a 3-layer CNN)
    return tuple(t.data_ptr() for submodule in module.modules()
                 for tensors in (submodule._parameters, submodule._buffers) for t in tensors.values() if t is not None)
