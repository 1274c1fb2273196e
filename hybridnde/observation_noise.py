"""Observation noise on training data: simulated truth made to look like measurements.

Ko et al. (2023) train on noisy observations: 5% noise for Lotka-Volterra (a fraction of each
state's mean over the trajectory) and noise 0.25 for Lorenz-63 (a standard deviation). The noise of a
member depends only on ``(seed, member index)``, so a member gets the same noise in every split
(a single-member case validates on its training member) and on every device. Its stream is tagged
apart from the member's initial-condition stream (``initial_conditions.member_rng``, which draws from
``[seed, member]``): with the default seeds (both 0) they would otherwise be one stream, and the
first sample's noise would be a multiple of a random initial state's deviation from its mean.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from .data import TrainingData

__all__ = ["NOISE_SCALES", "noisy_trajectories", "add_observation_noise"]

NOISE_SCALES = ("absolute", "mean")
NOISE_STREAM = 1  # the third seed word: no initial-condition stream has one


def noisy_trajectories(trajectories: Tensor, members: tuple[int, ...] | list[int], *, level: float,
                       scale: str = "absolute", seed: int = 0) -> Tensor:
    """``trajectories + noise``: Gaussian, standard deviation ``level`` (``scale="absolute"``) or
    ``level * mean_t |u|`` per member and state component (``scale="mean"``).

    ``trajectories: (member, time, *state)``; ``members`` are their global member indices (the noise
    streams). Non-finite samples stay as they are.
    """
    if scale not in NOISE_SCALES:
        raise ValueError(f"scale={scale!r}; choose one of {NOISE_SCALES}")
    if not 0 <= level < float("inf"):  # NaN too: it would turn every sample into NaN
        raise ValueError(f"level={level} must be a finite number, zero or positive")
    if len(members) != trajectories.shape[0]:
        raise ValueError(f"{len(members)} member indices for {trajectories.shape[0]} trajectories")
    values = trajectories.detach().cpu().numpy().astype(np.float64)
    out = values.copy()
    for row, member in enumerate(members):
        rng = np.random.default_rng([int(seed), int(member), NOISE_STREAM])
        draw = rng.standard_normal(values[row].shape)
        if scale == "mean":
            finite = np.where(np.isfinite(values[row]), np.abs(values[row]), np.nan)
            std = level * np.nanmean(finite, axis=0)  # (*state): one per component
        else:
            std = level
        out[row] = values[row] + std * draw
    return torch.as_tensor(out, dtype=trajectories.dtype, device=trajectories.device)


def add_observation_noise(data: TrainingData, *, level: float, scale: str = "absolute", seed: int = 0) -> TrainingData:
    """``data`` with noisy training and validation trajectories (see ``noisy_trajectories``)."""
    if level == 0:
        return data
    return dataclasses.replace(
        data,
        train=noisy_trajectories(data.train, data.train_members, level=level, scale=scale, seed=seed),
        validation=noisy_trajectories(data.validation, data.validation_members, level=level, scale=scale, seed=seed))
