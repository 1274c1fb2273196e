"""Case section for the hybrid model: which host solver the closure is plugged into."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import option

__all__ = ["HybridConfig"]


@dataclass(frozen=True)
class HybridConfig:
    setup: str = option(
        "residual", "residual: the host runs the [system] physics (changed by hybrid.system) and the closure adds "
        "what is missing; neural_ode: no known physics, the closure is the whole vector field; second_order: the "
        "host knows only dq/dt = v (systems whose state is positions then velocities: two_body, double_pendulum) "
        "and the closure gives the accelerations",
        choices=("residual", "neural_ode", "second_order"))
    system: Any = option(default_factory=dict, doc="overrides of [system] for the host solver, e.g. "
                         "{nonlinear_coefficient = 0.0} (missing term) or {n_points = 32} (sub-grid closure)")
    substeps: int = option(1, "host solver steps per data sample (host dt = time.dt * time.save_every / substeps); "
                              "with adaptive training (training.integration = odeint...) it refines the rollouts only",
                           positive=True)
    integrator: str = option("auto", "host integrator: auto = the truth's where the host can step with it, else "
                             "the host's own (etdrk4 for the spectral KS host, rk4 for an explicit one; rk4 for "
                             "neural_ode)",
                             choices=("auto", "etdrk4", "rk4", "euler"))
