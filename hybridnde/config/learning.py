"""Case sections for the neural closure and its training."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import option

__all__ = ["ModelConfig", "TrainingConfig"]


@dataclass(frozen=True)
class ModelConfig:
    kind: str = option("auto", "closure architecture: mlp (ODE states), periodic_cnn (KS fields), auto picks by system",
                       choices=("auto", "mlp", "periodic_cnn"))
    width: int = option(200, "hidden units (mlp) or channels (periodic_cnn)", positive=True)
    depth: int = option(2, "hidden layers", positive=True)
    activation: str = option("tanh", "nonlinearity", choices=("tanh", "gelu", "relu", "silu", "softplus", "elu"))
    kernel_size: int = option(5, "periodic_cnn: odd convolution width, at most 2N + 1 of the host grid", positive=True)
    normalize: bool = option(True, "fit input/output normalisation (stored with the weights) to the training data: "
                             "inputs to the states' mean/std, outputs to the closure target's (data du/dt minus "
                             "the host's known physics)")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = option(100, "passes over the training states", positive=True)
    batch_size: int = option(256, "data states per optimiser step", positive=True)
    learning_rate: float = option(1e-3, "AdamW learning rate", positive=True)
    rollout_steps: int = option(2, "k: solver steps unrolled from each data state in the loss", positive=True)
    regularizer: str = option("none", "directional-derivative Jacobian regularizer", choices=("none", "jvp", "fd"))
    regularizer_weight: float = option(1e-3, "lambda multiplying the regularizer", nonnegative=True)
    seed: int = option(0, "seed of weights, batches and probes", nonnegative=True)
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (0 = Adam, as Janvier et al.)", nonnegative=True)
    lr_schedule: str = option("cosine", "learning-rate schedule over the epochs: constant, cosine (to "
                              "min_learning_rate) or step (times lr_gamma every lr_step_epochs)",
                              choices=("constant", "cosine", "step"))
    min_learning_rate: float = option(1e-5, "cosine: final learning rate (at most learning_rate: a climbing "
                                      "cosine is refused)", nonnegative=True)
    lr_step_epochs: int = option(100, "step: epochs between learning-rate drops", positive=True)
    lr_gamma: float = option(0.5, "step: factor of each drop", positive=True, maximum=1.0)
    gradient_clip: float = option(1.0, "clip the gradient's global 2-norm to this (0 = off)", nonnegative=True)
    validation_fraction: float = option(0.2, "share of members held out for validation (member-wise split: the "
                                        "last members by index; at least one when it is > 0 and there are two or more; 0: "
                                        "none, validation runs on the training members)",
                                        nonnegative=True, maximum=0.9)
    validation_rollout_steps: int = option(0, "steps of the validation rollouts that early stopping watches "
                                           "(0 = rollout_steps)", nonnegative=True)
    patience: int = option(0, "early stopping: epochs without a better validation loss before stopping "
                           "(0 = never stop early); the best weights are kept either way", nonnegative=True)
    checkpoint_every: int = option(10, "epochs between checkpoints (a sibling .checkpoint.pt file; 0 = none)",
                                   nonnegative=True)
    window_stride: int = option(1, "samples between the starts of consecutive training windows", positive=True)
    probes: int = option(2, "jvp: random probe directions per data state (Hutchinson)", positive=True)
    probe_distribution: str = option("gaussian", "jvp: probe law (gaussian as Janvier et al., or rademacher: "
                                     "lower variance)", choices=("gaussian", "rademacher"))
    normalize_probes: bool = option(False, "jvp: scale each probe to unit length (the penalty then estimates "
                                    "||J_theta - J||_F^2 / n)")
    fd_stencil: str = option("one_sided", "fd: one_sided (the paper's L_FD from x_t, x_t+1, x_t+2; first order) "
                             "or centred (x_t-1, x_t, x_t+1; second order)", choices=("one_sided", "centred"))
    fd_warn_threshold: float = option(0.1, "fd: warn when the data's estimated relative truncation error of the "
                                      "stencil exceeds this (see hybridnde.regularizers.sampling_error)",
                                      positive=True)
    regularizer_warmup_epochs: int = option(0, "ramp the regularizer weight linearly from 0 over these epochs",
                                            nonnegative=True)
    integration: str = option("step", "how rollouts are differentiated: step (through the host solver's steps), "
                              "odeint or odeint_adjoint (torchdiffeq adaptive_method; ODE hosts only)",
                              choices=("step", "odeint", "odeint_adjoint"))
    adaptive_method: str = option("dopri5", "odeint/odeint_adjoint: torchdiffeq method (tolerances: time.rtol, "
                                  "time.atol)", choices=("dopri5", "dopri8", "bosh3", "adaptive_heun"))
    # -- trajectory-loss method and Jacobian penalties (Ko et al. 2023; Josias & Brink 2022) --------
    method: str = option("vanilla", "trajectory loss: vanilla (rollouts of rollout_steps from each window start), "
                         "homotopy (model coupled to a spline of the data, coupling lowered to 0 in stages) or "
                         "multiple_shooting (segments with free starts + continuity penalty); the last two need "
                         "integration = odeint or odeint_adjoint", choices=("vanilla", "homotopy", "multiple_shooting"))
    homotopy_stages: int = option(5, "homotopy: stages of the lam schedule (the last one has lam = 0)", positive=True)
    homotopy_epochs_per_stage: int = option(0, "homotopy: epochs per stage (0 = epochs // homotopy_stages; "
                                            "epochs beyond the stages stay at lam = 0; training.epochs must reach the last stage)", nonnegative=True)
    homotopy_ratio: float = option(0.6, "homotopy: decrement of lam at stage i proportional to ratio^i", positive=True)
    coupling: float = option(6.0, "homotopy: coupling K in du/dt = F - lam K (u - u_data(t)) (1/time; above the "
                             "data's largest Lyapunov exponent, see hybridnde.training.homotopy)", nonnegative=True)
    smoothing: float = option(0.0, "homotopy: smoothing lam of the cubic spline u_data(t), as scipy's "
                              "make_smoothing_spline (0 = interpolate; ~1e-3 Lotka-Volterra, ~1e-4 Lorenz-63)",
                              nonnegative=True)
    shooting_segments: int = option(5, "multiple_shooting: segments per window", positive=True)
    continuity_weight: float = option(1.0, "multiple_shooting: weight of the mean squared jump between segments",
                                      nonnegative=True)
    jacobian_penalty: str = option("none", "penalty on the Jacobian of the field jacobian_penalty_field names, at "
                                   "the window states (adds to regularizer): frobenius ||J||_F^2 (Hutchinson, "
                                   "`probes`), kinetic ||F||^2, rnode both (Finlay et al. 2020), spectral "
                                   "sigma_max, condition sigma_max/sigma_min",
                                   choices=("none", "frobenius", "kinetic", "rnode", "spectral", "condition"))
    jacobian_penalty_field: str = option("auto", "the field jacobian_penalty acts on: closure = C_theta alone (the "
                                         "part the host adds: what is learned), rhs = the hybrid right-hand side "
                                         "F_known + C_theta (the field the solver integrates; in a residual host "
                                         "its penalty pushes C_theta to cancel F_known's stiff terms); auto = "
                                         "closure for hybrid.setup = residual, else rhs",
                                         choices=("auto", "closure", "rhs"))
    jacobian_penalty_weight: float = option(1e-3, "weight of jacobian_penalty", nonnegative=True)
    jacobian_penalty_iterations: int = option(0, "iterations of the iterative estimates, warm-started per data "
                                              "state: spectral power iterations per call once a state has a "
                                              "stored vector (0 = 2; a state's first call runs 30); condition "
                                              "Lanczos steps on J^T J for states of more than 32 values (0 = 20, "
                                              "at least 2; fewer under-estimate sigma_max/sigma_min: measured, "
                                              "a state's first call at 20 steps 19% low on a periodic "
                                              "CNN at N = 64, warm calls within 1% by the fourth; 40 steps "
                                              "within 5e-4 by the second)",
                                              nonnegative=True, maximum=1000)
    observation_noise: float = option(0.0, "Gaussian noise added to the loaded data before training, seeded by "
                                      "seed and member (0 = none)", nonnegative=True)
    observation_noise_scale: str = option("absolute", "observation_noise is a standard deviation (absolute) or a "
                                          "fraction of each member's mean |u| per component (mean, Ko et al.'s "
                                          "'5% noise')", choices=("absolute", "mean"))
