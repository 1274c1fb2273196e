"""What a rollout starts from, checked before any work: the closure and the members' initial states.

* closure: a ``closure.pt`` file (``closure_file.load_closure``), a ``torch.nn.Module`` or any
  callable ``closure(t, u) -> du_dt``; it must map host states ``(batch, *state)`` to that shape;
* initial states: drawn from ``[initial_condition]`` with ``rollout.seed`` (member ``i`` from the
  stream ``(seed, i)`` only), or the first time of a NetCDF file such as a truth file, filtered onto
  the host grid; non-finite states are refused.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from solvers.base import coarser_than

from .closure_file import load_closure, weights_checksum
from .config import CaseConfig, ConfigError, parse_case_text
from .config.fields import warn_once
from .initial_conditions import draw_initial_conditions, finite_in, read_member_states
from .io import DataError

__all__ = ["load_rollout_closure", "check_closure_case", "check_closure_fits", "read_initial_states", "initial_states"]

log = logging.getLogger(__name__)


def _host_differences(trained: CaseConfig, case: CaseConfig) -> list[str]:
    """What a closure trained in ``trained`` was fitted to that ``case`` changes: the set-up (what the
    host leaves to the closure) and every host-system setting (the physics the closure complements)."""
    differences = []
    if trained.hybrid.setup != case.hybrid.setup:
        differences.append(f"hybrid.setup {trained.hybrid.setup!r} (this case: {case.hybrid.setup!r})")
    found, wanted = trained.host_system, case.host_system
    if found.name != wanted.name:  # another system: its name says it all
        return [*differences, f"host system {found.name!r} (this case: {wanted.name!r})"]
    for field in dataclasses.fields(found):
        was, now = getattr(found, field.name), getattr(wanted, field.name)
        if was != now and _used_by(field, found, wanted):
            differences.append(f"host {field.name} {was!r} (this case: {now!r})")
    return differences


def _used_by(field: dataclasses.Field, *systems) -> bool:
    """Whether either host uses ``field``: a setting documented as ``"<method> only: ..."`` (KS's
    ``fd_order``, ``dealiasing_fraction``) means nothing to hosts of another method."""
    method, marker, _ = field.metadata.get("doc", "").partition(" only:")
    if not marker or " " in method:
        return True
    return any(getattr(system, "method", method) == method for system in systems)


def check_closure_case(payload: dict, case: CaseConfig, name: str | Path) -> None:
    """``DataError`` when a closure file was trained for another set-up, host system or grid than ``case``'s.

    ``payload``: ``load_closure``'s second value; a file saved without its case (``case_toml`` empty,
    the Python API) is left to ``check_closure_fits``. A periodic CNN runs on any grid, so the shape
    check alone would let a KS closure step another system; and a closure that learned a missing term
    (``hybrid.system``) or the whole vector field (``neural_ode``) would count physics twice, or miss
    it, in a host that differs.
    """
    text = payload.get("case_toml") or ""
    if not text:
        return
    try:
        trained = parse_case_text(text, source=f"{name} (its case)")
    except ConfigError as error:
        log.warning("%s: cannot read the case it was trained for (%s); checking its shapes only", name, error)
        return
    differences = _host_differences(trained, case)
    if differences:
        raise DataError(f"{name}: trained for case {trained.case.name!r} with " + ", ".join(differences)
                        + "; train a closure for this case (`hybridnde train`) or give the case it was trained for")
    model = [f"{field.name} {getattr(trained.model, field.name)!r} (this case: {getattr(case.model, field.name)!r})"
             for field in dataclasses.fields(trained.model)
             if getattr(trained.model, field.name) != getattr(case.model, field.name)]
    if model:  # the file's network runs; the output's case_toml records this case's [model]
        log.warning("%s was trained with a [model] that differs from this case's in %s; the file's network is what "
                    "runs", name, ", ".join(model))


def load_rollout_closure(closure_path: str | Path | None, closure: Callable | None, *, device: torch.device,
                         dtype: torch.dtype, case: CaseConfig | None = None) -> tuple[Callable | None, str]:
    """``(closure, checksum)``: the file's model on ``device`` in ``dtype`` and its weights checksum, or
    the given module (checksum of its weights) or callable (its name); ``(None, "none")`` for neither.
    With ``case``, a closure file must have been trained for its host system and grid."""
    if closure_path is not None:
        model, payload = load_closure(closure_path, device=device, dtype=dtype)
        if case is not None:
            check_closure_case(payload, case, closure_path)
        saved, run = str(payload.get("dtype", "")).replace("torch.", ""), str(dtype).replace("torch.", "")
        if saved and saved != run:  # (its checksum is of the saved weights)
            # widening float32 weights is exact; narrowing float64 ones rounds them
            (log.warning if saved == "float64" else log.info)(
                "%s: a closure trained in %s, run in %s (compute.dtype)%s", closure_path, saved, run,
                ": its weights are rounded" if saved == "float64" else "")
        return model, payload["checksum"]
    if isinstance(closure, torch.nn.Module):
        return closure, weights_checksum(closure.state_dict())
    if closure is not None:
        return closure, f"python callable {getattr(closure, '__qualname__', type(closure).__name__)}"
    return None, "none"


def check_closure_fits(closure: Callable, solver, name) -> None:
    """``DataError`` unless ``closure`` maps host states ``(batch, *state)`` to the same shape, in their
    precision or finer (``Solver.closure_tendency`` checks every call; this is before any work)."""
    probe = torch.zeros((2, *solver.state_shape), dtype=solver.dtype, device=solver.device)
    try:
        with torch.inference_mode():
            result = closure(solver.as_time(0.0), probe)
    except (RuntimeError, ValueError) as error:  # shape errors inside the network (torch's, or our models')
        raise DataError(f"{name}: fails on host states of shape {tuple(probe.shape)} in {probe.dtype} ({error}); it "
                        "was trained for another system or grid, or is in another dtype") from None
    if not isinstance(result, torch.Tensor) or tuple(result.shape) != tuple(probe.shape):
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise DataError(f"{name}: returns {shape} for host states of shape {tuple(probe.shape)}; it was trained "
                        "for another system or grid")
    if coarser_than(result.dtype, probe.dtype):  # the solver's own rule, before any work
        raise DataError(f"{name}: returns {result.dtype} for host states in {probe.dtype}; every step would round "
                        f"to it: give a closure in {probe.dtype} or set compute.dtype to match")


def read_initial_states(path: str | Path, solver, n_members: int, positions: range) -> tuple[np.ndarray, float, np.ndarray]:
    """``(member labels (n_members,), t0, u0 (len(positions), *state) float64)``: the first time of the first
    ``n_members`` members of ``rollout.initial_conditions`` (a truth file), fields filtered onto the host
    grid; ``initial_conditions.read_member_states`` (simulate's reader too) with a rollout's names."""
    return read_member_states(path, solver, positions, n_members=n_members, key="rollout.initial_conditions",
                              count_key="rollout.members", whose="the host's",
                              fix="a truth file written by `hybridnde simulate` or \"draw\"")


def initial_states(case: CaseConfig, solver, positions: range) -> tuple[np.ndarray, float, torch.Tensor]:
    """``(member_ids (members,), t0, u0 (len(positions), *state) on the solver's device)``; rejects
    non-finite states with ``DataError`` before any step."""
    rollout = case.rollout
    if rollout.initial_conditions == "draw":
        ic, points = case.initial_condition, getattr(solver, "n_points", None)
        # below N/2, as the training data filtered onto this grid (grids.restrict_to_grid): higher modes alias
        # onto lower ones, and an even grid's Nyquist mode has no sine part
        if ic.distribution == "random_fourier" and points is not None and ic.n_modes > (points - 1) // 2:
            raise ConfigError(f"initial_condition.n_modes = {ic.n_modes}: the host's grid of {points} points holds "
                              f"modes up to {(points - 1) // 2} (below N/2), so the drawn states would alias; lower "
                              "it, or roll out from the truth's states (rollout.initial_conditions = \"truth.nc\")")
        u0 = draw_initial_conditions(case.initial_condition, solver, positions, seed=rollout.seed,
                                    count_key="rollout.members", system=case.system)
        member_ids, t0 = np.arange(rollout.members, dtype=np.int64), 0.0
    else:
        member_ids, t0, values = read_initial_states(rollout.initial_conditions, solver, rollout.members, positions)
        u0 = finite_in(values, solver, source=f"{rollout.initial_conditions}: the initial states")
    beyond = (u0.abs().flatten(1).amax(dim=1) > rollout.blowup_threshold).nonzero().flatten().tolist() \
        if len(u0) else []
    if beyond:  # they would be marked blew_up at t0 and saved as NaN throughout
        members = [int(member_ids[positions.start + i]) for i in beyond]
        message = (f"members {members[:10]}{' ...' if len(members) > 10 else ''} start beyond "
                   f"rollout.blowup_threshold = {rollout.blowup_threshold:g} (largest |u| {float(u0.abs().max()):.3g}): "
                   "they are marked blew_up at once; raise rollout.blowup_threshold above the states' size")
        warn_once(log, message)
    return member_ids, t0, u0
