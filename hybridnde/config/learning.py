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
    kernel_size: int = option(5, "periodic_cnn: odd convolution width", positive=True)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = option(100, "passes over the training states", positive=True)
    batch_size: int = option(256, "data states per optimiser step", positive=True)
    learning_rate: float = option(1e-3, "AdamW learning rate", positive=True)
    rollout_steps: int = option(2, "k: solver steps unrolled from each data state in the loss", positive=True)
    regularizer: str = option("none", "directional-derivative Jacobian regularizer", choices=("none", "jvp", "fd"))
    regularizer_weight: float = option(1e-3, "lambda multiplying the regularizer", nonnegative=True)
    seed: int = option(0, "seed of weights, batches and probes", nonnegative=True)
