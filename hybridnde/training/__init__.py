"""Training closures: one loop (``Trainer``) over a sum of named loss terms.

* ``terms``: the ``LossTerm`` protocol, the short-rollout trajectory loss (solver steps or torchdiffeq)
  and the directional-derivative regularizer terms;
* ``trainer``: AdamW, learning-rate schedule, clipping, early stopping, checkpoints, JSON-lines log;
* ``checkpoint``: atomic checkpoints with a configuration/data fingerprint;
* ``assembly``: what ``[training]`` asks for -- checks, window lengths, loss terms, validation score;
* ``build``: ``train_case`` -- case + truth file -> saved closure (``hybridnde train``).
"""
from .assembly import RolloutValidation, build_terms, reference_solver, window_lengths
from .build import TRAINING_SECTIONS, train_case, training_checksum
from .checkpoint import checkpoint_path, load_checkpoint, log_path, save_checkpoint
from .terms import (AdaptiveRolloutLoss, Batch, DirectionalDerivativeTerm, FiniteDifferenceTerm, LossTerm,
                    RolloutLoss, Weighted, ramp, rollout_mse)
from .trainer import Trainer, TrainingResult, learning_rate_at

__all__ = [
    "Trainer", "TrainingResult", "learning_rate_at", "LossTerm", "Batch", "Weighted", "RolloutLoss",
    "AdaptiveRolloutLoss", "DirectionalDerivativeTerm", "FiniteDifferenceTerm", "ramp", "rollout_mse",
    "train_case", "build_terms", "reference_solver", "RolloutValidation", "window_lengths", "TRAINING_SECTIONS", "training_checksum",
    "checkpoint_path", "log_path", "save_checkpoint", "load_checkpoint",
]
