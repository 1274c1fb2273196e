"""hybridnde: neural closures for simulation codes.

``du/dt = F_known(t, u) + C_theta(t, u)``: host solvers (package ``solvers``) integrate the physics
they know; a neural closure supplies the rest, trained with Jacobian regularization along
directional derivatives and run in large ensemble rollouts.

Where things are (imported on use, so ``import hybridnde`` stays instant):

* ``solvers`` -- host solvers with the closure hook (``ExplicitSolver`` to subclass for your own code);
* ``hybridnde.models`` -- ``MLPClosure``, ``PeriodicCNNClosure``;
* ``hybridnde.training`` -- ``Trainer``, ``RolloutLoss``, ``DirectionalDerivativeTerm``,
  ``FiniteDifferenceTerm``, ``train_case``; ``hybridnde.regularizers`` -- the penalties themselves;
* ``hybridnde.data`` -- ``WindowSet``, ``load_training_data``; ``hybridnde.closure_file`` --
  ``save_closure``/``load_closure``; ``hybridnde.export`` -- TorchScript;
* ``hybridnde.rollout_job.run_rollout``, ``hybridnde.evaluate.evaluate_files``, ``hybridnde.config`` --
  what the command line runs. docs/python-api.md has a complete own-solver example.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
