"""The closure hook and the solver interface every host code implements.

A closure is any callable ``closure(t, u) -> du_dt`` (torchdiffeq's ``f(t, y)`` convention): ``t`` a
0-dim tensor, ``u: (batch, *state)`` on the solver's device and dtype, the result of the same shape,
**added to the explicit part** of the right-hand side. ``torch.nn.Module``s qualify.
"""
from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from typing import Iterator, Protocol

import torch
from torch import Tensor

from .cuda_graphs import GraphCache
from .graph_replay import GraphReplay

__all__ = ["Closure", "coarser_than", "Solver", "SolverStateError", "StabilityLimitError", "PeriodicGrid"]


class Closure(Protocol):
    def __call__(self, t: Tensor, u: Tensor) -> Tensor: ...


class SolverStateError(ValueError):
    """A state whose shape, dtype or device does not fit the solver."""


class StabilityLimitError(ValueError):
    """A time step beyond an explicit scheme's stability limit (a smaller ``dt`` fixes it)."""


def coarser_than(answer: torch.dtype, state: torch.dtype) -> bool:
    """Whether a closure answering in ``answer`` would round a ``state`` solver's steps: a float32
    network in a float64 solver would, silently, every step; a finer answer is harmless (the step
    rounds it to the state's precision)."""
    return answer != state and (not answer.is_floating_point or torch.finfo(answer).eps > torch.finfo(state).eps)


def _parameter_dtype_mismatch(closure, dtype: torch.dtype) -> torch.dtype | None:
    """The floating dtype of ``closure``'s parameters when it is a module's other than ``dtype``."""
    parameters = closure.parameters() if isinstance(closure, torch.nn.Module) else ()
    found = next((p.dtype for p in parameters if p.is_floating_point()), None)
    return found if found is not None and found != dtype else None


class Solver(GraphReplay, ABC):
    """A host simulation code with a closure hook.

    Subclasses give the known physics (``known_rhs``) and one time step; ``rollout`` and
    ``trajectory`` are shared. States are batched: ``u: (batch, *state_shape)``.

    On a CUDA device, ``trajectory``, ``rollout`` and every loop over ``step_internal`` replay each
    step as a CUDA graph (``solvers.cuda_graphs``, ``solvers.graph_replay``) captured once per state tensor, where autograd need
    not see the step: one launch a step instead of one per operation. Attributes:

    * ``cuda_graphs`` (default ``True``): replay at all. No effect on the CPU.
    * ``capture_closure`` (default ``False``): replay steps with a closure too. Only for a capturable
      closure: tensor operations alone, no host synchronisation (``.item()``, printing) and no
      Python-side state that changes between calls, since a graph replays the kernels it recorded;
      ``t`` reaches it as a device tensor. Graphs read the closure's weights where they lie: in-place
      updates are seen, new weight tensors (``load_state_dict(assign=True)``, ``.to()``) from the next
      ``trajectory``/``rollout`` on (or after ``reset_cuda_graphs()``). ``hybridnde rollout`` turns it
      on for closure files.

    Every new graph is checked against one eager step before it is trusted; a graph that cannot be
    captured or disagrees makes the solver step eagerly from then on, with a warning. A graph keeps
    the solver's Python-number parameters (``rho``, ``gravitational_parameter``, ...) it was captured
    with: change them only through a new solver or after ``reset_cuda_graphs()``. The graph cache
    makes a solver object unsafe to step from several threads at once.
    """

    #: names of the state components for ODEs (``None`` for fields on a grid)
    component_names: tuple[str, ...] | None = None
    #: ``known_rhs`` ignores ``t``: a replayed step without a closure needs no time input
    autonomous: bool = False

    def __init__(self, *, dt: float, closure: Closure | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float64):
        self._check_dt(dt)
        if dtype not in (torch.float64, torch.float32):
            raise ValueError(f"dtype={dtype}: solvers step in torch.float64 (the default) or torch.float32")
        if closure is not None and not callable(closure):
            raise ValueError(f"closure is a {type(closure).__name__}; give a callable closure(t, u) -> du_dt "
                             "(a torch.nn.Module, a function) or None")
        self.dt = float(dt)
        self.closure = closure
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(self.device)!r}, but torch finds no CUDA device here; use 'cpu'")
        self.dtype = dtype
        self._init_graphs()

    def __getstate__(self) -> dict:
        """Copies and pickles start without captured CUDA graphs (they are captured again on use)."""
        state = dict(self.__dict__)
        state["_captured"] = GraphCache()
        return state

    # -- what a subclass provides ---------------------------------------------------------------
    @property
    @abstractmethod
    def state_shape(self) -> tuple[int, ...]:
        """Shape of one member's state, e.g. ``(n,)`` for a 1-D field or ``(4,)`` for two-body."""

    @abstractmethod
    def known_rhs(self, t: Tensor, u: Tensor) -> Tensor:
        """The physics the code knows: ``du/dt`` without the closure. ``u: (batch, *state)``."""

    @abstractmethod
    def step(self, t: Tensor | float, u: Tensor, dt: float | None = None) -> Tensor:
        """Advance ``u: (batch, *state)`` from ``t`` to ``t + dt`` (``dt`` defaults to ``self.dt``)."""

    # -- shared -----------------------------------------------------------------------------------
    def rhs(self, t: Tensor | float, u: Tensor) -> Tensor:
        """Known physics plus closure: ``du/dt = F_known(t, u) + C(t, u)``."""
        t = self.as_time(t)
        du_dt = self.known_rhs(t, u)
        if self.closure is not None:
            du_dt = du_dt + self.closure_tendency(t, u)
        return du_dt

    def closure_contribution(self, du_dt: Tensor) -> Tensor:
        """The part of a closure's output ``du_dt: (batch, *state)`` that this solver's right-hand side
        adds: all of it here. A host that uses only part of it (``SecondOrderHost``: the accelerations)
        overrides this with the linear projection it applies, so that regularizers acting on the
        closure's own Jacobian (``J_C v``) see ``P J_C v``, the Jacobian the dynamics use."""
        return du_dt

    def closure_tendency(self, t: Tensor, u: Tensor) -> Tensor:
        """``closure(t, u)``, refused (``SolverStateError``) unless it is a tensor of ``u``'s shape, in ``u``'s
        precision or finer: a ``(batch, 1)`` or ``(n,)`` result would broadcast into every member or point
        and run on wrong, a coarser one would round every step."""
        try:
            du_dt = self.closure(t, u)
        except RuntimeError as error:  # torch's own words for a module in another dtype ("... type (double) ...")
            mismatch = _parameter_dtype_mismatch(self.closure, u.dtype)
            if mismatch is None or isinstance(error, torch.OutOfMemoryError) or "type" not in str(error).lower():
                raise
            raise SolverStateError(f"the closure's parameters are {mismatch} and u is {u.dtype}: move the closure to "
                                   f"the solver's dtype (closure.to({u.dtype})) or build the solver in "
                                   f"{mismatch}") from error
        if not isinstance(du_dt, Tensor) or du_dt.shape != u.shape:
            got = tuple(du_dt.shape) if isinstance(du_dt, Tensor) else type(du_dt).__name__
            raise SolverStateError(f"the closure returned {got} for u of shape {tuple(u.shape)}; a closure "
                                   f"must return du/dt of the same shape as u (one tendency per member and point)")
        if coarser_than(du_dt.dtype, u.dtype):
            raise SolverStateError(f"the closure returned {du_dt.dtype} for u of dtype {u.dtype}; a closure must "
                                   f"return du/dt in u's dtype: move it to the solver's (closure.to({u.dtype})) or "
                                   f"build the solver in {du_dt.dtype}")
        # finer: rounded to u's precision here, or type promotion would carry the state into it
        return du_dt if du_dt.dtype == u.dtype else du_dt.to(u.dtype)

    def as_time(self, t: Tensor | float) -> Tensor:
        """``t`` as a 0-dim tensor on the solver's device and dtype (what closures receive); a one-element
        ``t`` of another shape (``tensor([0.5])``) is reshaped, several times are refused."""
        if isinstance(t, Tensor) and t.dtype == self.dtype and t.device == self.device and t.ndim == 0:
            return t
        if isinstance(t, (int, float)):
            # a fill kernel, not a copy: copying a Python number to a GPU waits for its stream, once a
            # step and stage in eager loops (on a CPU the fill is also 2x faster); the same rounding
            return torch.full((), float(t), dtype=self.dtype, device=self.device)
        t = torch.as_tensor(t, dtype=self.dtype, device=self.device)
        if t.ndim:
            if t.numel() != 1:
                raise ValueError(f"t has shape {tuple(t.shape)}; a step takes one time (a number or a 0-dim tensor)")
            t = t.reshape(())
        return t

    def resolve_dt(self, dt: float | None) -> float:
        """The step size of a call: the solver's ``dt``, or an override checked as the constructor
        checks its own (``ValueError``: not positive and finite; ``StabilityLimitError``: beyond an
        explicit scheme's stability limit)."""
        if dt is None or dt == self.dt:
            return self.dt
        dt = float(dt)
        self._check_dt(dt)
        return dt

    def _check_dt(self, dt: float) -> None:
        try:
            valid = 0 < float(dt) < math.inf
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise ValueError(f"dt={dt!r} must be a positive, finite number")

    def check_state(self, u: Tensor) -> None:
        """Raise ``SolverStateError`` naming the mismatch when ``u`` cannot be stepped."""
        if not isinstance(u, Tensor):
            raise SolverStateError(f"u must be a torch.Tensor of shape (batch, {self.state_shape}), got {type(u).__name__}")
        if tuple(u.shape[1:]) != tuple(self.state_shape) or u.ndim != 1 + len(self.state_shape):
            raise SolverStateError(
                f"u has shape {tuple(u.shape)}; this solver expects (batch, *{tuple(self.state_shape)})")
        if u.dtype != self.dtype:
            raise SolverStateError(f"u has dtype {u.dtype}; the solver was built for {self.dtype}")
        if u.device.type != self.device.type:
            raise SolverStateError(f"u is on {u.device}; the solver was built for {self.device}")

    def trajectory(self, u0: Tensor, n_steps: int, *, save_every: int = 1, dt: float | None = None,
                   t0: float = 0.0) -> Iterator[tuple[float, Tensor]]:
        """Yield ``(t, u)`` at ``t0`` and after every ``save_every`` steps, ``n_steps`` steps in all.

        A generator, so long runs can stream to disk without holding the whole trajectory.
        ``u: (batch, *state)``.
        """
        self._check_rollout(u0, n_steps, save_every)
        dt = self.resolve_dt(dt)
        yield t0, u0
        if u0.shape[0] == 0:  # nothing to step (and MKL's FFTs refuse empty batches)
            for i in range(save_every, n_steps + 1, save_every):
                yield t0 + i * dt, u0
            return
        state = self.to_internal(u0)
        # decided once: a state set up for eager steps (maybe the caller's u0 itself) must never be
        # replayed in place, should the consumer switch gradients off between iterations
        step = self.step_internal if self._replays(u0) else self._step_eagerly
        for i in range(1, n_steps - n_steps % save_every + 1):  # steps past the last save would be lost work
            state = step(t0 + (i - 1) * dt, state, dt)
            if i % save_every == 0:
                yield t0 + i * dt, self.from_internal(state)

    def rollout(self, u0: Tensor, n_steps: int, *, save_every: int = 1, dt: float | None = None,
                t0: float = 0.0) -> Tensor:
        """Integrate ``n_steps`` steps and return the saved states.

        Returns ``(batch, 1 + n_steps // save_every, *state)``, the initial state first.
        Gradients flow through every step. Without gradients the saves are copied straight into the
        result, so peak memory is the result itself (stacking a list would need twice that).
        """
        self._check_rollout(u0, n_steps, save_every)
        states = self.trajectory(u0, n_steps, save_every=save_every, dt=dt, t0=t0)
        if torch.is_grad_enabled():
            return torch.stack([u for _, u in states], dim=1)
        saved = torch.empty((u0.shape[0], 1 + n_steps // save_every, *u0.shape[1:]), dtype=u0.dtype,
                            device=u0.device)
        for index, (_, u) in enumerate(states):
            saved[:, index] = u
        return saved

    def _check_rollout(self, u0: Tensor, n_steps: int, save_every: int) -> None:
        self.check_state(u0)
        try:  # any integer type (numpy's too); 2.0 steps is no count
            operator.index(n_steps), operator.index(save_every)
        except TypeError:
            raise ValueError(f"n_steps and save_every are step counts (integers), got {n_steps!r}, {save_every!r}") \
                from None
        if n_steps < 0 or save_every < 1:
            raise ValueError(f"need n_steps >= 0 and save_every >= 1, got {n_steps}, {save_every}")

    def times(self, n_steps: int, *, save_every: int = 1, dt: float | None = None,
              t0: float = 0.0) -> list[float]:
        """The times ``rollout`` saves at, ``1 + n_steps // save_every`` of them."""
        dt = self.dt if dt is None else float(dt)
        return [t0 + i * dt for i in range(0, n_steps + 1, save_every)]

    # The working representation between steps (spectral solvers keep Fourier coefficients), for
    # loops that step many times and look at the physical state only now and then (rollouts).
    def to_internal(self, u: Tensor) -> Tensor:
        """``u: (batch, *state)`` physical -> the solver's working state (batch first)."""
        self._note_closure_weights(u)
        return u.clone() if self._replays(u) else u  # replayed steps update the state in place

    def from_internal(self, state: Tensor) -> Tensor:
        """Working state -> physical ``(batch, *state)``; a new tensor or a view the caller must copy."""
        return state.clone() if self._replays(state) else state

    def step_internal(self, t: Tensor | float, state: Tensor, dt: float) -> Tensor:
        """One step of the working state. May update ``state`` in place (without gradients): pass only
        states made by ``to_internal`` and use the returned tensor."""
        if self._replays(state) and self._replay(t, state, dt):
            return state
        return self._step_eagerly(t, state, dt)

    def _step_eagerly(self, t: Tensor | float, state: Tensor, dt: float) -> Tensor:
        """``step_internal`` without graphs; may update ``state`` in place and return it."""
        return self.step(t, state, dt)

    def _needs_autograd(self, state: Tensor) -> bool:
        """Whether autograd must see this step: gradients on, and the state or a closure can carry them."""
        return torch.is_grad_enabled() and (state.requires_grad or self.closure is not None)

    def __repr__(self) -> str:
        closure = "none" if self.closure is None else type(self.closure).__name__
        return f"{type(self).__name__}(state_shape={self.state_shape}, dt={self.dt}, closure={closure})"


class PeriodicGrid:
    """Mixin for fields on ``n_points`` equispaced points of a periodic domain ``[0, domain_length)``."""

    domain_length: float
    n_points: int

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.n_points,)

    @property
    def x(self) -> Tensor:
        """(n_points,) grid coordinates ``x_j = j L / N``."""
        return torch.arange(self.n_points, dtype=self.dtype, device=self.device) * (self.domain_length / self.n_points)
