"""The evaluation metrics on closed-form cases (exponents of known growth, drifts of known means, KL
against scipy on the documented bins, units and constant entries in the resting test, the 2/3 cut at N
divisible by 6): what a mutation audit (helper-100) found the older tests in test_metrics.py let pass."""
import math

import numpy as np
import pytest
import torch

from hybridnde.metrics import (histogram_kl_divergence, leading_lyapunov_exponent, mean_drift, quantiles,
                               resting_members, spectral_distance, valid_prediction_time)
from solvers import ClosureOnly


def test_kl_counts_predictions_outside_the_truths_range():
    """All predicted mass beyond the truth's range: every truth bin is empty in the model, so the divergence
    is about ln(1 / epsilon) ~ 23 nats (scipy's entropy on the documented bins, overflow bin included)."""
    from scipy.stats import entropy

    rng = np.random.default_rng(0)
    truth = rng.standard_normal(100_000)
    edges = np.linspace(truth.min(), truth.max(), 51)

    def bins(sample):
        inside = np.histogram(sample, bins=edges)[0]
        return np.append(inside, [(sample < edges[0]).sum(), (sample > edges[-1]).sum()]) / sample.size + 1e-10

    for predicted in (truth + 100.0, np.where(np.arange(truth.size) % 10 == 0, 1e3, truth)):
        expected = entropy(bins(truth), bins(predicted))
        assert histogram_kl_divergence(predicted, truth) == pytest.approx(expected, rel=1e-9)
    assert histogram_kl_divergence(truth + 100.0, truth) > 15.0  # ~ ln(1/epsilon) - H(truth bins)


def test_the_exponent_is_the_mean_over_members_and_its_standard_error():
    """u' = r_m u with a different rate per member: every RK4 step multiplies a separation by g(r_m dt), so
    member m's exponent is log(g) / dt, the estimate their mean, and standard_error std(ddof=1)/sqrt(M)."""
    dt = 0.05
    rates = torch.tensor([0.1, 0.2, 0.9], dtype=torch.float64)
    both = torch.cat([rates, rates])[:, None]  # reference trajectories and companions share the rate
    solver = ClosureOnly(state_shape=(2,), dt=dt, closure=lambda t, u: both * u)
    u0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.7, -0.7]], dtype=torch.float64)
    estimate = leading_lyapunov_exponent(solver, u0, duration=2.0, renormalise_every=2)
    h = rates.numpy() * dt
    exact = np.log(1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24) / dt
    np.testing.assert_allclose(estimate.per_member, exact, rtol=1e-7)
    assert estimate.exponent == pytest.approx(exact.mean(), rel=1e-7)  # the mean, not the median (0.2)
    assert estimate.standard_error == pytest.approx(exact.std(ddof=1) / math.sqrt(3), rel=1e-6)


def test_a_time_dependent_closure_is_stepped_at_the_right_times():
    """u' = t u: separations grow by exp(int a dt); over [t0, t0 + 1] the exponent is t0 + 1/2."""
    solver = ClosureOnly(state_shape=(1,), dt=0.01, closure=lambda t, u: t * u)
    u0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    for t0 in (0.0, 3.0):
        estimate = leading_lyapunov_exponent(solver, u0, duration=1.0, t0=t0)
        np.testing.assert_allclose(estimate.per_member, t0 + 0.5, atol=1e-8)


def test_the_dealiasing_cut_is_below_two_thirds_of_nyquist():
    """N = 96: N/2 = 48, the spectral solver keeps modes m < 32 (3 m < N); a model emptying modes >= 32
    is dealiased, one emptying modes >= 31 fails."""
    slow = np.exp(-np.arange(49.0) / 10)
    assert spectral_distance(np.where(np.arange(49) >= 32, 0.0, slow), slow) == 0.0
    assert spectral_distance(np.where(np.arange(49) >= 31, 0.0, slow), slow) == math.inf


def test_the_median_is_finite_when_only_members_above_it_diverged():
    assert quantiles(np.array([1.0, 2.0, np.inf]), [50])[0] == 2.0
    assert quantiles(np.array([[1.0, 5.0], [2.0, np.inf], [np.inf, np.inf]]), [50], axis=0).tolist() == [[2.0, np.inf]]


def test_mean_drift_is_the_largest_change_of_the_spatial_mean_until_blowup():
    """u = cos(2 pi x / L) + a_m sin(t): the mean is a_m sin(t), its largest change from t = 0 is |a_m|
    (reached at t = pi / 2), divided by the scale; a member non-finite after t[64] counts until then."""
    t = np.linspace(0, 2 * np.pi, 401)  # t[100] = pi / 2
    x = np.arange(32) / 32
    a = np.array([0.2, -0.6, 0.4])
    u = np.cos(2 * np.pi * x)[None, None, :] + a[:, None, None] * np.sin(t)[None, :, None]
    u[2, 65:] = np.nan  # blew up after t[64] ~ 1.005
    drift = mean_drift(u, 2.0)
    np.testing.assert_allclose(drift, [0.1, 0.3, 0.2 * math.sin(t[64])], rtol=1e-9)
    u[1, 0, 3] = np.nan  # no finite start: undefined
    assert np.isnan(mean_drift(u, 2.0)[1])


def test_resting_members_do_not_depend_on_the_units_of_the_state():
    t = np.linspace(0, 20, 201)
    truth = np.stack([np.stack([np.cos(t + k), np.sin(t + k)], axis=-1) for k in range(2)])
    predicted = truth.copy()
    predicted[0] = [0.3, -0.2]
    predicted[1, 150:] = predicted[1, 150] + 1e-6 * np.sin(t[150:])[:, None]
    settling = truth.copy()
    settling[:, 150:] = settling[:, 150:151] + 1e-12 * np.sin(t[150:])[None, :, None]
    for unit in (1e-6, 1.0, 1e6):
        assert resting_members(unit * predicted, unit * truth).tolist() == [True, True]
        assert not resting_members(unit * predicted, unit * settling).any()


def test_a_resting_member_is_found_when_one_state_entry_of_the_truth_is_constant():
    """Motion is the largest temporal std over entries: one still entry (a conserved coordinate) must not
    make the truth look at rest."""
    t = np.linspace(0, 20, 201)
    truth = np.stack([np.cos(t), np.sin(t), np.ones_like(t)], axis=-1)[None]
    predicted = np.broadcast_to(np.array([0.3, -0.2, 1.0]), truth.shape).copy()
    assert resting_members(predicted, truth).tolist() == [True]


def test_the_measured_window_starts_after_the_rounded_transient():
    """u' = t u, dt = 0.1, renormalising every 3 steps: transient 0.5 rounds to 6 steps, so the measured 12
    steps span [0.6, 1.8] and the exponent is their mid-time 1.2 (a window starting at 0.3 gives 0.9)."""
    solver = ClosureOnly(state_shape=(1,), dt=0.1, closure=lambda t, u: t * u)
    estimate = leading_lyapunov_exponent(solver, torch.tensor([[1.0]], dtype=torch.float64), duration=1.2,
                                         transient=0.5, renormalise_every=3)
    assert estimate.per_member[0] == pytest.approx(1.2, abs=1e-4)


def test_valid_prediction_time_refuses_times_of_another_length():
    with pytest.raises(ValueError, match="must be"):
        valid_prediction_time(np.full((2, 5), 0.1), np.arange(6.0))
