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
from .grids import check_domain_length
from .io import DataError, check_time_coordinate

__all__ = ["members_and_start", "finite_in", "file_members_and_start", "draw_initial_conditions", "read_initial_conditions",
           "component_order", "open_initial_conditions", "member_rng", "nonfinite_members"]

log = logging.getLogger(__name__)
_warned: set[str] = set()  # the warnings about initial states given in this process


def warn_once(message: str) -> None:
    """Log ``message`` as a warning once per process: `hybridnde run` reads the initial states for its
    checks, then again to simulate, roll out and make the baseline."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def nonfinite_members(states: np.ndarray) -> np.ndarray:
    """Positions of the members of ``states: (members, *state)`` with a non-finite value (none for
    zero members: a rank of an MPI rollout may get no batch)."""
    return np.flatnonzero(~np.isfinite(states).all(axis=tuple(range(1, states.ndim))))


def member_rng(seed: int, member: int) -> np.random.Generator:
    """The random stream of one member: depends on ``(seed, member)`` only."""
    return np.random.default_rng([int(seed), int(member)])


def _draw_one(ic: InitialConditionConfig, rng: np.random.Generator, solver: Solver) -> np.ndarray:
    kind = ic.distribution
    if kind == "point":
        return np.asarray(ic.value, dtype=np.float64)
    if kind == "gaussian":
        std = np.broadcast_to(np.asarray(ic.std, dtype=np.float64), (len(ic.value),))
        return np.asarray(ic.value) + std * rng.standard_normal(len(ic.value))
    if kind == "uniform_box":
        return rng.uniform(np.asarray(ic.low), np.asarray(ic.high))
    if kind == "two_body_orbit":  # Janvier et al.: pericentre on the x axis, unit semi-major axis
        e = rng.uniform(*ic.eccentricity)
        return np.array([1.0 - e, 0.0, 0.0, math.sqrt((1.0 + e) / (1.0 - e))])
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


def read_initial_conditions(path: str | Path, solver: Solver, members: Sequence[int]) -> np.ndarray:
    """Members' states from a NetCDF file with ``u(member, x)``, ``u(member, component)`` or
    ``u(member, time, ...)`` (first time). Returns ``(len(members), *state)``; components labelled
    in the file are matched to the system's by name."""
    path = Path(path)
    with open_initial_conditions(path, "initial_condition.file") as dataset:
        if "u" not in dataset:
            raise DataError(f"{path}: no variable 'u'; initial conditions need u(member, x) or u(member, component)")
        u = dataset["u"]
        if "time" in u.dims:
            if u.sizes["time"] == 0:
                raise DataError(f"{path}: u has no time; initial conditions need at least one saved state")
            u = u.isel(time=0)
        if u.dims[0] != "member" or u.ndim != 1 + len(solver.state_shape):
            raise DataError(f"{path}: u has dims {u.dims}; expected (member, x) or (member, component)")
        if tuple(u.shape[1:]) != tuple(solver.state_shape):
            raise DataError(f"{path}: u has state shape {tuple(u.shape[1:])}; the case's solver needs "
                            f"{tuple(solver.state_shape)}")
        check_domain_length(dataset, getattr(solver, "domain_length", None), path, "the case's system.domain_length =")
        order = slice(None)
        if solver.component_names and "component" in u.dims:
            order = component_order(path, u["component"].values, solver.component_names)
        if max(members, default=-1) >= u.shape[0]:
            raise DataError(f"{path}: holds {u.shape[0]} members; the case asks for {max(members) + 1}")
        values = np.asarray(u.values[list(members)], dtype=np.float64)
        return values[..., order]


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


def file_members_and_start(path: str | Path, n_members: int) -> tuple[np.ndarray, float]:
    """``members_and_start`` of the file at ``path``; call after ``read_initial_conditions`` has checked it."""
    import xarray as xr

    with xr.open_dataset(path, engine="netcdf4") as dataset:
        return members_and_start(dataset, n_members, source=path)


def _abbreviated(values: np.ndarray, shown: int = 6) -> str:
    listed = ", ".join(str(v) for v in values[:shown])
    return f"[{listed}{', ...' if len(values) > shown else ''}]"


def draw_initial_conditions(ic: InitialConditionConfig, solver: Solver, members: Sequence[int], *,
                            seed: int | None = None) -> torch.Tensor:
    """Initial states ``(len(members), *state)`` on the solver's device and dtype.

    ``members`` are global member indices; ``seed`` overrides ``ic.seed`` (rollouts use their own).
    Non-finite states raise ``DataError`` before any work starts.
    """
    seed = ic.seed if seed is None else seed
    for problem in ic.unused_keys():
        warn_once(f"{problem} (it is ignored)")
    if ic.distribution == "file":
        states = read_initial_conditions(ic.file, solver, members)
    else:
        states = np.stack([_draw_one(ic, member_rng(seed, m), solver) for m in members]) if len(members) else \
            np.zeros((0, *solver.state_shape))
    bad = nonfinite_members(states)
    if len(bad) and ic.distribution == "file":  # named by the file's member labels
        labels = file_members_and_start(ic.file, max(members) + 1)[0]
        bad = [int(labels[members[i]]) for i in bad]
    elif len(bad):
        bad = [members[i] for i in bad]
    if len(bad):
        source = (f"initial_condition.file = {ic.file!r}" if ic.distribution == "file"
                  else f"initial_condition.distribution = {ic.distribution!r}")
        raise DataError(f"initial conditions of members {bad[:10]} are not finite "
                        f"({source}); give finite states (or choose other members / another distribution)")
    return finite_in(states, solver, source="the initial conditions")


def finite_in(states: np.ndarray, solver, *, source: str) -> torch.Tensor:
    """``states`` in the solver's dtype and device; ``DataError`` where one overflows there (1e39 is finite
    in float64 and inf in float32: it was accepted and only warned about as beyond the blow-up bound)."""
    converted = torch.as_tensor(states, dtype=solver.dtype, device=solver.device)
    if converted.numel() and not torch.isfinite(converted).all():
        raise DataError(f"{source} overflow {solver.dtype} (compute.dtype): give states within its range, or "
                        "compute in float64")
    return converted
