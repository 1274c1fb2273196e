"""The leading Lyapunov exponent of a rollout's model against the truth's (``evaluate --lyapunov``),
and the closure file a rollout was made with, found and checked.

Split from ``evaluate``: these need solvers (torch) and closure files; the metrics there need neither.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .alignment import AlignedPair
from .config import CaseConfig
from .io import DataError

__all__ = ["lyapunov_comparison", "closure_for_lyapunov", "recorded_closure", "solver_columns"]

log = logging.getLogger("hybridnde.evaluate")  # its messages read as evaluate's, as before the split


def lyapunov_comparison(case: CaseConfig, pair: AlignedPair, *, closure=None, truth_case: CaseConfig | None = None,
                        model_case: CaseConfig | None = None, simulated: bool = False, members: int | None = None,
                        duration: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Leading Lyapunov exponents of the model and of the true system, from the first ``members`` paired
    states at the first common time.

    ``case``: the evaluation's; ``truth_case`` (default ``case``): the reference's, whose true solver runs
    the reference's states on its own grid; ``model_case`` (default ``case``): the prediction's, whose host
    solver of ``[hybrid]`` runs it with ``closure`` (the bare host when None), or, with ``simulated`` (a
    prediction made by `simulate`), its own true system. ODE states are handed to each solver in its
    component order, whatever the files' column order.

    ``members``: default ``evaluate.lyapunov_members``; ``duration``: measured time per member, default
    ``evaluate.lyapunov_times`` Lyapunov times of ``case``'s exponent, else the files' horizon. A
    transient half that long is run first (the files' first states may lie off the attractor, e.g.
    Lorenz-63 from near the origin, and the separation must align).
    """
    import torch

    from .metrics.lyapunov import leading_lyapunov_exponent
    from .systems import build_host_solver, build_solver

    truth_case, model_case = truth_case or case, model_case or case
    if duration is None:
        exponent = case.evaluate.lyapunov_exponent
        duration = case.evaluate.lyapunov_times / exponent if exponent else float(pair.times[-1] - pair.times[0])
    count = min(case.evaluate.lyapunov_members if members is None else members, pair.members.size)
    truth_solver = build_solver(truth_case.system, truth_case.time, device="cpu", dtype=torch.float64)
    model_solver = (build_solver(model_case.system, model_case.time, device="cpu", dtype=torch.float64) if simulated
                    else build_host_solver(model_case, closure=closure, device="cpu", dtype=torch.float64))
    runs = (("truth", truth_solver, pair.reference_initial[:count], "reference"),
            ("model", model_solver, pair.predicted[:count, 0], "rollout"))
    for name, solver, states, whose in runs:  # (both before either estimate runs)
        if tuple(states.shape[1:]) != tuple(solver.state_shape):
            raise DataError(f"the {whose}'s states {tuple(states.shape[1:])} do not fit the {name} solver "
                            f"{tuple(solver.state_shape)}; pass the --case the rollout was made with")
    results = {}
    for name, solver, states, whose in runs:
        columns = solver_columns(pair.state_coords if pair.state_dim == "component" else None, solver)
        states = torch.as_tensor(np.asarray(states[..., columns], dtype=np.float64))
        finite = torch.isfinite(states.reshape(count, -1)).all(dim=1)
        if not finite.any():  # (every member blew up before the first common time, say)
            results[name] = {"exponent": math.nan, "standard_error": math.nan, "duration": duration, "members": 0,
                             "diverged": 0, "per_member": [], "solver": repr(solver),
                             "note": f"no finite state of the {whose} at the first common time to start from"}
            continue
        estimate = leading_lyapunov_exponent(solver, states[finite], duration=duration, transient=0.5 * duration,
                                             seed=seed, blowup_threshold=case.rollout.blowup_threshold)
        results[name] = {**estimate.as_dict(), "solver": repr(solver)}
    truth_value, model_value = results["truth"]["exponent"], results["model"]["exponent"]
    results["relative_difference"] = (model_value - truth_value) / abs(truth_value) if truth_value else math.nan
    results["closure"] = ("none (a simulation: its own system)" if simulated else
                          "none (bare host solver)" if closure is None else type(closure).__name__)
    return results


def solver_columns(components, solver) -> list[int] | slice:
    """The columns, in ``solver``'s component order, of ODE states whose columns are named ``components``
    (a file's order; ``None``, or a field: all, as they are)."""
    if components is None or not solver.component_names:
        return slice(None)
    from .initial_conditions import component_order

    return component_order("the files", components, solver.component_names)


def recorded_closure(attrs: Mapping[str, Any]) -> str | None:
    """The weights checksum of the closure a rollout file records, ``None`` for the bare solver's."""
    recorded = str(attrs.get("closure_checksum", "none"))
    return None if recorded in ("", "none") else recorded


def closure_for_lyapunov(rollout_attrs: Mapping[str, Any], rollout_path: Path, closure_path: str | Path | None,
                 case: CaseConfig):
    """The closure the rollout was made with, checked against its recorded checksum and ``case``'s host."""
    import torch

    from .closure_file import load_closure
    from .rollout_inputs import check_closure_case, check_closure_fits
    from .systems import build_host_solver

    recorded = recorded_closure(rollout_attrs)
    if closure_path is None:
        if recorded is None:
            return None
        closure_path, (closure, payload) = _recorded_closure_file(rollout_attrs, rollout_path, recorded)
    else:
        closure, payload = load_closure(closure_path, dtype=torch.float64)  # float64: lyapunov_comparison's solvers
    check_closure_case(payload, case, closure_path)
    check_closure_fits(closure, build_host_solver(case, device="cpu", dtype=torch.float64), closure_path)
    if recorded is not None and payload["checksum"] != recorded:
        log.warning("%s: checksum %s... differs from the one %s records (%s...)", closure_path,
                    payload["checksum"][:12], rollout_path, recorded[:12])
    return closure


def _recorded_closure_file(rollout_attrs: Mapping[str, Any], rollout_path: Path, recorded: str):
    """``(path, load_closure's (closure, payload) in float64)`` of the file the rollout records
    (``closure_file``) whose weights are ``recorded``: beside the rollout first (where `hybridnde run`
    keeps it), then as named (relative: to here); ``DataError`` when none is."""
    import torch

    from .closure_file import load_closure

    named = str(rollout_attrs.get("closure_file", ""))  # as the rollout was given it
    candidates = [rollout_path.parent / Path(named).name, Path(named)] if named else []
    found = [path for path in dict.fromkeys(candidates) if path.is_file()]
    for path in found:
        try:
            loaded = load_closure(path, dtype=torch.float64)
        except DataError:
            continue
        if loaded[1]["checksum"] == recorded:
            log.info("--lyapunov: the closure is %s, the rollout's closure_file", path)
            return path, loaded
    if found:
        raise DataError(f"{found[0]} (the rollout's closure_file) is not the closure {rollout_path} was made "
                        f"with ({recorded[:12]}...): it changed since; pass the rollout's closure with --closure")
    where = f" (its closure_file attribute, {named!r}, is not there)" if named else ""
    raise DataError(f"{rollout_path} was made with closure {recorded[:12]}...{where}; pass it with "
                    "--closure closure.pt to estimate the model's Lyapunov exponent")
