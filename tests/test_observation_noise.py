"""Observation noise: seeded per member, absolute or relative to each component's mean."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridnde.observation_noise import noisy_trajectories


def test_noise_is_seeded_per_member_and_has_the_requested_size():
    clean = torch.ones(3, 4000, 2, dtype=torch.float64) * torch.tensor([2.0, 10.0], dtype=torch.float64)
    noisy = noisy_trajectories(clean, [0, 1, 2], level=0.1, scale="absolute", seed=5)
    assert float((noisy - clean).std()) == pytest.approx(0.1, rel=0.03)
    again = noisy_trajectories(clean[1:2], [1], level=0.1, scale="absolute", seed=5)
    torch.testing.assert_close(again[0], noisy[1])  # member 1's noise does not depend on the others
    other = noisy_trajectories(clean, [0, 1, 2], level=0.1, scale="absolute", seed=6)
    assert not torch.equal(other, noisy)
    relative = noisy_trajectories(clean, [0, 1, 2], level=0.05, scale="mean", seed=5) - clean
    stds = relative.reshape(-1, 2).std(0).numpy()
    np.testing.assert_allclose(stds, [0.1, 0.5], rtol=0.03)  # 5% of each component's mean


def test_non_finite_samples_stay_and_bad_arguments_are_rejected():
    clean = torch.ones(1, 10, 2, dtype=torch.float64)
    clean[0, 5] = float("nan")
    noisy = noisy_trajectories(clean, [0], level=0.1, scale="mean")
    assert torch.isnan(noisy[0, 5]).all() and torch.isfinite(noisy[0, :5]).all()
    with pytest.raises(ValueError, match="scale"):
        noisy_trajectories(clean, [0], level=0.1, scale="relative")
    with pytest.raises(ValueError, match="member indices"):
        noisy_trajectories(clean, [0, 1], level=0.1)
