"""Observation noise: seeded per member, absolute or relative to each component's mean."""
from __future__ import annotations

from pathlib import Path

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
    for level in (-0.1, float("nan"), float("inf")):  # NaN and inf would make every sample NaN or inf
        with pytest.raises(ValueError, match=f"level={level} must be a finite number, zero or positive"):
            noisy_trajectories(clean, [0], level=level)


def test_the_mean_scale_is_the_mean_absolute_value():
    """scale = "mean": sigma = level * mean |u|; for sin, mean |u| = 2 / pi."""
    t = np.linspace(0, 200 * np.pi, 40000)
    clean = torch.tensor(np.sin(t))[None, :, None]
    noisy = noisy_trajectories(clean, [0], level=0.1, scale="mean", seed=3)
    assert float((noisy - clean).std()) == pytest.approx(0.1 * 2 / np.pi, rel=0.03)


def test_training_data_noise_follows_global_members_in_both_splits():
    """Each member's noise is drawn from its own stream (its global index), so a member gets the same
    noise whichever split holds it; validation rows are not renumbered from 0."""
    import dataclasses as dc

    from hybridnde.data import TrainingData
    from hybridnde.observation_noise import add_observation_noise

    clean = torch.sin(torch.linspace(0, 6, 30, dtype=torch.float64))[None, :, None].repeat(5, 1, 2)
    data = TrainingData(train=clean[:4], validation=clean[4:], train_members=(0, 1, 2, 3), validation_members=(4,),
                        sample_interval=0.2, path="memory", checksum="none")
    noisy = add_observation_noise(data, level=0.05, seed=7)
    torch.testing.assert_close(noisy.validation, noisy_trajectories(clean[4:], [4], level=0.05, seed=7))
    torch.testing.assert_close(noisy.train, noisy_trajectories(clean[:4], [0, 1, 2, 3], level=0.05, seed=7))
    assert not torch.equal(noisy.validation, noisy.train[:1])  # member 4 is not member 0
    assert add_observation_noise(dc.replace(data), level=0.0) == data
    relative = add_observation_noise(data, level=0.05, scale="mean", seed=7)  # the scale reaches both splits
    torch.testing.assert_close(relative.train, noisy_trajectories(clean[:4], [0, 1, 2, 3], level=0.05, scale="mean",
                                                                  seed=7))
    torch.testing.assert_close(relative.validation, noisy_trajectories(clean[4:], [4], level=0.05, scale="mean", seed=7))


def test_noise_streams_are_uncorrelated_across_seeds_members_and_components():
    """Every (seed, member) stream and every component is independent noise: sample correlations of n
    standard normal pairs scatter with standard deviation 1 / sqrt(n), so none may exceed 5 / sqrt(n)
    (neighbouring seeds and members included: seed + member would make (s, m + 1) repeat (s + 1, m))."""
    n = 4000
    clean = torch.zeros(4, n, 2, dtype=torch.float64)
    streams = []
    for seed in (10, 11, 12):
        noise = noisy_trajectories(clean, [0, 1, 2, 3], level=1.0, seed=seed).numpy()
        streams += [noise[member, :, component] for member in range(4) for component in range(2)]
    correlation = np.corrcoef(np.stack(streams))
    off_diagonal = np.abs(correlation[~np.eye(len(streams), dtype=bool)])
    assert off_diagonal.max() < 5 / np.sqrt(n), off_diagonal.max()


def test_absolute_noise_is_additive_and_does_not_depend_on_the_state():
    """With the same seed and member, noisy(u) - u is the same draw whatever u is (to float64 rounding of
    values ~100), and a float32 trajectory stays float32."""
    zero = torch.zeros(2, 50, 3, dtype=torch.float64)
    state = 100 * torch.sin(torch.arange(300, dtype=torch.float64)).reshape(2, 50, 3)
    draw = noisy_trajectories(zero, [3, 8], level=0.01, seed=2)
    torch.testing.assert_close(noisy_trajectories(state, [3, 8], level=0.01, seed=2) - state, draw, rtol=0, atol=1e-12)
    single = noisy_trajectories(state.float(), [3, 8], level=0.01, seed=2)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, (state + draw).float())


def test_infinite_samples_stay_and_do_not_enter_the_mean_scale():
    """A member that blew up to +-inf at two samples: those stay infinite, the rest get noise of
    level * mean |u| over the finite samples (2 and 10 here)."""
    clean = torch.ones(1, 8000, 2, dtype=torch.float64) * torch.tensor([2.0, 10.0], dtype=torch.float64)
    clean[0, 100, 0], clean[0, 200, 1] = float("inf"), -float("inf")
    noisy = noisy_trajectories(clean, [0], level=0.05, scale="mean", seed=1)
    assert noisy[0, 100, 0] == float("inf") and noisy[0, 200, 1] == -float("inf")
    finite = torch.isfinite(clean[0])
    assert int(torch.isfinite(noisy[0]).sum()) == int(finite.sum())
    stds = [float((noisy[0, :, k] - clean[0, :, k])[finite[:, k]].std()) for k in range(2)]
    np.testing.assert_allclose(stds, [0.1, 0.5], rtol=0.04)  # a sample std scatters by 1 / sqrt(2 n) = 0.8%: 5 sigma


def test_noise_is_independent_of_a_drawn_initial_state_with_the_default_seeds():
    """With training.seed = initial_condition.seed (both 0 by default) the noise stream was the
    initial-condition stream: the first sample's noise was level/std times the state's deviation."""
    from hybridnde.config import load_case
    from hybridnde.initial_conditions import draw_initial_conditions
    from hybridnde.systems import build_solver

    cases = Path(__file__).resolve().parents[1] / "cases"
    case = load_case(cases / "lorenz63.toml", overrides=['initial_condition.distribution="gaussian"',
                                                          "initial_condition.std=[1.0]", "initial_condition.seed=0"])
    members = range(400)
    states = draw_initial_conditions(case.initial_condition, build_solver(case.system, case.time), members)
    deviation = (states - torch.tensor(case.initial_condition.value, dtype=torch.float64)).numpy()
    noise = (noisy_trajectories(states[:, None], list(members), level=0.25, seed=0)[:, 0] - states).numpy() / 0.25
    correlation = np.corrcoef(deviation.ravel(), noise.ravel())[0, 1]
    assert abs(correlation) < 0.15  # 1200 pairs: independent draws give |r| ~ 0.03; the shared stream gave 1
