"""Host simulation codes with a closure hook ``closure(t, u)``.

Imports torch and numpy only (never ``hybridnde``), so any simulation code can vendor this package.
"""
from .base import Closure, Solver, SolverStateError, StabilityLimitError
from .explicit import ExplicitSolver
from .closure_only import ClosureOnly
from .integrators import FIXED_STEP_METHODS, odeint_adaptive
from . import fused_stages
from .kuramoto_sivashinsky import KuramotoSivashinskySpectral
from .kuramoto_sivashinsky_fd import KuramotoSivashinskyFiniteDifference
from .odes import ODE_SYSTEMS, DoublePendulum, Lorenz63, LotkaVolterra, RigidBody, TwoBody
from .second_order import SecondOrderHost

__all__ = [
    "Closure", "Solver", "ExplicitSolver", "ClosureOnly", "SolverStateError", "StabilityLimitError",
    "FIXED_STEP_METHODS", "odeint_adaptive",
    "KuramotoSivashinskySpectral", "KuramotoSivashinskyFiniteDifference",
    "TwoBody", "RigidBody", "LotkaVolterra", "Lorenz63", "DoublePendulum", "ODE_SYSTEMS", "SecondOrderHost",
]
