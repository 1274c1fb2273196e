"""What a rollout is scored against, from the definitions in ``hybridnde.alignment`` and
``hybridnde.evaluate``: relabelling, reordering, resampling or translating the files in ways the rules
say are immaterial changes no metric, and the parts the rules say are compared are compared.

Tiny in-memory datasets; ``align_trajectories`` and ``compute_metrics`` are called directly. What a
mutation audit (helper V2) found the older tests let pass.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from hybridnde.alignment import align_trajectories
from hybridnde.evaluate import compute_metrics
from hybridnde.grids import restrict_to_grid
from hybridnde.io import STATUS_FLAGS, trajectory_dataset
from hybridnde.metrics import energy_spectrum

COMPONENTS = ["x", "y", "z"]


def _truth(members, times) -> np.ndarray:
    """u(member, time, component): distinct for every member label, time and component."""
    m, t = np.asarray(members, dtype=np.float64), np.asarray(times, dtype=np.float64)
    return np.sin(1.3 * t[None, :, None] + m[:, None, None] / 3 + np.array([0.0, 1.0, 2.5])[None, None, :]) \
        + np.array([0.0, 0.5, -1.0])


def _prediction(members, times) -> np.ndarray:
    """The truth plus an error growing in time at a member-dependent rate (VPTs differ per member)."""
    m, t = np.asarray(members, dtype=np.float64), np.asarray(times, dtype=np.float64)
    growth = 1e-3 * np.exp((0.5 + 0.3 * m[:, None, None]) * t[None, :, None])
    return _truth(members, times) + growth * np.array([1.0, -0.5, 0.25])


def _ode(u, times, members, components=COMPONENTS, **kwargs):
    return trajectory_dataset(u, np.asarray(times, dtype=np.float64), state_dim="component",
                              state_coords=list(components), members=list(members), **kwargs)


def _same(a, b, path="metrics"):
    """Recursive equality of two metric dicts, NaN equal to NaN, floats to 1e-12 relative."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            _same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple, np.ndarray)) and not isinstance(a, str):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, path
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15, equal_nan=True, err_msg=path)
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-12, abs=1e-15), path
    else:
        assert a == b, path


TIMES = 0.25 * np.arange(41)


def test_permuting_the_references_members_changes_no_metric():
    """Members are paired by their global index: the reference holding them in another order (and one more)
    is the same reference; truth and initial states follow the labels, not the positions."""
    members, reference_members = [1, 2, 3, 4], [4, 0, 2, 1, 3]
    rollout = _ode(_prediction(members, TIMES), TIMES, members)
    ordered = align_trajectories(rollout, _ode(_truth([1, 2, 3, 4], TIMES), TIMES, [1, 2, 3, 4]))
    pair = align_trajectories(rollout, _ode(_truth(reference_members, TIMES), TIMES, reference_members))
    np.testing.assert_array_equal(pair.truth, _truth(members, TIMES))
    np.testing.assert_array_equal(pair.reference_initial, _truth(members, TIMES[:1])[:, 0])
    np.testing.assert_array_equal(pair.reference_members, members)
    _same(compute_metrics(pair), compute_metrics(ordered))


def test_member_matching_by_index_pairs_positions_and_records_the_references_labels():
    rollout = _ode(_prediction([0, 1], TIMES), TIMES, [10, 11])
    pair = align_trajectories(rollout, _ode(_truth([0, 1, 2], TIMES), TIMES, [0, 1, 2]), match_members="index")
    np.testing.assert_array_equal(pair.members, [10, 11])
    np.testing.assert_array_equal(pair.reference_members, [0, 1])
    np.testing.assert_array_equal(pair.truth, _truth([0, 1], TIMES))


def test_permuting_the_references_components_changes_no_metric():
    """Components are matched by name: a reference storing them as (z, x, y) is the same reference."""
    members = [0, 1, 2]
    rollout = _ode(_prediction(members, TIMES), TIMES, members)
    truth = _truth(members, TIMES)
    ordered = align_trajectories(rollout, _ode(truth, TIMES, members))
    pair = align_trajectories(rollout, _ode(truth[..., [2, 0, 1]], TIMES, members, components=["z", "x", "y"]))
    np.testing.assert_array_equal(pair.truth, truth)
    np.testing.assert_array_equal(pair.reference_initial, truth[:, 0])
    _same(compute_metrics(pair), compute_metrics(ordered))


def test_a_rollout_identical_to_its_reference_has_no_divergence_in_any_component():
    members = [0, 1, 2]
    same = _ode(_truth(members, TIMES), TIMES, members)
    kl = compute_metrics(align_trajectories(same, same))["kl_divergence"]
    assert set(kl["per_component"]) == set(COMPONENTS)
    for value in kl["per_component"].values():
        assert value == pytest.approx(0.0, abs=1e-9)


def test_a_rollout_sampled_twice_as_often_is_scored_on_the_common_times_only():
    """Rollout every 0.125, reference every 0.25: the common times are the reference's, the prediction is
    the rollout at those times, and the metrics are those of the rollout thinned to them."""
    members = [0, 1]
    fine_times = 0.125 * np.arange(81)
    reference = _ode(_truth(members, TIMES), TIMES, members)
    pair = align_trajectories(_ode(_prediction(members, fine_times), fine_times, members), reference)
    np.testing.assert_allclose(pair.times, TIMES, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pair.predicted, _prediction(members, TIMES), rtol=0, atol=1e-12)
    assert any(note.startswith(f"{TIMES.size} of the rollout's {fine_times.size} times") for note in pair.notes)
    thinned = align_trajectories(_ode(_prediction(members, TIMES), TIMES, members), reference)
    a, b = compute_metrics(pair), compute_metrics(thinned)
    a["notes"] = b["notes"] = []
    _same(a, b)


def test_one_rollout_time_without_a_reference_time_is_said():
    members = [0, 1]
    pair = align_trajectories(_ode(_prediction(members, TIMES), TIMES, members),
                              _ode(_truth(members, TIMES[:-1]), TIMES[:-1], members))
    assert f"{TIMES.size - 1} of the rollout's {TIMES.size} times have a reference time" in pair.notes


def test_the_references_initial_states_are_at_the_first_common_time():
    """A reference that starts earlier than the rollout: its initial states are those at the rollout's
    first time, not at its own first."""
    members = [0, 1]
    early = np.concatenate([[-1.0, -0.5], TIMES])
    pair = align_trajectories(_ode(_prediction(members, TIMES), TIMES, members),
                              _ode(_truth(members, early), early, members))
    np.testing.assert_array_equal(pair.reference_initial, _truth(members, TIMES[:1])[:, 0])


def test_only_the_paired_reference_members_decide_whether_the_reference_is_ok():
    """A reference member that is not paired blew up: no note about the paired ones."""
    rollout = _ode(_prediction([0, 1], TIMES), TIMES, [0, 1])
    reference = _ode(_truth([0, 1, 2], TIMES), TIMES, [0, 1, 2], status=np.array([0, 0, STATUS_FLAGS["blew_up"]]))
    assert not any("reference members are not ok" in note for note in align_trajectories(rollout, reference).notes)
    reference = _ode(_truth([0, 1, 2], TIMES), TIMES, [0, 1, 2], status=np.array([0, STATUS_FLAGS["blew_up"], 0]))
    assert any("reference members are not ok" in note for note in align_trajectories(rollout, reference).notes)


def _field(n_points: int, length: float, times, members=2, phase=0.0):
    """Periodic fields with modes up to 12 (some above a coarse grid's cut), moving in time."""
    x = np.arange(n_points) * length / n_points
    k = 2 * np.pi / length
    t = np.asarray(times, dtype=np.float64)[None, :, None]
    m = np.arange(members, dtype=np.float64)[:, None, None]
    u = sum(np.cos(j * k * (x - 0.3 * t) + m + j + phase) / j for j in range(1, 13)) + 0.2
    return x, u


def test_a_finer_reference_is_scored_filtered_onto_the_rollouts_grid_and_vice_versa():
    """The finer file is restricted spectrally (grids.restrict_to_grid) onto the coarser grid, whose
    points, domain length and wavenumbers are the ones reported."""
    length, times = 7.0, 0.5 * np.arange(9)
    x_fine, fine = _field(32, length, times)
    x_coarse, coarse = _field(8, length, times, phase=0.01)
    fine_file = trajectory_dataset(fine, times, state_dim="x", state_coords=x_fine)
    coarse_file = trajectory_dataset(coarse, times, state_dim="x", state_coords=x_coarse)
    pair = align_trajectories(coarse_file, fine_file)
    np.testing.assert_allclose(pair.truth, restrict_to_grid(fine, 8), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(pair.predicted, coarse)
    reverse = align_trajectories(fine_file, coarse_file)
    np.testing.assert_allclose(reverse.predicted, restrict_to_grid(fine, 8), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(reverse.truth, coarse)
    for p in (pair, reverse):
        np.testing.assert_allclose(p.state_coords, x_coarse)
        assert p.domain_length == pytest.approx(length)
        wavenumber = np.asarray(compute_metrics(p)["spectrum"]["wavenumber"])
        np.testing.assert_allclose(wavenumber[:3], 2 * np.pi / length * np.arange(3))


def _pair(predicted, truth, times, **kwargs):
    members = list(range(predicted.shape[0]))
    return align_trajectories(_ode(predicted, times, members, **kwargs), _ode(truth, times, members))


def test_a_blow_up_after_the_last_common_time_counts_as_stable():
    """The rollout's status says member 1 blew up, at a time after the last one compared: over every
    time scored it was stable and valid, as a member that never blew up."""
    members = [0, 1]
    predicted, truth = _truth(members, TIMES) + 1e-3, _truth(members, TIMES)
    ok = compute_metrics(_pair(predicted, truth, TIMES))
    later = compute_metrics(_pair(predicted, truth, TIMES, status=np.array([0, STATUS_FLAGS["blew_up"]]),
                                  blowup_time=np.array([np.nan, TIMES[-1] + 1.0])))
    assert later["stable_members"] == 2 and later["reached_horizon_fraction"] == 1.0
    assert any("1 member(s) blew up after the last time compared" in note for note in later["notes"])
    later["notes"] = []
    _same(later, ok)
    within = compute_metrics(_pair(predicted, truth, TIMES, status=np.array([0, STATUS_FLAGS["blew_up"]]),
                                   blowup_time=np.array([np.nan, TIMES[-1] - 1.0])))
    assert within["stable_members"] == 1


def test_translating_every_time_changes_only_the_start():
    """Times are measured from the first common time: the VPT, horizon, resting counts and error curve
    of a pair starting at t = 1000 are those of the same pair starting at 0."""
    members, times = [0, 1, 2], 0.1 * np.arange(61)
    truth = 1.0 + 0.1 * np.sin(3 * times)[None, :, None] * np.array([1.0, 2.0, 3.0])[:, None, None] \
        + np.zeros((3, 1, 3))
    predicted = _prediction(members, times)
    predicted[0] = 1.0  # at rest while the truth moves: resting, and already while valid
    base = compute_metrics(_pair(predicted, truth, times))
    shifted = compute_metrics(_pair(predicted, truth, times + 1000.0))
    assert base["resting_while_valid"] >= 1
    assert shifted["start_time"] == pytest.approx(1000.0)
    np.testing.assert_allclose(shifted["error_growth"]["time"], np.asarray(base["error_growth"]["time"]) + 1000.0)
    for metrics in (base, shifted):
        del metrics["start_time"], metrics["error_growth"]["time"]
    for key in ("horizon", "valid_prediction_time"):  # (float rounding of the shifted times)
        np.testing.assert_allclose(shifted.pop(key)["median"] if key != "horizon" else shifted.pop(key),
                                   base.pop(key)["median"] if key != "horizon" else base.pop(key), rtol=1e-9)
    _same(shifted, base)


def test_a_long_error_curve_is_subsampled_evenly_keeping_the_first_and_last_times():
    from hybridnde.evaluate import MAX_CURVE_POINTS
    from hybridnde.metrics import error_growth, normalised_error, reference_scale

    members, times = [0, 1, 2], 0.01 * np.arange(2 * MAX_CURVE_POINTS + 501)
    pair = _pair(_prediction(members, times), _truth(members, times), times)
    curve = compute_metrics(pair, spread=(10, 90))["error_growth"]
    kept = np.asarray(curve["time"])
    assert curve["of_times"] == times.size and 2 <= kept.size <= MAX_CURVE_POINTS
    assert kept[0] == times[0] and kept[-1] == times[-1]
    steps = np.diff(np.searchsorted(times, kept))
    assert steps.max() - steps.min() <= 1  # evenly
    error = normalised_error(pair.predicted, pair.truth, scale=reference_scale(pair.truth))
    levels = error_growth(error, percentiles=(10.0, 50.0, 90.0))
    index = np.searchsorted(times, kept)
    for key, level in zip(("p10", "median", "p90"), levels):
        np.testing.assert_allclose(curve[key], level[index], rtol=1e-12)


def test_the_reference_drift_of_an_invariant_is_the_truths():
    """An invariant (the squared norm) the truth keeps and the rollout does not: its reference drift is 0."""
    times = 0.1 * np.arange(31)
    angle = times[None, :] + np.array([0.0, 1.0])[:, None]
    truth = np.stack([np.cos(angle), np.sin(angle), np.zeros_like(angle)], axis=-1)
    predicted = truth * (1 + 0.05 * times)[None, :, None]
    metrics = compute_metrics(_pair(predicted, truth, times),
                              invariants=lambda u: {"norm": (np.asarray(u) ** 2).sum(axis=-1)})
    drift = metrics["invariant_drift"]["norm"]
    assert drift["reference"]["median"] == pytest.approx(0.0, abs=1e-12)
    assert drift["rollout"]["median"] > 0.1


def test_the_valid_time_in_lyapunov_times_is_the_valid_time_times_the_exponent():
    members = [0, 1, 2]
    metrics = compute_metrics(_pair(_prediction(members, TIMES), _truth(members, TIMES), TIMES),
                              lyapunov_exponent=0.9)
    vpt, in_lyapunov = metrics["valid_prediction_time"], metrics["valid_prediction_time_lyapunov"]
    assert 0 < vpt["median"] < TIMES[-1]
    assert in_lyapunov["median"] == pytest.approx(0.9 * vpt["median"], rel=1e-12)


def _starting_apart(offset, times=TIMES, members=(0, 1, 2)):
    truth = _truth(members, times)
    return truth + offset * np.sqrt((truth**2).sum(axis=-1).mean()) / np.sqrt(3), truth


def test_files_start_apart_relative_to_the_threshold():
    """An initial error of about 0.2 is a tenth of a threshold of 2 or more: not 'apart' there, but
    apart at the default threshold 0.5, also when one member starts non-finite."""
    predicted, truth = _starting_apart(0.2)
    apart = [n for n in compute_metrics(_pair(predicted, truth, TIMES), threshold=0.5)["notes"] if "start apart" in n]
    assert apart
    assert not [n for n in compute_metrics(_pair(predicted, truth, TIMES), threshold=5.0)["notes"]
                if "start apart" in n]
    predicted[2] = np.nan
    assert [n for n in compute_metrics(_pair(predicted, truth, TIMES), threshold=0.5)["notes"] if "start apart" in n]


def test_spectrum_and_histograms_compare_the_same_samples():
    """A rollout equal to the truth until its member 1 blows up (NaN afterwards): over the samples where
    both are defined they are equal, so the spectra agree, their distance and the KL divergence are 0."""
    length, times = 7.0, 0.5 * np.arange(9)
    x, truth = _field(16, length, times, members=3)
    truth[1] *= 3.0  # members of different size: leaving some out changes the spectrum
    predicted = truth.copy()
    predicted[1, 4:] = np.nan
    pair = align_trajectories(trajectory_dataset(predicted, times, state_dim="x", state_coords=x),
                              trajectory_dataset(truth, times, state_dim="x", state_coords=x))
    metrics = compute_metrics(pair)
    spectrum = metrics["spectrum"]
    np.testing.assert_allclose(spectrum["rollout"], spectrum["reference"], rtol=1e-12)
    assert spectrum["distance"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["kl_divergence"]["value"] == pytest.approx(0.0, abs=1e-9)
    # and the spectrum is the energy spectrum of those samples
    both = np.where(np.isfinite(predicted), truth, np.nan)
    np.testing.assert_allclose(spectrum["reference"], energy_spectrum(both), rtol=1e-12)


def test_the_mean_drift_is_measured_over_the_truths_size_and_the_references_own():
    """A truth whose spatial mean is conserved and a rollout whose mean grows: the reference drift is 0 and
    the scale is the truth's pointwise rms, whatever the rollout's size."""
    length, times = 7.0, 0.5 * np.arange(9)
    x, truth = _field(16, length, times)
    predicted = 5.0 * truth + 0.1 * times[None, :, None]
    pair = align_trajectories(trajectory_dataset(predicted, times, state_dim="x", state_coords=x),
                              trajectory_dataset(truth, times, state_dim="x", state_coords=x))
    drift = compute_metrics(pair)["mean_drift"]
    assert drift["scale"] == pytest.approx(float(np.sqrt((truth**2).mean())), rel=1e-12)
    assert drift["reference"]["median"] == pytest.approx(0.0, abs=1e-12)
    assert drift["rollout"]["median"] > 0


def test_a_reference_with_another_set_of_components_is_refused_either_way():
    """Components are matched by name and both files must hold the same state variables: a reference
    with one more (or one fewer) component is another system's, not one to take a subset of."""
    from hybridnde.io import DataError

    members = [0, 1]
    three = _ode(_truth(members, TIMES), TIMES, members)
    two = _ode(_truth(members, TIMES)[..., :2], TIMES, members, components=COMPONENTS[:2])
    for rollout, reference in ((two, three), (three, two)):
        with pytest.raises(DataError, match="must name the same state variables"):
            align_trajectories(rollout, reference)


def test_an_ode_rollout_against_a_field_reference_is_refused_as_bad_input():
    from hybridnde.io import DataError

    members = [0, 1]
    x, field = _field(16, 7.0, TIMES)
    reference = trajectory_dataset(field, TIMES, state_dim="x", state_coords=x)
    with pytest.raises(DataError, match="both must be"):
        align_trajectories(_ode(_truth(members, TIMES), TIMES, members), reference)


def test_the_pairs_precision_is_the_coarser_of_the_two_files():
    members = [0, 1]
    f64 = _ode(_truth(members, TIMES), TIMES, members)
    f32 = _ode(_truth(members, TIMES).astype(np.float32), TIMES, members)
    for rollout, reference in ((f64, f32), (f32, f64)):
        assert align_trajectories(rollout, reference).precision == float(np.finfo(np.float32).eps)
    assert align_trajectories(f64, f64).precision == float(np.finfo(np.float64).eps)


def test_a_rollout_without_status_or_blow_up_times_is_stable_with_no_blow_up_notes():
    """Files without the status and blowup_time variables: every member ok, none blew up."""
    members = [0, 1]
    truth = _ode(_truth(members, TIMES), TIMES, members)
    bare = _ode(_truth(members, TIMES) + 1e-3, TIMES, members).drop_vars(["status", "blowup_time"])
    metrics = compute_metrics(align_trajectories(bare, truth))
    assert metrics["stable_members"] == 2 and metrics["reached_horizon_fraction"] == 1.0
    assert not any("blew up" in note for note in metrics["notes"])


def test_resting_while_valid_counts_only_members_at_rest_before_their_valid_time_ended():
    """Member 0 rests from the start within the threshold (resting, and while valid); member 1 leaves the
    truth early and rests far from it afterwards (resting at the end, not while valid)."""
    times = 0.1 * np.arange(81)
    truth = 1.0 + 0.1 * np.sin(3 * times)[None, :, None] * np.ones((2, 1, 3))
    predicted = np.ones_like(truth)
    predicted[1, :3] = truth[1, :3]  # following the truth while valid
    predicted[1, 3:] = 10.0
    metrics = compute_metrics(_pair(predicted, truth, times))
    assert metrics["valid_prediction_time"]["per_member"][1] < 0.5
    assert (metrics["resting_members"], metrics["resting_while_valid"]) == (2, 1)


def test_a_truth_ending_early_is_noted_only_for_members_still_within_the_threshold():
    """The truth of members 0 and 1 is undefined from t = 5 on: member 0 was valid until then (a lower
    bound, noted), member 1 had already left the threshold (a plain VPT, not noted); member 2's truth is
    defined to the horizon."""
    members, times = [0, 1, 2], 0.25 * np.arange(41)
    truth = _truth(members, times)
    predicted = truth + 1e-4
    predicted[1, 8:] += 5.0
    truth[:2, 20:] = np.nan
    notes = compute_metrics(_pair(predicted, truth, times))["notes"]
    ended = [note for note in notes if "the truth is undefined before the horizon" in note]
    assert len(ended) == 1 and "for 1 member(s)" in ended[0], notes


def test_members_that_start_blown_up_do_not_make_the_others_start_apart():
    """Two members non-finite from the start (their status says so), one starting on the truth: the files
    do not start apart."""
    members = [0, 1, 2]
    truth = _truth(members, TIMES)
    predicted = truth.copy()
    predicted[1:] = np.nan
    assert not [n for n in compute_metrics(_pair(predicted, truth, TIMES))["notes"] if "start apart" in n]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (overflow, log of <= 0: the point)
def test_an_undefined_invariant_is_noted_only_for_members_whose_states_stay_finite():
    """log(u_x) is undefined once u_x <= 0: member 0 crosses zero with finite states (noted), member 1
    blows up (NaN states: counted by stability, not by the note)."""
    times = 0.1 * np.arange(21)
    truth = np.ones((2, times.size, 3)) + 0.5
    predicted = truth.copy()
    predicted[0, :, 0] = 1.5 - times  # below zero after t = 1.5
    predicted[1, 10:] = np.nan
    metrics = compute_metrics(_pair(predicted, truth, times),
                              invariants=lambda u: {"logx": np.log(np.asarray(u)[..., 0])})
    notes = [n for n in metrics["notes"] if n.startswith("logx drift: undefined")]
    assert len(notes) == 1 and "undefined for 1 of 2 rollout members" in notes[0], metrics["notes"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (overflow, log of <= 0: the point)
def test_a_rollout_whose_spectrum_overflows_has_an_infinite_distance_said_and_no_compared_modes():
    """Finite states whose energy overflows: the spectrum is not finite, its distance infinite (with a note)
    and no mode is compared."""
    length, times = 7.0, 0.5 * np.arange(9)
    x, truth = _field(16, length, times)
    pair = align_trajectories(trajectory_dataset(truth * 1e160, times, state_dim="x", state_coords=x),
                              trajectory_dataset(truth, times, state_dim="x", state_coords=x))
    metrics = compute_metrics(pair)
    assert math.isinf(metrics["spectrum"]["distance"]) and metrics["spectrum"]["compared_modes"] == []
    assert any("energy spectrum distance infinite" in note for note in metrics["notes"])


LORENZ = """
[case]
name = "{name}"
[system]
name = "lorenz63"
[time]
dt = 0.01
n_steps = 100
[initial_condition]
distribution = "gaussian"
value = [1.2, 2.1, 1.7]
std = [1.0]
members = 2
[evaluate]
vpt_threshold = {threshold}
error_scale = "{scale}"
"""


def _scored(reference_case=None, rollout_case=None, **kwargs):
    """``_evaluate_pair`` on a small Lorenz-like pair whose files store these cases (None: none)."""
    from pathlib import Path

    from hybridnde.evaluate import _evaluate_pair

    members = [0, 1]
    pair = _pair(_prediction(members, TIMES), _truth(members, TIMES), TIMES)
    attrs = [{"case_toml": text} if text else {} for text in (rollout_case, reference_case)]
    defaults = dict(case=None, threshold=None, spread=(16, 84), figures_dir=None, lyapunov=False, closure_path=None)
    return _evaluate_pair(pair, Path("r.nc"), Path("t.nc"), *attrs, **{**defaults, **kwargs})


def test_the_case_is_the_references_stored_one_then_the_rollouts():
    reference = LORENZ.format(name="truth", threshold=0.3, scale="anomaly")
    rollout = LORENZ.format(name="model", threshold=0.7, scale="rms")
    metrics = _scored(reference, rollout)
    assert (metrics["case"], metrics["threshold"], metrics["error_scale_kind"]) == ("truth", 0.3, "anomaly")
    metrics = _scored(None, rollout)
    assert (metrics["case"], metrics["threshold"], metrics["error_scale_kind"]) == ("model", 0.7, "rms")
    assert _scored(None, None)["threshold"] == 0.5


def test_a_threshold_that_is_not_positive_is_refused():
    from hybridnde.config import ConfigError

    for threshold in (0.0, -1.0):
        with pytest.raises(ConfigError, match="must be positive"):
            _scored(threshold=threshold)


def test_a_given_case_of_another_system_than_the_files_is_refused():
    """--case must describe the files' true system: another system, or other physics parameters, is refused."""
    from hybridnde.config import parse_case_text
    from hybridnde.io import DataError

    stored = LORENZ.format(name="truth", threshold=0.3, scale="rms")
    ks = parse_case_text('[case]\nname = "ks"\n[system]\nname = "kuramoto_sivashinsky"\nn_points = 64\n'
                         '[time]\ndt = 0.25\nn_steps = 8\n[initial_condition]\nmembers = 1\n')
    with pytest.raises(DataError, match="is a kuramoto_sivashinsky case but the files hold lorenz63"):
        _scored(stored, None, case=ks)
    other = parse_case_text(stored.replace("[system]\n", "[system]\nrho = 30.0\n"))
    with pytest.raises(DataError, match=r"another \[system\].*system\.rho"):
        _scored(stored, None, case=other)
    same = parse_case_text(LORENZ.format(name="given", threshold=0.7, scale="rms"))
    assert (_scored(stored, None, case=same)["case"], _scored(stored, None, case=same)["threshold"]) == ("given", 0.7)


def test_lyapunov_runs_the_model_with_the_rollouts_case_and_the_truth_with_the_references(monkeypatch):
    """A simulated prediction of perturbed physics (rho = 30) against a rho = 28 truth: the model's exponent
    is that of the case the prediction stores, the truth's that of the case the reference stores; a given
    --case is the model's."""
    from pathlib import Path

    import hybridnde.evaluate as evaluate
    from hybridnde.config import parse_case_text

    calls = []
    monkeypatch.setattr(evaluate, "lyapunov_comparison", lambda case, pair, **kwargs: calls.append(kwargs) or {})
    reference = LORENZ.format(name="truth", threshold=0.3, scale="rms")
    rollout = reference.replace("[system]\n", "[system]\nrho = 30.0\n").replace('"truth"', '"model"')
    members = [0, 1]
    pair = _pair(_prediction(members, TIMES), _truth(members, TIMES), TIMES)
    common = dict(threshold=None, spread=(16, 84), figures_dir=None, lyapunov=True, closure_path=None)
    attrs = ({"case_toml": rollout, "stage": "simulate"}, {"case_toml": reference})
    evaluate._evaluate_pair(pair, Path("r.nc"), Path("t.nc"), *attrs, case=None, **common)
    assert calls[-1]["model_case"].case.name == "model" and calls[-1]["model_case"].system.rho == 30.0
    assert calls[-1]["truth_case"].case.name == "truth" and calls[-1]["simulated"]
    given = parse_case_text(reference.replace('"truth"', '"given"'))
    evaluate._evaluate_pair(pair, Path("r.nc"), Path("t.nc"), *attrs, case=given, **common)
    assert calls[-1]["model_case"].case.name == "given" and calls[-1]["truth_case"].case.name == "truth"


def test_a_finite_difference_rollout_of_a_spectral_truths_system_is_the_same_system(tmp_path):
    """The spatial method is discretisation, not physics: a finite-difference KS rollout is scored against a
    spectral KS truth."""
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_case import check_same_system, system_differences

    spectral = ('[case]\nname = "ks"\n[system]\nname = "kuramoto_sivashinsky"\nn_points = 64\n'
                '[time]\ndt = 0.25\nn_steps = 8\n[initial_condition]\nmembers = 1\n')
    fd = spectral.replace("n_points = 64", 'n_points = 32\nmethod = "finite_difference"\nfd_order = 4') \
        .replace("0.25", "0.01")
    assert system_differences(parse_case_text(spectral), parse_case_text(fd)) == []
    assert check_same_system({"case_toml": fd, "stage": "rollout"}, {"case_toml": spectral},
                             tmp_path / "r.nc", tmp_path / "t.nc") is None


def test_files_whose_times_are_in_other_units_are_refused():
    """Times in "s" against times in "ms" were paired as numbers, reported in the rollout's units."""
    import xarray as xr

    from hybridnde.errors import DataError

    def dataset(units):
        time = xr.Variable("time", np.arange(3.0), attrs={"units": units} if units else {})
        return xr.Dataset({"u": (("member", "time", "component"), np.ones((1, 3, 2)))},
                          coords={"member": [0], "time": time, "component": ["a", "b"]})

    with pytest.raises(DataError, match="r.nc has its time in 's', t.nc in 'ms'; give both files the same time units"):
        align_trajectories(dataset("s"), dataset("ms"), names=("r.nc", "t.nc"))
    assert align_trajectories(dataset("s"), dataset(None), names=("r.nc", "t.nc")).time_units == "s"
    assert align_trajectories(dataset("1"), dataset("1")).time_units == "1"
