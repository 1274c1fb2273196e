"""Initial states of ensemble members, drawn (seeded per member) or read from NetCDF.

Member ``i`` draws from ``numpy.random.default_rng([seed, i])`` alone, so any split of the members
over ranks or batches gives the same states.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from solvers import Solver

from .config import InitialConditionConfig
from .config.fields import warn_once
from .grids import check_domain_length, restrict_to_grid
from .errors import reading_data_of
from .io import DataError, check_time_coordinate

__all__ = ["members_and_start", "finite_in", "draw_initial_conditions", "read_member_states", "component_order",
           "open_initial_conditions", "member_rng", "nonfinite_members", "file_initial_states"]

log = logging.getLogger(__name__)


def warn_unused_keys(ic: InitialConditionConfig) -> None:
    for problem in ic.unused_keys():
        warn_once(log, f"{problem} (it is ignored)")


def nonfinite_members(states: np.ndarray) -> np.ndarray:
    """Positions of the members of ``states: (members, *state)`` with a non-finite value (none for
    zero members: a rank of an MPI rollout may get no batch)."""
    return np.flatnonzero(~np.isfinite(states).all(axis=tuple(range(1, states.ndim))))


def member_rng(seed: int, member: int) -> np.random.Generator:
    """The random stream of one member: depends on ``(seed, member)`` only."""
    return np.random.default_rng([int(seed), int(member)])


def _draw_one(ic: InitialConditionConfig, rng: np.random.Generator, solver: Solver, system) -> np.ndarray:
    kind = ic.distribution
    if kind == "point":
        return np.asarray(ic.value, dtype=np.float64)
    if kind == "gaussian":
        std = np.broadcast_to(np.asarray(ic.std, dtype=np.float64), (len(ic.value),))
        return np.asarray(ic.value) + std * rng.standard_normal(len(ic.value))
    if kind == "uniform_box":
        return rng.uniform(np.asarray(ic.low), np.asarray(ic.high))
    if kind == "two_body_orbit":  # Janvier et al.: pericentre on the x axis, unit semi-major axis
        e, mu = rng.uniform(*ic.eccentricity), float(getattr(solver if system is None else system,
                                                            "gravitational_parameter", 1.0))
        return np.array([1.0 - e, 0.0, 0.0, math.sqrt(mu * (1.0 + e) / (1.0 - e))])  # vis-viva at r = a (1 - e)
    if kind == "rigid_body_circle":  # Janvier et al.: |m| = 1 in the (m1, m3) plane
        phi = rng.uniform(*ic.angle)
        return np.array([math.cos(phi), 0.0, math.sin(phi)])
    if kind == "random_fourier":
        x = solver.x.detach().cpu().numpy()
        modes = np.arange(1, ic.n_modes + 1)
        weights = rng.standard_normal(ic.n_modes)
        phases = rng.uniform(0.0, 2.0 * np.pi, ic.n_modes)
        field = (weights[:, None] * np.cos(2 * np.pi * modes[:, None] * x[None, :] / solver.domain_length
                                           + phases[:, None])).sum(0)
        return ic.amplitude * field / max(np.sqrt(np.mean(field**2)), 1e-12)
    raise ValueError(f"initial_condition.distribution = {kind!r} cannot be drawn")


def component_order(path: str | Path, names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    """Positions in a file's components ``names`` of the system's components ``wanted``, matched by
    name (any order); unlabelled components (``0 .. n-1``, what xarray gives a dimension without a
    coordinate) by position. ``DataError`` naming ``path`` when some are missing."""
    names = [str(name) for name in names]
    if names == [str(index) for index in range(len(wanted))]:
        return list(range(len(wanted)))
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DataError(f"{path}: its components {names} lack {missing}; the system needs {list(wanted)} (in any "
                        "order): give a file of this system's states")
    return [names.index(name) for name in wanted]


def open_initial_conditions(path: Path, key: str, fix: str = "a NetCDF file"):
    """The open NetCDF dataset at ``path``, the value of ``key``; ``DataError`` for a missing file or
    a folder (``fix``: what to give instead) and for a file that is not NetCDF."""
    import xarray as xr

    if not path.is_file():
        where = "" if path.is_absolute() or path.exists() else \
            f" (a relative path is read from the working directory, {os.getcwd()}, not from the case file's folder)"
        raise DataError(f"{key} = {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}{where}; "
                        f"give {fix}")
    try:
        return xr.open_dataset(path, engine="netcdf4")
    except (OSError, ValueError) as error:  # not NetCDF, or damaged
        raise DataError(f"{key} = {str(path)!r}: not a readable NetCDF file ({error})") from None


def read_member_states(path: str | Path, solver: Solver, rows: Sequence[int], *, key: str, count_key: str,
                       n_members: int | None = None, fix: str = "a NetCDF file", whose: str = "the case's"
                       ) -> tuple[np.ndarray, float, np.ndarray]:
    """Members' states from a NetCDF file with ``u(member, x|component)`` or ``u(member, time, x|component)``
    (the first time): the one reader of ``initial_condition.file`` (simulate) and
    ``rollout.initial_conditions`` (rollouts).

    ``rows``: the positions (in the file's member order) to read; ``n_members`` (default ``max(rows) + 1``)
    must exist, and the labels of that many are returned. Fields on a finer grid of the same domain are
    filtered onto the solver's (``grids.restrict_to_grid``); components are matched by name.
    ``key``/``count_key`` name the settings in the messages, ``whose`` the solver ("the host's"). Returns
    ``(member labels (n_members,), t0, states (len(rows), *state) float64)``; ``DataError`` names the
    file and the fix, also for a non-finite member (by its label).
    """
    path, rows = Path(path), list(rows)
    n_members = max(rows, default=-1) + 1 if n_members is None else n_members
    state_dim = "component" if solver.component_names else "x"
    with open_initial_conditions(path, key, fix) as dataset:
        u = dataset.get("u")
        if u is None or u.dims[0] != "member" or u.dims[-1] != state_dim or u.ndim != 2 + ("time" in u.dims):
            found = "no variable 'u'" if u is None else f"u has dims {u.dims}"
            raise DataError(f"{path}: {found}; {whose} solver needs u(member, {state_dim}) or "
                            f"u(member, time, {state_dim})")
        if "time" in u.dims:
            if u.sizes["time"] == 0:
                raise DataError(f"{path}: u has no time; initial conditions need at least one saved state")
            u = u.isel(time=0)
        if not np.issubdtype(u.dtype, np.number):
            raise DataError(f"{path}: u holds {u.dtype} values; initial conditions need numbers")
        available = u.sizes["member"]
        if n_members > available:
            raise DataError(f"{path}: holds {available} members; {count_key} = {n_members}: set it to at most "
                            f"{available}")
        labels, t0 = members_and_start(dataset, n_members, source=path)
        with reading_data_of(path):
            values = np.asarray(u.isel(member=rows).values, dtype=np.float64)
        if solver.component_names:
            if u.sizes["component"] != len(solver.component_names):
                raise DataError(f"{path}: u has {u.sizes['component']} components; {whose} solver has "
                                f"{list(solver.component_names)}: give a file of this system's states")
            values = values[:, component_order(path, dataset["component"].values if "component" in dataset.coords
                                               else range(values.shape[1]), solver.component_names)]
        else:
            n_solver, n_file = solver.state_shape[-1], values.shape[-1]
            if n_file < n_solver or n_file % n_solver:
                raise DataError(f"{path}: {n_file} grid points cannot be filtered onto {whose} {n_solver} points; "
                                f"{whose} points must divide the file's")
            check_domain_length(dataset, getattr(solver, "domain_length", None), path,
                                f"{whose} system.domain_length =")
            values = restrict_to_grid(values, n_solver)
    bad = nonfinite_members(values)
    if len(bad):
        raise DataError(f"{key} = {str(path)!r}: initial states of members {[int(labels[rows[i]]) for i in bad][:10]} "
                        "are not finite; give finite states, choose other members or fix the file")
    return labels, t0, values


def members_and_start(dataset, n_members: int, source: str | Path = "initial conditions") -> tuple[np.ndarray, float]:
    """``(member labels (n_members,), first time)`` of an open initial-condition dataset with ``u``:
    a simulation and a rollout from it both keep them, so that their output pairs with the file's
    trajectories. Files without them: ``0..n-1`` and 0. ``DataError`` (naming ``source``) unless the
    labels increase strictly: outputs are paired, selected and combined by them."""
    members = (np.asarray(dataset["member"].values[:n_members], dtype=np.int64) if "member" in dataset.coords
               else np.arange(n_members, dtype=np.int64))
    if np.any(np.diff(members) <= 0):
        unique = len(np.unique(members)) == len(members)
        raise DataError(f"{source}: its member labels {_abbreviated(members)} are "
                        f"{'not increasing' if unique else 'not unique'}; outputs pair members by label, so "
                        "give a file whose members increase strictly (xarray: ds.sortby('member'), and drop "
                        "repeated members)")
    if "time" not in dataset["u"].dims or "time" not in dataset.coords:
        return members, 0.0
    check_time_coordinate(dataset, Path(source))  # dates (nanoseconds) or NaN would be taken as the clock
    return members, float(dataset["time"].values[0])


def _abbreviated(values: np.ndarray, shown: int = 6) -> str:
    listed = ", ".join(str(v) for v in values[:shown])
    return f"[{listed}{', ...' if len(values) > shown else ''}]"


def draw_initial_conditions(ic: InitialConditionConfig, solver: Solver, members: Sequence[int], *,
                            seed: int | None = None, count_key: str = "initial_condition.members",
                            system=None) -> torch.Tensor:
    """Initial states ``(len(members), *state)`` on the solver's device and dtype.

    ``members`` are global member indices; ``seed`` overrides ``ic.seed`` (rollouts use their own);
    ``count_key`` names the member count in the message for a file with too few members; ``system``:
    the true system's ``[system]`` (two_body_orbit's orbits are of its ``gravitational_parameter``;
    without it the solver's, else 1: a rollout's solver is the host, which may have none).
    Non-finite states raise ``DataError`` before any work starts.
    """
    if ic.distribution == "file":
        return file_initial_states(ic, solver, members, count_key=count_key)[0]
    seed = ic.seed if seed is None else seed
    warn_unused_keys(ic)
    states = np.stack([_draw_one(ic, member_rng(seed, m), solver, system) for m in members]) if len(members) else \
        np.zeros((0, *solver.state_shape))
    bad = nonfinite_members(states)
    if len(bad):
        raise DataError(f"initial states of members {[members[i] for i in bad][:10]} are not finite "
                        f"(initial_condition.distribution = {ic.distribution!r}); give finite states (or choose "
                        "other members / another distribution)")
    return finite_in(states, solver, source="the initial conditions")


def file_initial_states(ic: InitialConditionConfig, solver: Solver, members: Sequence[int], *,
                        count_key: str = "initial_condition.members") -> tuple[torch.Tensor, np.ndarray, float]:
    """``(states (len(members), *state) on the solver's device and dtype, the file's member labels, t0)``
    of ``initial_condition.file``: ``read_member_states`` with its names."""
    warn_unused_keys(ic)
    labels, t0, states = read_member_states(ic.file, solver, members, key="initial_condition.file",
                                            count_key=count_key)
    return finite_in(states, solver, source="the initial conditions"), labels, t0


def finite_in(states: np.ndarray, solver, *, source: str) -> torch.Tensor:
    """``states`` in the solver's dtype and device; ``DataError`` where one overflows there (1e39 is finite
    in float64 and inf in float32: it was accepted and only warned about as beyond the blow-up bound)."""
    converted = torch.as_tensor(states, dtype=solver.dtype, device=solver.device)
    if converted.numel() and not torch.isfinite(converted).all():
        raise DataError(f"{source} overflow {solver.dtype} (compute.dtype): give states within its range, or "
                        "compute in float64")
    return converted
