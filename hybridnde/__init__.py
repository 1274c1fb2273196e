"""hybridnde: neural closures for simulation codes.

``du/dt = F_known(t, u) + C_theta(t, u)``: host solvers (package ``solvers``) integrate the physics
they know; a neural closure supplies the rest, trained with Jacobian regularization along
directional derivatives and run in large ensemble rollouts.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
