"""Reference trajectories of the true system, in the NetCDF schema (``hybridnde simulate``)."""
from __future__ import annotations

import contextlib
import logging
import time as wallclock
from typing import Callable

import numpy as np
import torch

from .config import CaseConfig, ConfigError
from .config.consistency import ode_state_size
from .config.physics import ADAPTIVE_INTEGRATORS
from .initial_conditions import draw_initial_conditions, file_initial_states
from .io import STATUS_FLAGS, platform_description, trajectory_dataset
from . import memory
from .progress import PROGRESS_LOG_SECONDS, progress_bar
from .systems import build_solver, resolve_device, resolve_dtype, state_coordinates

__all__ = ["simulate_case", "SIMULATION_SECTIONS", "check_fits_in_memory", "trajectory_bytes"]

log = logging.getLogger(__name__)

#: the sections a truth file depends on (its checksum decides whether a rerun can reuse it)
SIMULATION_SECTIONS = ("system", "time", "initial_condition", "compute")


def trajectory_bytes(case: CaseConfig) -> int:
    """Bytes of the float64 trajectory ``simulate_case`` holds in memory: members x saves x state."""
    state = getattr(case.system, "n_points", None) or ode_state_size(case.system)
    saves = case.time.n_steps // case.time.save_every + 1
    return case.initial_condition.members * saves * int(state) * 8


#: the peak of an in-memory simulation in trajectories: the solver's solution, torchdiffeq's own
#: copy while it assembles it, and the file's chunks (2.7x above the process's start measured at
#: 1000 members x 4001 saves of lorenz63 with dopri5, written in chunks; 7.3x through xarray)
IN_MEMORY_COPIES = 3


def check_fits_in_memory(case: CaseConfig, *, what: str = "the simulation", copies: float = 1,
                         fix: str = "lower initial_condition.members or time.n_steps, raise time.save_every, or use a "
                                    "fixed-step time.integrator (`hybridnde simulate` streams those to disk)") -> None:
    """``ConfigError`` before any work when ``copies`` of the trajectory cannot fit in the memory
    available (it was a MemoryError after the spin-up, or minutes of swapping); ``what`` and ``fix``
    word the message."""
    size, available = trajectory_bytes(case), memory.available_memory()
    if available is not None and copies * size > available:
        held = f"{copies * size / 2**30:.3g} GiB" + (f" ({copies}x its {size / 2**30:.3g} GiB)" if copies != 1 else "")
        raise ConfigError(f"{what} holds the whole trajectory in memory: {held}, more than the "
                          f"{available / 2**30:.3g} GiB available; {fix}")


def solve_adaptive_members(solver, u: torch.Tensor, times: list[float], time) -> tuple[np.ndarray, int]:
    """``(trajectory (members, len(times), *state) float64, NFE)`` of an adaptive solve from ``u`` at
    ``times[0]``, all members in one call (one step size: a member's bits depend on its batch, at the
    tolerances' level). A member that blows up shrinks that step to nothing (``FloatingPointError``):
    then each member is solved alone, and one that fails alone is solved save by save to the last save
    it reaches, NaN after it (marked ``blew_up`` by the caller), so the others still get their
    trajectories. ``time``: the case's ``[time]`` (method and tolerances); NFE of completed solves."""
    def solve(states, at):
        solved, nfe = solver.solve_adaptive(states, at, method=time.integrator, rtol=time.rtol, atol=time.atol)
        return np.asarray(solved.cpu().numpy(), dtype=np.float64), nfe  # (u is float64: docs/netcdf.md)

    log.info("%s: %d members over %d saves in one call (no progress is shown until it returns)", time.integrator,
             len(u), len(times))
    try:
        return solve(u, times)
    except FloatingPointError:
        log.warning("the adaptive solve of all %d members together failed (its step size underflowed, as when a "
                    "member blows up): solving each member alone", len(u))
    trajectory, total = np.full((len(u), len(times), *solver.state_shape), np.nan), 0
    for member in range(len(u)):
        state, trajectory[member, 0] = u[member:member + 1], u[member].cpu().numpy()
        try:
            values, nfe = solve(state, times)
            trajectory[member], total = values[0], total + nfe
            continue
        except FloatingPointError:
            pass
        for index in range(1, len(times)):
            try:
                values, nfe = solve(state, times[index - 1:index + 1])
            except FloatingPointError:
                break
            trajectory[member, index], total = values[0, -1], total + nfe
            state = torch.as_tensor(values[:, -1], dtype=u.dtype, device=u.device)
    return trajectory, total


def simulate_case(case: CaseConfig, *, progress: bool | None = None):
    """Integrate the case's true system for all members; returns an ``xarray.Dataset``.

    Members are stepped together as one batch. Spin-up steps are run and dropped; then
    ``time.n_steps`` steps are taken and every ``save_every``-th state is kept (the first saved
    state, time 0, is the state after spin-up). A member that turns non-finite is marked
    ``blew_up`` with its ``blowup_time``; the others are unaffected.
    """
    device = resolve_device(case.compute.device)
    dtype = resolve_dtype(case.compute.dtype)
    check_fits_in_memory(case, copies=IN_MEMORY_COPIES)
    warn_unsaved_steps(case)
    solver = build_solver(case.system, case.time, device=device, dtype=dtype)
    time = case.time
    started = wallclock.perf_counter()
    extra: dict[str, object] = {}
    with torch.no_grad():
        u, member_ids, t0, start = initial_states_and_clock(case, solver)
        u = spin_up(case, solver, u, t0, progress=progress)
        if time.integrator in ADAPTIVE_INTEGRATORS:
            times = [start + i * time.sample_interval for i in range(time.n_steps // time.save_every + 1)]
            trajectory, extra["nfe"] = solve_adaptive_members(solver, u, times, time)
        else:
            times = solver.times(time.n_steps, save_every=time.save_every, t0=start)
            trajectory = np.empty((len(u), len(times), *solver.state_shape))
            steps = solver.trajectory(u, time.n_steps, save_every=time.save_every, t0=start)
            # (without a terminal, e.g. a batch job's log, a line every PROGRESS_LOG_SECONDS)
            bar = progress_bar(total=len(times), description="simulate", enabled=progress, unit="save",
                               log_every=PROGRESS_LOG_SECONDS)
            for index, (_, state) in enumerate(steps):
                trajectory[:, index] = state.cpu().numpy()
                bar.update(1)
            bar.close()
    members = len(trajectory)
    # (isfinite first: the adaptive solve's trajectory is a transposed view, which reshape would copy)
    finite = np.isfinite(trajectory).reshape(members, len(times), -1).all(axis=2)
    blew_up = ~finite.all(axis=1)
    status = np.where(blew_up, STATUS_FLAGS["blew_up"], STATUS_FLAGS["ok"]).astype(np.int8)
    blowup_time = np.full(members, np.nan)
    for member in np.flatnonzero(blew_up):
        first = int(np.argmin(finite[member]))
        blowup_time[member] = times[first]
        trajectory[member, first:] = np.nan
    warn_blowups(int(blew_up.sum()), members)
    warn_invariant_drift(solver, trajectory[:, 0], trajectory[:, -1], (times[0], times[-1]),
                         adaptive=time.integrator in ADAPTIVE_INTEGRATORS)
    seconds = wallclock.perf_counter() - started
    log_simulated(case, members, seconds)
    state_dim, coords = state_coordinates(solver)
    return trajectory_dataset(
        trajectory, times, state_dim=state_dim, state_coords=coords, members=member_ids, status=status,
        blowup_time=blowup_time, title=simulation_title(case), solver=repr(solver), case_toml=case.to_toml(),
        extra_attrs={**simulation_attrs(case, solver, initial_conditions_checksum(case)), "wall_seconds": seconds,
                     **extra})


def warn_unsaved_steps(case: CaseConfig) -> None:
    time = case.time
    if time.n_steps % time.save_every:
        last = time.n_steps - time.n_steps % time.save_every
        log.warning("time.n_steps = %d is not a multiple of time.save_every = %d: the trajectory ends at step %d (set "
                    "time.n_steps = %d for the next save)", time.n_steps, time.save_every, last,
                    last + time.save_every)


def initial_states_and_clock(case: CaseConfig, solver) -> tuple[torch.Tensor, np.ndarray | None, float, float]:
    """``(u (members, *state), member labels or None, t0, start)``: the members' initial states before
    the spin-up, the time ``t0`` they are at, and ``start``, the time of the first saved state. Drawn
    states have no clock: time 0 is the first saved state, after the spin-up. A file's states keep their
    member labels and clock, which runs on through the spin-up."""
    ic = case.initial_condition
    if ic.distribution != "file":
        return draw_initial_conditions(ic, solver, range(ic.members), system=case.system), None, 0.0, 0.0
    u, member_ids, t0 = file_initial_states(ic, solver, range(ic.members))
    return u, member_ids, t0, t0 + case.time.spinup_steps * case.time.dt


def spin_up(case: CaseConfig, solver, u: torch.Tensor, t0: float, *, progress: bool | None, first: int = 0,
            between: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """``u`` after the spin-up steps ``first, first + 1, ...`` (run and dropped), from time ``t0`` at step 0;
    ``between(steps_done, u)`` is called after each step but the last (a checkpoint's chance). Call
    without gradients."""
    time = case.time
    # (without a terminal, e.g. a batch job's log, a line every PROGRESS_LOG_SECONDS: ks_fd's is 40000 steps)
    bar = progress_bar(total=time.spinup_steps, description="spin-up", enabled=progress, unit="step",
                       log_every=PROGRESS_LOG_SECONDS, initial=first)
    with contextlib.closing(bar):
        for step in range(first, time.spinup_steps):
            u = solver.step(t0 + step * time.dt, u)
            bar.update(1)
            if between is not None and step + 1 < time.spinup_steps:
                between(step + 1, u)
    return u


def warn_blowups(blew_up: int, members: int) -> None:
    if blew_up:  # the true system itself: the step, not the physics, is the likely cause
        log.warning("%d of %d reference members blew up (the true system's own solver: lower time.dt, or check the "
                    "initial conditions)", blew_up, members)


#: relative change of a conserved quantity between a truth's first and last saves above which its
#: own solver is said to be too coarse (the cases' truths: 1e-6 or less; two_body at e = 0.9 with
#: rk4 and dt = 0.01: 7e-3, at e = 0.95 the orbits escape, all members marked ok)
TRUTH_DRIFT_WARNING = 1e-3


def warn_invariant_drift(solver, first: np.ndarray, last: np.ndarray, span: tuple[float, float], *,
                         adaptive: bool = False) -> None:
    """Warn when a conserved quantity of the true system (``solver.invariants``) changes by more than
    ``TRUTH_DRIFT_WARNING`` from the first to the last saved state ``(members, *state)`` of a member
    (non-finite ones left out): a truth the solver's step cannot resolve looks like any other.
    ``adaptive``: solved by an adaptive integrator (too loose a tolerance, not too coarse a step)."""
    invariants = getattr(solver, "invariants", None)
    if invariants is None or not len(first):
        return
    from .metrics.invariants import invariant_drift

    pair = torch.as_tensor(np.stack([first, last], axis=1), dtype=torch.float64)  # (member, 2, *state)
    for name, drift in invariant_drift({k: v.numpy() for k, v in invariants(pair).items()}).items():
        if np.nan_to_num(drift, nan=0.0).max(initial=0.0) > TRUTH_DRIFT_WARNING:
            worst = int(np.nanargmax(drift))
            log.warning("the truth's %s changes by up to %.2g (relative, member %d; %d of %d members over %g) from "
                        "t = %g to %g, though the true system conserves it: %s", name.replace("_", " "), drift[worst],
                        worst, int((drift > TRUTH_DRIFT_WARNING).sum()), len(drift), TRUTH_DRIFT_WARNING, *span,
                        "its solver's tolerances are too loose for these states; lower time.rtol and time.atol"
                        if adaptive else "its solver's step is too coarse for these states; lower time.dt or use an "
                        "adaptive time.integrator")


def log_simulated(case: CaseConfig, members: int, seconds: float) -> None:
    time = case.time
    log.info("simulated %d members x %d steps%s in %.2f s", members, time.n_steps,
             f" (after {time.spinup_steps} spin-up steps)" if time.spinup_steps else "", seconds)


def simulation_title(case: CaseConfig) -> str:
    return f"{case.case.name}: reference trajectories of {case.system.name}"


def initial_conditions_checksum(case: CaseConfig) -> str:
    """SHA-256 of the data of ``initial_condition.file`` (``checksums.data_checksum``); ``""`` for drawn states."""
    from .checksums import data_checksum

    ic = case.initial_condition
    return data_checksum(ic.file) if ic.distribution == "file" else ""


def simulation_attrs(case: CaseConfig, solver, initial_conditions_sha256: str) -> dict[str, object]:
    """The global attributes of a truth file besides the schema's (docs/netcdf.md)."""
    return {**case.output.descriptive_attributes(), "stage": "simulate",
            "config_checksum": case.checksum(SIMULATION_SECTIONS), "dt": case.time.dt,
            "save_every": case.time.save_every, "initial_conditions_sha256": initial_conditions_sha256,
            "platform": platform_description(solver.device)}
