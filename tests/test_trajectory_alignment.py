"""align_trajectories: which times, members, components and grid points of a rollout and its reference
are compared, and which mismatches are refused (the rules in ``hybridnde.alignment``'s docstring).

Values are analytic functions of (member label, time, component), so every aligned array can be checked
against what it must hold, independently of how the pairing is computed.
"""
from __future__ import annotations

import numpy as np
import pytest

from hybridnde.alignment import align_trajectories
from hybridnde.io import DataError, trajectory_dataset

COMPONENTS = ["x", "y", "z"]


def _state(members, times) -> np.ndarray:
    """u(member, time, component) = sin(t + member / 3 + k): distinct for every label, time and component."""
    members, times = np.asarray(members, dtype=np.float64), np.asarray(times, dtype=np.float64)
    return np.sin(times[None, :, None] + members[:, None, None] / 3 + np.arange(3)[None, None, :])


def _ode_file(times, members=(0, 1), **kwargs):
    return trajectory_dataset(_state(members, times), times, state_dim="component", state_coords=COMPONENTS,
                              members=list(members), **kwargs)


def _field_file(n_points: int, length: float = 22.0, times=(0.0, 0.1, 0.2, 0.3)):
    x = np.arange(n_points) * length / n_points
    u = np.broadcast_to(np.sin(2 * np.pi * x / length), (2, len(times), n_points)).copy()
    return trajectory_dataset(u, np.asarray(times), state_dim="x", state_coords=x)


def test_time_coordinates_that_do_not_increase_are_refused():
    """searchsorted pairs times only in an increasing coordinate: a repeated or a reversed one must be refused."""
    good = _ode_file(0.1 * np.arange(5))
    repeated = _ode_file(np.array([0.0, 0.1, 0.1, 0.2, 0.3]))
    reversed_ = _ode_file(0.1 * np.arange(5)[::-1])
    for bad in (repeated, reversed_):
        with pytest.raises(DataError, match="rollout: the time coordinate is not increasing"):
            align_trajectories(bad, good)
        with pytest.raises(DataError, match="reference: the time coordinate is not increasing"):
            align_trajectories(good, bad)


def test_the_default_time_tolerance_is_a_millionth_of_the_finer_sampling_interval():
    """Rollout every 0.1, reference every 0.01: the default tolerance is 1e-6 * 0.01 = 1e-8. Rollout times
    0.4e-8 late are common times, 5e-8 late (inside 1e-6 of the coarser interval) are not."""
    reference = _ode_file(0.01 * np.arange(101))
    rollout_times = 0.1 * np.arange(11)
    pair = align_trajectories(_ode_file(rollout_times + 0.4e-8), reference)
    assert pair.times.size == rollout_times.size and not pair.notes
    np.testing.assert_allclose(pair.truth, _state([0, 1], rollout_times), rtol=0, atol=1e-12)
    with pytest.raises(DataError, match="share 0 time"):
        align_trajectories(_ode_file(rollout_times + 5e-8), reference)
    # a thousandth of a sampling interval is far from a common time
    with pytest.raises(DataError, match="share 0 time"):
        align_trajectories(_ode_file(rollout_times + 1e-3 * 0.01), reference)


def test_a_given_time_tolerance_replaces_the_default_and_zero_means_equal_times():
    times = 0.1 * np.arange(6)
    reference = _ode_file(times)
    late = _ode_file(times + 0.04)
    with pytest.raises(DataError, match="share 0 time"):
        align_trajectories(late, reference)
    pair = align_trajectories(late, reference, time_tolerance=0.05)
    np.testing.assert_allclose(pair.times, times + 0.04)
    np.testing.assert_array_equal(pair.truth, _state([0, 1], times))  # the reference at its own nearest times
    # --time-tolerance 0: exactly equal times are common, a time 1e-12 off is not
    exact = align_trajectories(reference, reference, time_tolerance=0.0)
    assert exact.times.size == times.size
    with pytest.raises(DataError, match="share 0 time"):
        align_trajectories(_ode_file(times + 1e-12), reference, time_tolerance=0.0)


def test_one_common_time_is_not_enough():
    rollout, reference = _ode_file([0.0, 0.1, 0.2]), _ode_file([0.2, 0.3, 0.4])
    with pytest.raises(DataError, match="share 1 time.*need at least 2"):
        align_trajectories(rollout, reference)
    assert align_trajectories(_ode_file([0.0, 0.1, 0.2]), _ode_file([0.1, 0.2, 0.3])).times.size == 2


def test_a_sparser_rollout_inside_a_finer_reference_is_paired_at_its_own_times():
    """Reference every 0.05 from 0; rollout every 0.1 from 0.2: truth is the reference at the rollout's
    times, the prediction the whole rollout, and the reference's initial state the one at the first common
    time (t = 0.2), not at the reference's first time."""
    reference = _ode_file(0.05 * np.arange(21))
    rollout_times = 0.2 + 0.1 * np.arange(9)
    rollout = trajectory_dataset(2 * _state([0, 1], rollout_times), rollout_times, state_dim="component",
                                 state_coords=COMPONENTS)
    pair = align_trajectories(rollout, reference)
    np.testing.assert_allclose(pair.times, rollout_times)
    np.testing.assert_allclose(pair.truth, _state([0, 1], rollout_times), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pair.predicted, 2 * _state([0, 1], rollout_times), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pair.reference_initial, _state([0, 1], [0.2])[:, 0], rtol=0, atol=1e-12)
    assert not pair.notes


def test_a_rollout_time_without_reference_time_is_dropped_with_a_note():
    reference = _ode_file(0.1 * np.arange(5))
    rollout = _ode_file(np.append(0.1 * np.arange(5), 0.55))
    pair = align_trajectories(rollout, reference)
    np.testing.assert_allclose(pair.times, 0.1 * np.arange(5))
    assert pair.notes == ("5 of the rollout's 6 times have a reference time",)


def test_members_are_paired_by_label_or_by_position():
    """Reference members labelled 10..13 in a shuffled order, rollout members 12 and 10: by label each
    rollout member meets the reference member of its label wherever it is stored; by index the k-th meets
    the k-th."""
    times = 0.1 * np.arange(4)
    labels = [13, 10, 12, 11]
    reference = _ode_file(times, members=labels)
    rollout = _ode_file(times, members=(12, 10))
    pair = align_trajectories(rollout, reference)
    np.testing.assert_array_equal(pair.truth, _state([12, 10], times))
    np.testing.assert_array_equal(pair.predicted, pair.truth)
    np.testing.assert_array_equal(pair.reference_members, [12, 10])
    np.testing.assert_array_equal(pair.members, [12, 10])
    by_index = align_trajectories(_ode_file(times, members=(0, 1, 2)), reference, match_members="index")
    np.testing.assert_array_equal(by_index.truth, _state(labels[:3], times))
    np.testing.assert_array_equal(by_index.reference_members, labels[:3])
    with pytest.raises(DataError, match="match_members='label'"):
        align_trajectories(rollout, reference, match_members="label")


def test_only_the_paired_reference_members_are_checked_for_blow_up():
    times = 0.1 * np.arange(4)
    reference = _ode_file(times, members=(0, 1, 2), status=np.array([0, 0, 1], dtype=np.int8))
    assert not align_trajectories(_ode_file(times, members=(0, 1)), reference).notes
    pair = align_trajectories(_ode_file(times, members=(1, 2)), reference)
    assert any("some reference members are not ok" in note for note in pair.notes), pair.notes


def test_files_of_different_state_variables_or_domains_are_refused_by_name():
    times = 0.1 * np.arange(4)
    rollout = _ode_file(times)
    other = trajectory_dataset(_state([0, 1], times), times, state_dim="component", state_coords=["x", "y", "w"])
    with pytest.raises(DataError, match="they must name the same state variables"):
        align_trajectories(rollout, other)
    with pytest.raises(DataError, match="they must be the same domain"):
        align_trajectories(_field_file(32, length=22.0), _field_file(32, length=23.0))
    with pytest.raises(DataError, match="one must divide the other"):
        align_trajectories(_field_file(48), _field_file(64))


def test_a_finer_rollout_is_restricted_and_described_on_the_reference_grid():
    """A rollout on 64 points against a reference on 32: both compared on the 32 points, and ``state_coords``
    (the x of the compared values) are the reference's."""
    rollout, reference = _field_file(64), _field_file(32)
    pair = align_trajectories(rollout, reference)
    assert pair.predicted.shape == pair.truth.shape == (2, 4, 32)
    np.testing.assert_allclose(pair.state_coords, reference["x"].values)
    np.testing.assert_allclose(pair.predicted, pair.truth, atol=1e-12)
    assert pair.domain_length == pytest.approx(22.0, rel=1e-12)


def test_pairing_by_position_is_offered_only_where_it_could_work():
    """A reference with fewer members than the rollout was told to pair by position, which then refused
    it for having fewer members; one with as many, under other labels, is told so still."""
    def dataset(members):
        return trajectory_dataset(np.ones((len(members), 3, 2)), [0.0, 0.1, 0.2], state_dim="component",
                                  state_coords=["a", "b"], members=np.array(members))
    with pytest.raises(DataError, match=r"lacks members \[2, 3\] of rollout \(it has 0..1\); simulate them$"):
        align_trajectories(dataset([0, 1, 2, 3]), dataset([0, 1]))
    with pytest.raises(DataError, match=r"simulate them, or pair members by position .*--match-members index"):
        align_trajectories(dataset([0, 1, 2, 3]), dataset([0, 1, 7, 8]))
    assert align_trajectories(dataset([0, 1, 2, 3]), dataset([0, 1, 7, 8]), match_members="index").members.size == 4
