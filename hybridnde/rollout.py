"""Batched ensemble rollouts of a host solver (closure in its hook) with per-member blow-up handling.

The engine steps one batch of members at a time and hands back its saved states one output chunk
(``output.time_chunk`` saved times) at a time, so memory never grows with the number of steps:

* the hot loop only calls the solver's step and copies every ``save_every``-th state into a
  preallocated device buffer; it never synchronises with the host;
* at the end of a chunk the buffer comes to the host in one transfer, where blow-ups are found:
  a member whose saved state is non-finite or has a component beyond ``blowup_threshold`` is marked
  with the first such save, and saved as NaN from then on (frozen) while the others go on;
* when half the rows still being stepped are dead, the batch is compacted to its live rows.

Every step sees the same batch composition and the same ``t`` on any number of MPI ranks, so the
saved values do not depend on how the batches are spread over ranks (``hybridnde.distributed``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from solvers import Solver

from . import memory
from .config import ConfigError

__all__ = ["SaveSchedule", "BatchState", "OutputChunk", "BatchRunner", "auto_batch_size", "check_chunk_memory", "batch_bounds",
           "first_blowup"]

#: largest automatic batch per device type: past these, bigger batches stopped paying on our benchmarks
#: (CPU: cache misses of the closure's activations; CUDA: the GPU is saturated)
AUTO_BATCH_CAP = {"cpu": 1024, "cuda": 16384}

#: on a CPU, one closure call's activations per automatic batch at most: past the caches a closure can
#: slow per member (ks_l22's quick CNN, 33 kB a member, 1024 members x 64 steps, one thread: 10.1k
#: member-steps/s at 128 and 256 members, 7.6k at 512, 3.9k at 1024). That was its float64 im2col
#: buffer, which now comes in blocks (PeriodicCNNClosure.members_at_once): 10.3-10.6k at 128-1024, so
#: the cap no longer buys it speed; it is kept so that automatic batches (and resumes) stay as they were
CPU_ACTIVATION_BUDGET_BYTES = 8 * 2**20

#: working copies of one member's state an ETDRK4 / RK4 step holds at once (stages, their nonlinear
#: terms, complex Fourier temporaries), with room to spare; used only to size automatic batches
SOLVER_STATE_COPIES = 40


@dataclass(frozen=True)
class SaveSchedule:
    """Which steps are saved and how saves are grouped into output chunks.

    Save ``j`` is the state after ``j * save_every`` steps, at ``t0 + j * save_every * dt``; chunk
    ``k`` holds saves ``[k * time_chunk, (k + 1) * time_chunk)`` (the NetCDF chunk along time).
    """

    steps: int
    save_every: int
    time_chunk: int
    dt: float
    t0: float = 0.0

    @property
    def n_saves(self) -> int:
        return 1 + self.steps // self.save_every

    @property
    def steps_run(self) -> int:
        """Steps actually taken: those after the last save would not be seen, so they are skipped."""
        return (self.n_saves - 1) * self.save_every

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_saves / self.time_chunk)

    def chunk_saves(self, chunk: int) -> range:
        return range(chunk * self.time_chunk, min((chunk + 1) * self.time_chunk, self.n_saves))

    def times(self) -> np.ndarray:
        """(n_saves,) float64 save times, as ``Solver.times`` computes them."""
        return np.array([self.t0 + j * self.save_every * self.dt for j in range(self.n_saves)], dtype=np.float64)

    def step_time(self, step: int) -> float:
        """Time at the start of 1-based step ``step`` (the ``t`` the closure sees, as in ``Solver.trajectory``)."""
        return self.t0 + (step - 1) * self.dt


@dataclass
class BatchState:
    """Where one batch of members stands; everything a restart needs.

    ``start, stop``: the batch's positions in the output (0-based, contiguous); ``next_chunk``: chunks
    done; ``rows``: batch-relative positions of the rows still stepped (compaction drops dead ones);
    ``internal``: their states in the solver's internal representation, ``(len(rows), ...)`` (Fourier
    coefficients for spectral solvers), so a restart continues bit for bit; ``first_bad_save``:
    ``(stop - start,)`` save index at which each member blew up, ``-1`` if it has not;
    ``initial``: the physical initial states until they are saved (save 0 is ``u0`` itself, not its
    round trip through the internal representation).
    """

    start: int
    stop: int
    next_chunk: int
    rows: np.ndarray
    internal: Tensor
    first_bad_save: np.ndarray
    initial: Tensor | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start

    def to_host(self) -> dict:
        """A checkpointable copy (CPU tensors and plain numbers only). A copy, not views: the checkpoint
        is written later, by the writer thread, while ``_mark_blowups`` updates ``first_bad_save`` in
        place (a shared array let a later chunk's blow-ups into an earlier checkpoint, and a resume
        from it differed from an uninterrupted run)."""
        return {"start": self.start, "stop": self.stop, "next_chunk": self.next_chunk,
                "rows": torch.tensor(self.rows, dtype=torch.int64),
                "internal": self.internal.detach().to("cpu", copy=True),
                "first_bad_save": torch.tensor(self.first_bad_save, dtype=torch.int64)}

    @classmethod
    def from_host(cls, payload: dict, solver: Solver, *, written_elsewhere: bool = False) -> "BatchState":
        """The batch a checkpoint holds, on ``solver``'s device; ``written_elsewhere``: by another kind of
        device, so its states are put in the form ``solver`` keeps them (``in_working_form``)."""
        internal = payload["internal"].to(solver.device)
        if written_elsewhere:
            internal = in_working_form(solver, internal)
        return cls(start=int(payload["start"]), stop=int(payload["stop"]), next_chunk=int(payload["next_chunk"]),
                   rows=payload["rows"].numpy().copy(), internal=internal,
                   first_bad_save=payload["first_bad_save"].numpy().copy())


def in_working_form(solver: Solver, internal: Tensor) -> Tensor:
    """``internal`` as ``solver.to_internal`` would make it now: itself when it has that form, else
    through physical space. A GPU's checkpoint holds dense physical states where a CPU keeps Fourier
    coefficients, or the other way round; each form steps correctly anywhere, but the other form
    costs two transforms a step more on a CPU (1.33x at N = 512) and the dense step's advantage on a
    GPU (up to 2.5x, docs/performance.md). Only for checkpoints of another device: on the same one
    the kept form is the uninterrupted run's (its batch may since have shrunk to one for which
    ``to_internal`` would choose otherwise)."""
    if len(internal) == 0:
        return internal
    with torch.inference_mode():
        physical = solver.from_internal(internal)
        made = solver.to_internal(physical.clone())
    return internal if (made.dtype, made.shape) == (internal.dtype, internal.shape) else made


@dataclass(frozen=True)
class OutputChunk:
    """Saved states of one batch over one output chunk, ready to write.

    ``values: (stop - start, n_saves_in_chunk, *state)`` on the host, NaN for blown-up members from
    their blow-up save on; ``first_bad_save: (stop - start,)`` as in ``BatchState``;
    ``steps``: solver steps per member in this chunk; ``stepped``: members stepped through them (blown-up
    members are dropped from the batch once they are half of it, ``BatchRunner._compact``).
    """

    start: int
    stop: int
    chunk: int
    save_start: int
    values: np.ndarray
    first_bad_save: np.ndarray
    steps: int
    last: bool
    stepped: int = 0


def first_blowup(values: np.ndarray, save_start: int, threshold: float) -> np.ndarray:
    """First save index at which each member's state is non-finite or beyond ``threshold``, else -1.

    ``values: (batch, n_saves, *state)``; returns ``(batch,)`` int64 (absolute save indices).
    """
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    if np.issubdtype(flat.dtype, np.floating):  # the largest value of the dtype not above the bound: NumPy
        with np.errstate(over="ignore"):        # rounds a Python float to the array's dtype, maybe up
            bound = flat.dtype.type(threshold)  # (or to inf, past float32's range)
        threshold = np.nextafter(bound, flat.dtype.type(-np.inf)) if float(bound) > threshold else bound
    if not flat.shape[2]:
        bad = np.zeros(values.shape[:2], bool)
    else:  # |u| <= threshold as max and min: no temporary as large as the chunk (np.abs made one)
        with np.errstate(invalid="ignore"):  # NaN propagates through both and fails the comparisons
            bad = ~((flat.max(axis=2) <= threshold) & (flat.min(axis=2) >= -threshold))
    any_bad = bad.any(axis=1)
    return np.where(any_bad, save_start + bad.argmax(axis=1), -1).astype(np.int64)


class BatchRunner:
    """Steps batches of members of ``solver`` through a ``SaveSchedule``.

    Args:
        solver: the host solver, closure already in its hook; its device and dtype are used.
        schedule: saves and chunks.
        blowup_threshold: bound on ``|u|`` of every component of a saved state.
        capacity: the largest batch that will be run (sizes the preallocated buffer).
        compact: drop blown-up members from the batch once they are half of it (saves their work, but
            the survivors' last bits then depend on which others blew up: a truth keeps its batch).
    """

    def __init__(self, solver: Solver, schedule: SaveSchedule, *, blowup_threshold: float, capacity: int,
                 compact: bool = True):
        self.solver = solver
        self.schedule = schedule
        self.blowup_threshold = float(blowup_threshold)
        self.compact = compact
        chunk_length = min(schedule.time_chunk, schedule.n_saves)
        self.numpy_dtype = torch.empty(0, dtype=solver.dtype).numpy().dtype
        # one device buffer for the saves of a chunk, reused by every chunk and batch
        self._buffer = torch.empty((capacity, chunk_length, *solver.state_shape), dtype=solver.dtype,
                                   device=solver.device)

    def start(self, start: int, u0: Tensor) -> BatchState:
        """A fresh batch at positions ``[start, start + len(u0))`` from ``u0: (batch, *state)`` physical."""
        self.solver.check_state(u0)
        with torch.inference_mode():
            internal = self.solver.to_internal(u0)
        size = u0.shape[0]
        return BatchState(start=start, stop=start + size, next_chunk=0, rows=np.arange(size),
                          internal=internal, first_bad_save=np.full(size, -1, dtype=np.int64), initial=u0)

    def finished(self, state: BatchState) -> bool:
        return state.next_chunk >= self.schedule.n_chunks

    def advance(self, state: BatchState) -> OutputChunk:
        """Run ``state`` through its next output chunk (updating it in place) and return the chunk."""
        schedule, solver = self.schedule, self.solver
        chunk = state.next_chunk
        saves = schedule.chunk_saves(chunk)
        n_rows, n_saves = len(state.rows), len(saves)
        buffer = self._buffer[:n_rows, :n_saves]
        first_step = max(saves.start - 1, 0) * schedule.save_every + 1
        n_steps = (saves.stop - 1) * schedule.save_every - first_step + 1
        if n_rows:
            # all step times of the chunk in one transfer, rounded exactly as Solver.as_time(float) would
            step_times = torch.tensor([schedule.step_time(first_step + i) for i in range(n_steps)],
                                      dtype=solver.dtype, device=solver.device)
            internal, step = state.internal, 0
            with torch.inference_mode():
                for column, save in enumerate(saves):
                    if save == 0:
                        buffer[:, column].copy_(state.initial)
                        continue
                    for _ in range(schedule.save_every):
                        internal = solver.step_internal(step_times[step], internal, schedule.dt)
                        step += 1
                    buffer[:, column].copy_(solver.from_internal(internal))
            state.internal, state.initial = internal, None
            host = buffer.to("cpu").numpy()  # the chunk's single device-to-host transfer
        values = np.full((state.size, n_saves, *solver.state_shape), np.nan, dtype=self.numpy_dtype)
        if n_rows:
            values[state.rows] = host
        self._mark_blowups(state, values, saves.start)
        state.next_chunk += 1
        if self.compact:
            self._compact(state)
        return OutputChunk(start=state.start, stop=state.stop, chunk=chunk, save_start=saves.start, values=values,
                           first_bad_save=state.first_bad_save.copy(), steps=n_steps,
                           last=self.finished(state), stepped=n_rows)

    def _mark_blowups(self, state: BatchState, values: np.ndarray, save_start: int) -> None:
        alive = state.first_bad_save < 0
        if alive.any():  # every row: values[alive] would copy the chunk (dead rows are NaN, found at once)
            state.first_bad_save[alive] = first_blowup(values, save_start, self.blowup_threshold)[alive]
        dead = state.first_bad_save >= 0
        if dead.any():  # frozen: NaN from the blow-up save on
            columns = np.arange(save_start, save_start + values.shape[1])
            values[(columns[None, :] >= state.first_bad_save[:, None]) & dead[:, None]] = np.nan

    def _compact(self, state: BatchState) -> None:
        """Drop dead rows once they are half of those stepped: they cost work and give only NaN."""
        live = state.first_bad_save[state.rows] < 0
        if live.all() or 2 * int((~live).sum()) < len(state.rows):
            return
        keep = torch.as_tensor(np.flatnonzero(live), device=state.internal.device)
        state.internal = state.internal.index_select(0, keep)
        state.rows = state.rows[live]


def batch_bounds(n_members: int, batch_size: int) -> list[tuple[int, int]]:
    """Global batches ``[(start, stop), ...]`` of ``batch_size`` contiguous positions (the last may be short)."""
    return [(start, min(start + batch_size, n_members)) for start in range(0, n_members, batch_size)]


def _closure_activation_bytes(closure: Callable | None, solver: Solver) -> int:
    """Bytes of module outputs one closure call produces per member (forward hooks on a 2-member probe)."""
    if closure is None:
        return 0
    if not isinstance(closure, torch.nn.Module):
        return 4 * math.prod(solver.state_shape) * solver.dtype.itemsize
    if isinstance(closure, torch.jit.ScriptModule):  # an exported archive: no forward hooks
        return _scripted_activation_bytes(closure, solver)
    total = [0]

    def count(_module, _inputs, output):
        if isinstance(output, Tensor):
            total[0] += output.numel() * output.element_size()

    leaves = [m for m in closure.modules() if not list(m.children())] or [closure]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.inference_mode():
            probe = torch.zeros((2, *solver.state_shape), dtype=solver.dtype, device=solver.device)
            closure(solver.as_time(0.0), probe)
    finally:
        for handle in handles:
            handle.remove()
    return total[0] // 2


def _scripted_activation_bytes(closure: torch.jit.ScriptModule, solver: Solver) -> int:
    """What the hooks would count, from the weights: each layer's output and its activation's (none
    after the last layer), per member -- ``out`` values of a linear layer (weight ``(out, in)``),
    ``out * (n + 2 halo)`` of a 1-d convolution over the ``n`` points (weight ``(out, in, k)``), where
    ``halo`` sums ``k // 2`` over the convolutions after it (``PeriodicCNNClosure`` wraps its input
    once and its unpadded convolutions shrink it to ``n``) -- at least the plain callable's estimate."""
    points = solver.state_shape[-1]
    weights = [weight for name, weight in closure.named_parameters() if name.endswith("weight") and weight.ndim >= 2]
    outputs = []
    for index, weight in enumerate(weights):
        halo = sum(later.shape[-1] // 2 for later in weights[index + 1:] if later.ndim == 3)
        outputs.append(weight.shape[0] * (points + 2 * halo if weight.ndim == 3 else 1))
    values = 2 * sum(outputs) - (outputs[-1] if outputs else 0)
    return max(values, 4 * math.prod(solver.state_shape)) * solver.dtype.itemsize


#: copies of a batch's chunk of saves in host memory while it streams: the stepping buffer (on a CPU;
#: on a GPU its transfer), the chunk being encoded, the next one being filled (peak RSS measured: 3.2
#: with the compressed bytes, 2,000 KS members x 1,000 saves; 4.2 before ``first_blowup`` stopped
#: copying the chunk twice)
CHUNK_COPIES = 3


def check_chunk_memory(solver: Solver, batch_size: int, schedule: SaveSchedule, *, fix: str) -> None:
    """``ConfigError`` before any work when a batch's chunks of saves alone (``CHUNK_COPIES``, a lower
    bound) exceed the memory available: Linux lets the allocations pass and its OOM killer then ends
    the run (20,000 KS members with 1,000-save chunks: 24 GB, killed), its files left behind."""
    saves = min(schedule.time_chunk, schedule.n_saves)
    # host memory on a GPU too: its transfer, then the chunk being encoded and the next
    needed = CHUNK_COPIES * batch_size * saves * math.prod(solver.state_shape) * solver.dtype.itemsize
    available = memory.available_memory()
    if available is not None and needed > available:
        raise ConfigError(f"a batch of {batch_size} members holds its chunk of {saves} saves (output.time_chunk) "
                          f"{CHUNK_COPIES} times over while it streams: {needed / 2**30:.3g} GiB, more than the "
                          f"{available / 2**30:.3g} GiB available; {fix}")


def auto_batch_size(solver: Solver, *, memory_budget_mb: float, time_chunk: int, n_saves: int) -> int:
    """Members per batch that fit ``memory_budget_mb`` (an estimate, see ``SOLVER_STATE_COPIES``).

    Independent of the number of ranks, so batches (and hence results) are the same on any number.
    Per member: the solver's working copies, two closure calls' activations (RK4 and ETDRK4 call it
    once per stage and free the activations in between) and the chunk of saves on device and host.
    On a CPU a closure's activations per call are also kept within ``CPU_ACTIVATION_BUDGET_BYTES``.
    """
    state_bytes = math.prod(solver.state_shape) * solver.dtype.itemsize
    activations = _closure_activation_bytes(solver.closure, solver)
    per_member = SOLVER_STATE_COPIES * state_bytes + 2 * activations + 2 * min(time_chunk, n_saves) * state_bytes
    fitting = int(memory_budget_mb * 2**20 // per_member)
    cap = AUTO_BATCH_CAP.get(solver.device.type, AUTO_BATCH_CAP["cpu"])
    if solver.device.type == "cpu" and activations:
        cap = min(cap, max(16, CPU_ACTIVATION_BUDGET_BYTES // activations))
    return max(1, min(cap, fitting))
