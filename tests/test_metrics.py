"""Metrics on synthetic inputs with known answers (hybridnde.metrics)."""
import math

import numpy as np
import pytest
import torch

from hybridnde.metrics import (cost_from_attributes, energy_spectrum, error_growth, histogram_kl_divergence,
                               invariant_drift, json_ready, leading_lyapunov_exponent, normalised_error, quantiles,
                               reference_scale, spectral_distance, stable_members, summarise, valid_prediction_time,
                               wavenumbers)
from solvers import ClosureOnly, KuramotoSivashinskySpectral, Lorenz63, RigidBody, TwoBody


# -- normalised error and valid prediction time ---------------------------------------------------
def diverging_pair(rates, times, *, size=3):
    """Truth of constant norm 2 and a prediction whose normalised error is exactly 0.05 exp(r t)."""
    truth = np.broadcast_to(np.full(size, 2.0 / math.sqrt(size)), (len(rates), times.size, size)).copy()
    direction = np.zeros(size)
    direction[0] = 1.0
    growth = 0.05 * np.exp(np.outer(rates, times))  # (member, time)
    return truth + 2.0 * growth[..., None] * direction, truth, growth


def test_normalised_error_is_the_error_norm_over_the_truths_rms_norm():
    times = np.linspace(0, 5, 11)
    predicted, truth, growth = diverging_pair([0.3, 0.7], times)
    assert reference_scale(truth) == pytest.approx(2.0)
    np.testing.assert_allclose(normalised_error(predicted, truth), growth, rtol=1e-12)
    np.testing.assert_allclose(normalised_error(np.zeros_like(truth), truth), 1.0)  # predicting 0: error 1


def test_the_anomaly_scale_is_the_states_standard_deviation_and_ignores_its_mean():
    """evaluate.error_scale = "anomaly": sqrt of the summed variances of the state entries (numpy's), the
    same for a shifted truth, where the rms scale grows with the shift; non-finite samples left out."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(4, 50, 3)) * np.array([1.0, 2.0, 0.5]) + np.array([0.0, 0.0, 24.0])
    expected = math.sqrt(truth.reshape(-1, 3).var(axis=0).sum())
    assert reference_scale(truth, kind="anomaly") == pytest.approx(expected, rel=1e-12)
    assert reference_scale(truth + 100.0, kind="anomaly") == pytest.approx(expected, rel=1e-9)
    assert reference_scale(truth) > 10 * expected  # the mean z = 24 dominates the plain norm
    with_nan = truth.copy()
    with_nan[0, 0, 1] = np.nan
    assert reference_scale(with_nan, kind="anomaly") == pytest.approx(
        math.sqrt(truth.reshape(-1, 3)[1:].var(axis=0).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="all equal"):
        reference_scale(np.ones((2, 3, 3)), kind="anomaly")
    with pytest.raises(ValueError, match="choose one of"):
        reference_scale(truth, kind="std")


def test_scales_and_spectra_of_huge_finite_states_neither_overflow_nor_warn():
    """A truth of size 1e200 has a representable scale (its squares are not): both scales are 1e200
    times those of the truth divided by 1e200, with no overflow warning; a norm beyond the float range
    is refused, not an infinite scale that makes every error 0. A finite member of size 1e200 has an
    infinite energy spectrum, which the spectral distance calls a failure."""
    import warnings
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(3, 20, 4)) + np.array([0.0, 0.0, 0.0, 5.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("rms", "anomaly"):
            assert reference_scale(1e200 * truth, kind=kind) == pytest.approx(
                1e200 * reference_scale(truth, kind=kind), rel=1e-14)
        huge_member = rng.normal(size=(2, 5, 16))
        huge_member[1] *= 1e200
        spectrum = energy_spectrum(huge_member)
        assert np.isinf(spectrum[1:]).all()
        assert spectral_distance(spectrum, energy_spectrum(huge_member[:1])) == math.inf
    with pytest.raises(ValueError, match="exceeds the float range"):
        reference_scale(np.full((1, 2, 4), 1e308))


def test_valid_prediction_time_at_a_known_crossing():
    times = np.arange(0, 1001) * 0.01  # t in [0, 10]
    rates = np.array([0.5, 0.8, 1.6, 0.1])
    predicted, truth, _ = diverging_pair(rates, times)
    error = normalised_error(predicted, truth)
    for threshold in (0.5, 0.25):
        vpt, reached = valid_prediction_time(error, times, threshold=threshold)
        expected = np.log(threshold / 0.05) / rates  # 0.05 exp(r t) = threshold
        expected[3] = 10.0  # the slow member never crosses: the horizon, censored
        np.testing.assert_allclose(vpt, expected, atol=2e-4)  # linear interpolation between samples
        assert list(reached) == [False, False, False, True]
    # times need not start at 0: VPT is measured from the first time
    shifted, _ = valid_prediction_time(error, times + 7.0, threshold=0.5)
    np.testing.assert_allclose(shifted, valid_prediction_time(error, times, threshold=0.5)[0], atol=1e-9)


def test_where_the_truth_ends_the_valid_time_ends_too():
    """A member whose truth is undefined (NaN) from t = 5 on got the whole horizon and counted as valid to
    it; one with no defined truth at all got (horizon, True)."""
    times = np.arange(0, 11) * 1.0
    error = np.full((3, 11), 0.1)
    error[0, 6:] = np.nan  # truth undefined after t = 5: censored there
    error[1, :] = np.nan   # never defined
    vpt, reached = valid_prediction_time(error, times, threshold=0.5)
    assert vpt[0] == 5.0 and np.isnan(vpt[1]) and vpt[2] == 10.0
    assert reached.tolist() == [False, False, True]
    # diverged right after a sample whose truth was undefined: valid until the last one known (it was
    # credited with the undefined one)
    vpt, _ = valid_prediction_time(np.array([[0.1, np.nan, np.inf]]), np.array([0.0, 1.0, 2.0]), threshold=0.5)
    assert vpt.tolist() == [0.0]
    # crossing after an undefined sample: interpolated from the last defined one across the gap (it was
    # the first sample known to be over, t = 2, crediting the gap), 0 with nothing known valid before
    gap = np.array([[0.1, np.nan, 0.9], [np.nan, np.nan, 0.9]])
    vpt, _ = valid_prediction_time(gap, np.array([0.0, 1.0, 2.0]), threshold=0.5)
    assert vpt[0] == pytest.approx(1.0) and vpt[1] == 0.0
    vpt, _ = valid_prediction_time(np.array([[0.1, np.nan, np.nan, 0.3, 0.7]]), np.arange(5.0), threshold=0.5)
    assert vpt[0] == pytest.approx(3.5)  # k - 1 defined: the usual interpolation
    # a blow-up before the first compared time: 0, not negative
    vpt, _ = valid_prediction_time(np.full((1, 3), np.inf), np.arange(3.0) + 5.0, blowup_time=np.array([2.0]))
    assert vpt.tolist() == [0.0]


def test_a_blown_up_member_is_valid_at_most_until_its_blowup():
    times = np.arange(0, 101) * 0.1
    predicted, truth, _ = diverging_pair([0.1, 0.1, 2.0, 2.0], times)
    predicted[0, 40:] = np.nan  # blew up at t = 4, long before its crossing at ~23
    predicted[2, 13:] = np.inf  # crosses 0.5 at ln(10)/2 = 1.151 between finite samples, blows up at 1.25
    predicted[3, 12:] = np.inf  # the same orbit, but non-finite from the first sample above the threshold
    blowup_time = np.array([4.0, np.nan, 1.25, 1.15])
    error = normalised_error(predicted, truth)
    assert np.isinf(error[0, 40:]).all()
    vpt, reached = valid_prediction_time(error, times, blowup_time=blowup_time)
    assert vpt[0] == pytest.approx(3.9)  # the last sample at which it was still valid
    assert vpt[1] == pytest.approx(10.0) and reached[1]
    assert vpt[2] == pytest.approx(math.log(10) / 2.0, abs=5e-3) and vpt[2] <= 1.25
    assert vpt[3] == pytest.approx(1.1)  # diverged between samples: valid until the last finite one
    assert not reached[[0, 2, 3]].any()
    # the file's blow-up time caps the VPT even when the saved samples are sparse
    capped, _ = valid_prediction_time(error, times, blowup_time=np.array([2.5, np.nan, 1.0, np.nan]))
    assert capped[0] == pytest.approx(2.5) and capped[2] == pytest.approx(1.0)
    # on a clock that starts at 7 (a rollout from a restart) the blow-up times are 7 later and the
    # VPTs, measured from the first time, are the same
    for blowups, expected in ((blowup_time, vpt), (np.array([2.5, np.nan, 1.0, np.nan]), capped)):
        late, _ = valid_prediction_time(error, times + 7.0, blowup_time=blowups + 7.0)
        np.testing.assert_allclose(late, expected, atol=1e-9)
    assert valid_prediction_time(np.full((1, 3), 0.9), np.arange(3.0))[0][0] == 0.0
    # the file's blow-up flag also clears ``reached`` where the saved errors stayed low
    vpt, reached = valid_prediction_time(np.full((1, 5), 0.1), np.arange(5.0), blowup_time=np.array([4.0]))
    assert vpt.tolist() == [4.0] and reached.tolist() == [False]


def test_error_growth_percentiles_match_numpy_and_rank_divergence_last():
    rng = np.random.default_rng(0)
    error = rng.lognormal(size=(9, 20))
    np.testing.assert_allclose(error_growth(error), np.percentile(error, [16, 50, 84], axis=0), rtol=1e-12)
    error[:5, 10:] = np.inf  # five of nine members diverge: the median is infinite from then on
    growth = error_growth(error)
    assert np.isinf(growth[1, 10:]).all() and np.isfinite(growth[1, :10]).all()
    assert quantiles(np.array([1.0, 2.0, 3.0, np.inf]), [50])[0] == 2.5
    assert np.isinf(quantiles(np.array([1.0, np.inf, np.inf]), [50, 84])).all()


def test_error_growth_leaves_out_members_whose_truth_is_undefined():
    """NaN (the reference member blew up) is no diverged prediction: ranked as +inf, it made the median
    infinite with every prediction finite. Left out per time, against numpy over the defined members."""
    rng = np.random.default_rng(1)
    error = rng.lognormal(size=(9, 20))
    error[:5, 12:] = np.nan  # five of nine truths undefined from time 12
    error[6, 15:] = np.inf   # one prediction diverged
    error[:, 19] = np.nan    # no truth at all at the last time
    growth = error_growth(error)
    for time in range(19):
        column = error[:, time]
        np.testing.assert_allclose(growth[:, time], quantiles(column[~np.isnan(column)], [16, 50, 84]), rtol=1e-12)
    np.testing.assert_allclose(growth[:, :12], np.percentile(error[:, :12], [16, 50, 84], axis=0), rtol=1e-12)
    assert np.isfinite(growth[1, 12:15]).all() and np.isnan(growth[:, 19]).all()
    assert np.isinf(growth[2, 15:19]).all()  # the diverged one of four defined members tops the 84th percentile


def test_stable_members_need_status_ok_finite_states_and_no_blowup():
    u = np.ones((4, 5, 2))
    u[1, 3] = np.nan
    stable = stable_members(u, status=np.array([0, 0, 1, 0]), blowup_time=np.array([np.nan, 1.0, np.nan, 2.0]))
    assert list(stable) == [True, False, False, False]
    assert stable_members(u).tolist() == [True, False, True, True]


def test_summary_and_json_ready():
    summary = summarise([1.0, 2.0, 3.0, np.nan, 4.0], per_member=True)
    assert summary["median"] == 2.5 and summary["count"] == 4 and summary["p16"] == pytest.approx(1.48)
    assert summary["per_member"][3] != summary["per_member"][3]  # NaN kept per member
    ready = json_ready({"a": np.float64(np.inf), "b": np.arange(2), "c": [np.nan, np.int64(3)], "d": np.bool_(True)})
    assert ready == {"a": None, "b": [0, 1], "c": [None, 3], "d": True}


def test_cost_figures_from_attributes():
    attrs = {"nfe": np.int64(1234), "nfe_backward": 56.0, "wall_seconds": 1.5, "title": "x", "dt": 0.1}
    assert cost_from_attributes(attrs) == {"nfe": 1234, "nfe_backward": 56, "wall_seconds": 1.5}


# -- invariants -----------------------------------------------------------------------------------
def two_body_orbits(closure=None, steps=800):
    solver = TwoBody(dt=0.01, closure=closure)
    eccentricity = torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64)
    u0 = torch.stack([1 - eccentricity, 0 * eccentricity, 0 * eccentricity,
                      torch.sqrt((1 + eccentricity) / (1 - eccentricity))], dim=-1)
    with torch.no_grad():
        u = solver.rollout(u0, steps, save_every=10)
    return {name: value.numpy() for name, value in TwoBody().invariants(u).items()}


def test_invariant_drift_of_rk4_two_body_is_tiny_and_of_a_damped_one_large():
    exact = invariant_drift(two_body_orbits())
    assert set(exact) == {"energy", "angular_momentum"}
    assert max(exact["energy"].max(), exact["angular_momentum"].max()) < 1e-5  # RK4, dt = 0.01: O(dt^4) per orbit
    damped = invariant_drift(two_body_orbits(closure=lambda t, u: torch.cat([0 * u[:, :2], -0.05 * u[:, 2:]], -1)))
    assert damped["energy"].min() > 1e-2 and damped["angular_momentum"].min() > 1e-2


def test_invariant_drift_is_the_max_relative_deviation():
    t = np.linspace(0, 10, 1001)
    values = np.stack([3.0 * (1 + 0.1 * np.sin(t)), -2.0 + 0.0 * t, 0.5 * t])  # rel. drift 0.1, 0, abs 5 at I0 = 0
    values[1, 500:] = np.nan  # a diverged member has no drift value (the stable fraction counts it)
    drift = invariant_drift({"I": values})["I"]
    assert drift[0] == pytest.approx(0.1, rel=1e-4) and np.isnan(drift[1]) and drift[2] == pytest.approx(5.0)
    solver = RigidBody(dt=0.01)
    u0 = torch.tensor([[math.cos(1.0), 0.0, math.sin(1.0)]], dtype=torch.float64)
    with torch.no_grad():
        u = solver.rollout(u0, 1500, save_every=15)
    rigid = invariant_drift({k: v.numpy() for k, v in solver.invariants(u).items()})
    assert rigid["casimir"].max() < 1e-7 and rigid["energy"].max() < 1e-7


# -- spectra --------------------------------------------------------------------------------------
def test_energy_spectrum_of_a_known_field_and_parseval():
    length, n = 22.0, 64
    x = np.arange(n) * length / n
    t = np.linspace(0, 1, 7)[:, None]
    u = 0.3 + 1.5 * np.cos(2 * np.pi * 3 * x / length + 4 * t) + 0.4 * np.sin(2 * np.pi * 5 * x / length - t)
    spectrum = energy_spectrum(u[None])  # (member, time, x)
    expected = np.zeros(n // 2 + 1)
    expected[[0, 3, 5]] = [0.09, 1.5**2 / 2, 0.4**2 / 2]
    np.testing.assert_allclose(spectrum, expected, atol=1e-12)
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((3, 4, n))
    assert energy_spectrum(noise).sum() == pytest.approx(np.mean(noise**2))  # Parseval, Nyquist included
    np.testing.assert_allclose(wavenumbers(n, length)[3], 2 * np.pi * 3 / length)
    noise[0, 2, 5] = np.nan  # a non-finite state is left out of the average
    assert np.isfinite(energy_spectrum(noise)).all()


def test_spectral_distance_is_the_mean_log10_ratio_over_resolved_modes():
    rng = np.random.default_rng(2)
    reference = np.exp(-np.arange(33.0)) + 0 * rng.random(33)
    assert spectral_distance(reference, reference) == 0.0
    assert spectral_distance(10 * reference, reference) == pytest.approx(1.0)
    assert spectral_distance(reference / 100, reference) == pytest.approx(2.0)
    coarse = reference[:17].copy()  # a 32-point model compared on its modes 1..15
    coarse[1:16] *= 10 ** np.where(np.arange(1, 16) % 2, 0.5, -0.5)
    assert spectral_distance(coarse, reference) == pytest.approx(0.5)
    reference[20:] = 1e-40  # dealiased modes (below the relative floor) do not count ...
    assert spectral_distance(reference * np.where(np.arange(33) >= 20, 1e6, 1.0), reference) == 0.0
    piled_up = reference.copy()
    piled_up[25] = 1e-2  # ... unless the model piles energy into one: then its ratio counts
    # counted: modes 1..10 (e^-m above 1e-4 e^-1) and the piled-up mode 25, 38 decades off
    assert spectral_distance(piled_up, reference) == pytest.approx(38.0 / 11)
    assert spectral_distance(piled_up, reference, relative_floor=1e-6) == pytest.approx(38.0 / 15)
    # modes above the model grid's 2/3 cut (m > 21 of 32) that it leaves empty (dealiased) are left out ...
    slow = np.exp(-np.arange(33.0) / 10)  # energetic on every mode
    dealiased = np.where(np.arange(33) > 21, 1e-33, 10 * slow)
    assert spectral_distance(dealiased, slow) == pytest.approx(1.0)
    # ... but modes below the cut that it empties are a failure, not dealiasing: at the top of its band
    # (a model cut off at mode 5 scored a perfect 5e-17) ...
    assert spectral_distance(np.where(np.arange(33) >= 5, 0.0, slow), slow) == math.inf
    # ... and inside it (excused too: ~1e-17)
    holed = 10 * reference.copy()
    holed[3] = 0.0
    assert spectral_distance(holed, reference) == math.inf
    holed[3] = 1e-30 * reference[3]
    # modes 1..12 counted (10 e^-m above the floor), 11 of them a decade off, mode 3 thirty
    assert spectral_distance(holed, reference) == pytest.approx((11 * 1.0 + 30.0) / 12)
    # the cut is 2/3 of the model grid's Nyquist, not 1/2 (modes 18..21 of 32 emptied fail) nor the truth's
    # (a 32-point model emptying its modes above 10 of 16 is dealiased, not failing)
    assert spectral_distance(np.where(np.arange(33) >= 18, 0.0, slow), slow) == math.inf
    coarse_dealiased = slow[:17].copy()
    coarse_dealiased[11:] = 0.0
    assert spectral_distance(coarse_dealiased, slow) == pytest.approx(0.0)
    # ... and a model with no energy at all, or non-finite energy, is infinitely far
    assert spectral_distance(np.zeros(33), reference) == math.inf
    assert spectral_distance(np.where(np.arange(33) == 4, np.nan, reference), reference) == math.inf


# -- attractor statistics -------------------------------------------------------------------------
def test_histogram_kl_divergence_zero_for_identical_and_gaussian_value_for_shifted():
    rng = np.random.default_rng(3)
    truth = rng.standard_normal(400_000)
    assert histogram_kl_divergence(truth, truth.copy()) == 0.0
    shifted = rng.standard_normal(400_000) + 0.5  # KL(N(0,1) || N(0.5,1)) = 0.5^2 / 2
    assert histogram_kl_divergence(shifted, truth) == pytest.approx(0.125, abs=0.01)
    same_law = rng.standard_normal(400_000)
    assert histogram_kl_divergence(same_law, truth) < 2e-3
    # one far-off prediction must not stretch the bins until the truth fits in one
    with_outlier = np.append(shifted, 1e12)
    assert histogram_kl_divergence(with_outlier, truth) == pytest.approx(0.125, abs=0.01)
    assert np.isnan(histogram_kl_divergence(np.full(3, np.nan), truth))


def test_histogram_kl_divergence_is_truth_relative_to_prediction_as_scipy_computes_it():
    """D_KL(truth || prediction), not the reverse: for unequal widths the two differ (analytically
    0.807 nats for N(0, 1) || N(0, 0.5^2), 0.318 the other way); and the same number as scipy's
    ``entropy(pk, qk)`` on the documented bins (50 over the truth's range, under/overflow, epsilon)."""
    from scipy.stats import entropy

    rng = np.random.default_rng(7)
    truth, narrow = rng.standard_normal(400_000), 0.5 * rng.standard_normal(400_000)
    value = histogram_kl_divergence(narrow, truth)
    edges = np.linspace(truth.min(), truth.max(), 51)

    def bins(sample):
        inside = np.histogram(sample, bins=edges)[0]
        return np.append(inside, [(sample < edges[0]).sum(), (sample > edges[-1]).sum()]) / sample.size + 1e-10

    assert value == pytest.approx(entropy(bins(truth), bins(narrow)), rel=1e-12)
    assert 0.75 < value < 1.1  # 0.807 plus the truth's tails in bins the narrow sample rarely visits
    assert histogram_kl_divergence(truth, narrow) == pytest.approx(0.318, abs=0.05)  # the other direction


# -- Lyapunov exponents ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 2e-3), (torch.float32, 1e-2)])
def test_lyapunov_exponent_of_a_linear_closure_is_its_largest_eigenvalue(dtype, tolerance):
    rng = np.random.default_rng(4)
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    matrix = rotation @ np.diag([0.3, 0.1, -0.2, -1.0]) @ rotation.T
    weight = torch.as_tensor(matrix, dtype=dtype)
    solver = ClosureOnly(state_shape=(4,), dt=0.02, closure=lambda t, u: u @ weight.T, dtype=dtype)
    u0 = torch.as_tensor(rng.standard_normal((6, 4)), dtype=dtype)
    estimate = leading_lyapunov_exponent(solver, u0, duration=30.0, transient=10.0, renormalise_every=5)
    assert estimate.exponent == pytest.approx(0.3, abs=tolerance)
    assert estimate.diverged == 0 and estimate.per_member.shape == (6,)


@pytest.mark.parametrize("renormalise_every", [1, 3])
@pytest.mark.parametrize("transient", [0.0, 0.6])
def test_lyapunov_exponent_counts_exactly_the_measured_steps(renormalise_every, transient):
    """u' = 0.5 u: every RK4 step multiplies any separation by g = 1 + h + h^2/2 + h^3/6 + h^4/24
    (h = 0.5 dt), so the estimate is log(g) / dt to rounding, whatever the transient and the
    renormalisation interval -- one growth step counted too many or too few shifts it by 1/steps."""
    dt = 0.1
    solver = ClosureOnly(state_shape=(2,), dt=dt, closure=lambda t, u: 0.5 * u)
    u0 = torch.tensor([[1.0, -2.0], [0.3, 0.4]], dtype=torch.float64)
    estimate = leading_lyapunov_exponent(solver, u0, duration=1.2, transient=transient,
                                         renormalise_every=renormalise_every)
    h = 0.5 * dt
    exact = math.log(1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24) / dt
    assert estimate.duration == pytest.approx(1.2)
    np.testing.assert_allclose(estimate.per_member, exact, rtol=1e-7)


def test_lyapunov_exponent_of_lorenz63():
    rng = np.random.default_rng(5)
    u0 = torch.as_tensor(np.array([1.2, 2.1, 1.7]) + rng.standard_normal((16, 3)))
    estimate = leading_lyapunov_exponent(Lorenz63(dt=0.01), u0, duration=50.0, transient=10.0, renormalise_every=10)
    # 0.9056 (Sprott 2003); 16 members x 50 time units scatter by about +-0.03 around it
    assert 0.85 < estimate.exponent < 0.96
    assert estimate.standard_error < 0.02


def test_lyapunov_exponent_of_kuramoto_sivashinsky_l22():
    solver = KuramotoSivashinskySpectral(domain_length=22.0, n_points=64, dt=0.25)
    rng = np.random.default_rng(6)
    x = solver.x.numpy()
    modes = np.arange(1, 5)
    u0 = np.stack([(rng.standard_normal(4)[:, None] * np.cos(2 * np.pi * modes[:, None] * x / 22.0
                                                              + rng.uniform(0, 2 * np.pi, 4)[:, None])).sum(0)
                   for _ in range(8)])
    estimate = leading_lyapunov_exponent(solver, torch.as_tensor(u0), duration=500.0, transient=150.0,
                                         renormalise_every=4)
    assert 0.038 < estimate.exponent < 0.056  # NOTES.md: published 0.043-0.048, finite-time scatter


def test_lyapunov_estimate_marks_diverging_members_without_failing():
    def explosive(t, u):  # u' = u^3 blows up in finite time 1 / (2 u0^2) for u0 = 2: t = 0.125
        return u**3

    solver = ClosureOnly(state_shape=(1,), dt=0.01, closure=explosive)
    u0 = torch.tensor([[2.0], [0.0], [-0.01]], dtype=torch.float64)
    estimate = leading_lyapunov_exponent(solver, u0, duration=1.0)
    assert estimate.diverged == 1 and np.isnan(estimate.per_member[0])
    assert np.isfinite(estimate.per_member[1:]).all()
    # near u = 0 the flow is neutral: exponent ~ 3 u^2 ~ 0
    assert abs(estimate.per_member[1]) < 1e-3


def test_lyapunov_estimate_counts_members_beyond_the_blowup_bound_as_diverged():
    """u' = 0.5 u grows without bound: its "exponent" 0.5 is a growth rate, not an attractor's. Bounded by
    rollout.blowup_threshold (as a rollout marks members), a member that crosses it has diverged (the bare
    KS host's linear growth read 0.22, 0 diverged, at |u| = 2e63); one that stays below counts."""
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=lambda t, u: 0.5 * u)
    u0 = torch.tensor([[1.0, -2.0], [1e-9, 1e-9]], dtype=torch.float64)  # |u| reaches ~1.3e5 and ~1e-4
    unbounded = leading_lyapunov_exponent(solver, u0, duration=20.0)
    assert unbounded.diverged == 0 and unbounded.exponent == pytest.approx(0.5, rel=1e-3)
    bounded = leading_lyapunov_exponent(solver, u0, duration=20.0, blowup_threshold=1e3)
    assert bounded.diverged == 1 and np.isnan(bounded.per_member[0])
    assert bounded.per_member[1] == pytest.approx(0.5, rel=1e-3)
    everything = leading_lyapunov_exponent(solver, u0[:1], duration=20.0, blowup_threshold=1e3)
    assert everything.diverged == 1 and math.isnan(everything.exponent)


@pytest.mark.parametrize("n", [63, 64])
def test_parseval_holds_for_odd_and_even_grids(n):
    """The energy spectrum sums to the mean square; an odd grid has no Nyquist mode to halve."""
    noise = np.random.default_rng(1).standard_normal((3, 4, n))
    assert energy_spectrum(noise).sum() == pytest.approx(np.mean(noise**2), rel=1e-12)


def test_the_nyquist_mode_is_left_out_of_the_spectral_distance():
    """Spectra that differ only in the Nyquist mode (a grid artefact, not resolved physics) are equal."""
    reference = np.ones(33)
    model = reference.copy()
    model[32] = 10.0
    assert spectral_distance(model, reference) == 0.0


def test_resting_members_are_those_that_stop_while_the_truth_moves():
    from hybridnde.metrics import resting_members

    t = np.linspace(0, 20, 201)
    truth = np.stack([np.stack([np.cos(t + k), np.sin(t + k)], axis=-1) for k in range(3)])  # (3, 201, 2)
    predicted = truth.copy()
    predicted[0] = [0.3, -0.2]                                      # a fixed point: at rest
    predicted[1, 150:] = predicted[1, 150] + 1e-6 * np.sin(t[150:])[:, None]  # creeps: at rest (1e-6 << 1e-3)
    predicted[2, -1] = np.nan                                       # non-finite: not counted
    assert resting_members(predicted, truth).tolist() == [True, True, False]
    assert not resting_members(truth, truth).any()
    assert not resting_members(predicted[:1], np.ones_like(truth[:1])).any()  # a resting truth: nothing to say
    # before the valid time ended (index 120, t = 12): member 0 was at rest, member 1 still tracked
    assert resting_members(predicted, truth, until=np.array([120, 120, 120])).tolist() == [True, False, False]
    # a truth that itself settles (motion 1e-12 of its size) does not "keep moving"
    settling = truth.copy()
    settling[:, 150:] = settling[:, 150:150 + 1] + 1e-12 * np.sin(t[150:])[None, :, None]
    assert not resting_members(predicted, settling).any()
