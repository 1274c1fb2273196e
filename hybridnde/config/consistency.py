"""The rules of a case that join several sections (each section's own rules live with its dataclass).

``parse_case`` applies them to every case it builds, so all are checked before any work starts; a
``ConfigError`` names the field and the fix.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .fields import ConfigError, warn_once
from .physics import ADAPTIVE_INTEGRATORS, KuramotoSivashinskyConfig, SystemConfig

if TYPE_CHECKING:
    from .case import CaseConfig

__all__ = ["check_consistency", "ode_state_size"]

log = logging.getLogger(__name__)


def check_consistency(case: CaseConfig) -> None:
    """Rules that join several sections; all checked before any work starts."""
    system, time = case.system, case.time
    spectral = isinstance(system, KuramotoSivashinskyConfig) and system.method == "spectral"
    if spectral and time.integrator != "etdrk4":
        raise ConfigError(f"time.integrator = {time.integrator!r}: the spectral Kuramoto-Sivashinsky solver "
                          f"steps with 'etdrk4'; set time.integrator = \"etdrk4\" or system.method = \"finite_difference\"")
    if not spectral and time.integrator == "etdrk4":
        raise ConfigError("time.integrator = 'etdrk4' needs the spectral Kuramoto-Sivashinsky solver; "
                          "use 'rk4' (or 'euler', or an adaptive method) for this system")
    if isinstance(system, KuramotoSivashinskyConfig) and time.integrator in ADAPTIVE_INTEGRATORS:
        raise ConfigError(f"time.integrator = {time.integrator!r}: Kuramoto-Sivashinsky is stiff; use 'etdrk4' "
                          "(spectral) or 'rk4' (finite_difference)")
    if isinstance(system, KuramotoSivashinskyConfig) and system.method == "finite_difference":
        from solvers import KuramotoSivashinskyFiniteDifference

        probe = KuramotoSivashinskyFiniteDifference(
            domain_length=system.domain_length, n_points=system.n_points, dt=time.dt, fd_order=system.fd_order,
            integrator=time.integrator, check_stability=False)
        limit = probe.linear_stability_dt()
        if time.dt > limit:
            raise ConfigError(f"time.dt = {time.dt} exceeds the {time.integrator} stability limit {limit:.4g} of "
                              f"the order-{system.fd_order} finite-difference scheme at N = {system.n_points}; "
                              f"set time.dt <= {limit:.4g} or use system.method = \"spectral\"")
    if not isinstance(case.hybrid.system, Mapping):
        raise ConfigError("hybrid.system must be a table of [system] overrides, e.g. {n_points = 32}")
    if "name" in case.hybrid.system and case.hybrid.system["name"] != system.name:
        raise ConfigError("hybrid.system.name: the host solves the same system as the truth; drop the key")
    host = case.host_system  # validates the overrides, naming hybrid.system.<key>
    host_time = case.host_time
    if case.host_steps_etdrk4 != (host_time.integrator == "etdrk4"):
        fitting = "'etdrk4'" if case.host_steps_etdrk4 else "'rk4' or 'euler'"
        raise ConfigError(f"hybrid.integrator = {host_time.integrator!r} does not fit the host "
                          f"({'spectral' if case.host_steps_etdrk4 else 'explicit'} solver); use {fitting}, or 'auto'")
    kernel_size = case.model.kernel_size
    if case.model.kind == "periodic_cnn":
        if kernel_size % 2 == 0:
            raise ConfigError(f"model.kernel_size = {kernel_size}: give an odd width (the periodic convolutions "
                              f"are centred on each grid point), e.g. {kernel_size + 1}")
        # not a limit of the model (models.periodic_halo wraps any number of times): a sanity guard, since a
        # stencil wider than twice the grid can only be a mistake
        if isinstance(host, KuramotoSivashinskyConfig) and kernel_size // 2 > host.n_points:
            raise ConfigError(f"model.kernel_size = {kernel_size} is wider than twice the host grid "
                              f"(N = {host.n_points}); give at most {2 * host.n_points + 1}")
    if isinstance(host, KuramotoSivashinskyConfig) and isinstance(system, KuramotoSivashinskyConfig):
        if host.n_points > system.n_points or system.n_points % host.n_points:
            raise ConfigError(f"hybrid.system.n_points = {host.n_points} must divide the truth's "
                              f"system.n_points = {system.n_points} (the truth is filtered onto the host grid)")
        if host.domain_length != system.domain_length:
            raise ConfigError("hybrid.system.domain_length must equal system.domain_length")
        _warn_other_methods_keys(system, host)
    ic = case.initial_condition
    expected = ode_state_size(system)
    if case.hybrid.setup == "second_order" and not positions_then_velocities(system):
        raise ConfigError(f"hybrid.setup = 'second_order' needs an ODE state of positions then velocities "
                          f"(two_body, double_pendulum); {system.name} is not such a system (use 'residual' or "
                          f"'neural_ode')")
    for name in ("value", "low", "high"):
        value = getattr(ic, name)
        if value and expected is not None and len(value) != expected:
            raise ConfigError(f"initial_condition.{name} has {len(value)} entries; {system.name} has {expected} "
                              "state components")
    if ic.std and expected is not None and len(ic.std) not in (1, expected):
        raise ConfigError(f"initial_condition.std has {len(ic.std)} entries; give 1 or {expected}")
    allowed = {"two_body_orbit": "two_body", "rigid_body_circle": "rigid_body",
               "random_fourier": "kuramoto_sivashinsky"}
    if ic.distribution in allowed and allowed[ic.distribution] != system.name:
        raise ConfigError(f"initial_condition.distribution = {ic.distribution!r} is for {allowed[ic.distribution]}, "
                          f"not {system.name}")
    if isinstance(system, KuramotoSivashinskyConfig) and ic.distribution in ("point", "gaussian", "uniform_box"):
        raise ConfigError(f"initial_condition.distribution = {ic.distribution!r} does not fit a field; use "
                          "'random_fourier' or 'file' for Kuramoto-Sivashinsky")
    # an even grid's Nyquist mode has no sine part: a random phase would not be honoured (and the host's
    # training data, grids.restrict_to_grid, drop that mode)
    if isinstance(system, KuramotoSivashinskyConfig) and ic.n_modes > (system.n_points - 1) // 2:
        raise ConfigError(f"initial_condition.n_modes = {ic.n_modes}: a grid of {system.n_points} points holds modes "
                          f"with random phases up to {(system.n_points - 1) // 2} (below N/2); lower it")


def _warn_other_methods_keys(system: KuramotoSivashinskyConfig, host: KuramotoSivashinskyConfig) -> None:
    """A key of the method neither the truth nor the host uses (``dealiasing_fraction`` of the spectral
    solver, ``fd_order`` of finite differences), set to other than its default, is ignored: said once."""
    defaults = {field.name: field.default for field in dataclasses.fields(KuramotoSivashinskyConfig)}
    for key, method in (("dealiasing_fraction", "spectral"), ("fd_order", "finite_difference")):
        if method not in (system.method, host.method) and getattr(system, key) != defaults[key]:
            warn_once(log, f"system.{key} = {getattr(system, key):g} is for method = {method!r}, which neither the "
                           f"truth nor the host uses (it is ignored); remove it or set system.method = {method!r}")


def positions_then_velocities(system: SystemConfig) -> bool:
    """Whether an ODE system's state is positions, then their velocities (``second_order`` needs it)."""
    from solvers import ODE_SYSTEMS

    return system.name in ODE_SYSTEMS and ODE_SYSTEMS[system.name].positions_then_velocities


def ode_state_size(system: SystemConfig) -> int | None:
    """Components of an ODE system's state; ``None`` for a field (its size is ``n_points``)."""
    from solvers import ODE_SYSTEMS

    if system.name in ODE_SYSTEMS:
        return len(ODE_SYSTEMS[system.name].component_names)
    return None
