"""From a case's ``[system]``, ``[time]`` and ``[compute]`` tables to a host solver on a device."""
from __future__ import annotations

import numpy as np
import torch

from solvers import (ODE_SYSTEMS, Closure, ClosureOnly, KuramotoSivashinskyFiniteDifference, KuramotoSivashinskySpectral,
                     SecondOrderHost, Solver, StabilityLimitError)

from .config import CaseConfig, ConfigError, KuramotoSivashinskyConfig, SystemConfig, TimeConfig, to_mapping

__all__ = ["build_solver", "build_host_solver", "resolve_device", "resolve_dtype", "state_coordinates"]


def resolve_device(name: str = "auto", *, local_rank: int = 0, field: str = "compute.device") -> torch.device:
    """``"auto"`` -> ``cuda:(local_rank % device_count)`` when CUDA is there, else CPU. ``field``
    names the setting in errors."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    # (torch takes meta, mps, cpu:5, ...: devices the solvers and files are not made for)
    if device is None or device.type not in ("cpu", "cuda") or device.type == "cpu" and device.index not in (None, 0):
        raise ConfigError(f"{field} = {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{field} = {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise ConfigError(f"{field} = {name!r} but this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
                          "use one of them, 'cuda' or 'auto'")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    return {"float64": torch.float64, "float32": torch.float32}[name]


def build_solver(system: SystemConfig, time: TimeConfig, *, closure: Closure | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Solver:
    """The host solver a case describes, with ``closure`` in its hook.

    Adaptive integrators are not a solver property: the solver is built with RK4 and callers use
    ``solver.solve_adaptive(..., method=time.integrator)``.
    """
    common = dict(dt=time.dt, closure=closure, device=device, dtype=dtype)
    if isinstance(system, KuramotoSivashinskyConfig):
        if system.method == "spectral":
            return KuramotoSivashinskySpectral(
                domain_length=system.domain_length, n_points=system.n_points,
                dealiasing_fraction=system.dealiasing_fraction,
                nonlinear_coefficient=system.nonlinear_coefficient, **common)
        return KuramotoSivashinskyFiniteDifference(
            domain_length=system.domain_length, n_points=system.n_points, fd_order=system.fd_order,
            integrator=time.integrator, nonlinear_coefficient=system.nonlinear_coefficient, **common)
    parameters = {key: value for key, value in to_mapping(system).items() if key != "name"}
    if "moments_of_inertia" in parameters:
        parameters["moments_of_inertia"] = tuple(parameters["moments_of_inertia"])
    integrator = time.integrator if time.integrator in ("rk4", "euler") else "rk4"
    return ODE_SYSTEMS[system.name](integrator=integrator, **parameters, **common)


def build_host_solver(case: CaseConfig, *, closure: Closure | None = None, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float64) -> Solver:
    """The solver a closure is trained and rolled out in (``[hybrid]``): the host system stepped at
    ``case.host_time``, the closure alone for ``setup = "neural_ode"``, or the kinematics ``dq/dt = v``
    with the closure's accelerations for ``setup = "second_order"``. ``ConfigError`` (naming the fix)
    where the host cannot step the case's sampling interval."""
    try:
        host = build_solver(case.host_system, case.host_time, closure=closure, device=device, dtype=dtype)
    except StabilityLimitError as error:
        raise ConfigError(f"the host solver of [hybrid] cannot step the data's sampling interval "
                          f"{case.time.sample_interval:g} in hybrid.substeps = {case.hybrid.substeps} step(s): "
                          f"{error}; raise hybrid.substeps") from None
    except ValueError as error:  # any other set-up the host's constructor refuses
        raise ConfigError(f"[hybrid]: the host solver cannot be built ({error})") from None
    if case.hybrid.setup == "second_order":
        if not getattr(host, "positions_then_velocities", False):
            raise ConfigError(f"hybrid.setup = 'second_order' needs an ODE state of positions then velocities; "
                              f"{case.system.name} has state shape {host.state_shape}")
        return SecondOrderHost(state_shape=host.state_shape, dt=case.host_time.dt, integrator=case.host_time.integrator,
                               component_names=host.component_names, closure=closure, device=device, dtype=dtype)
    if case.hybrid.setup == "neural_ode":
        return ClosureOnly(state_shape=host.state_shape, dt=case.host_time.dt, integrator=case.host_time.integrator,
                           component_names=host.component_names, domain_length=getattr(host, "domain_length", None),
                           closure=closure, device=device, dtype=dtype)
    return host


def state_coordinates(solver: Solver) -> tuple[str, object]:
    """The NetCDF dimension of one member's state and its coordinate values: ``("x", grid)`` for
    fields, ``("component", names)`` for ODEs."""
    if solver.component_names:
        return "component", list(solver.component_names)
    # the schema's x is float64 whatever u is, computed in float64: a float32 solver's grid widened
    # afterwards gives N dx = L only to ~1e-7, and its own files read back as another period
    n = solver.state_shape[-1]
    return "x", np.arange(n, dtype=np.float64) * (float(solver.domain_length) / n)
