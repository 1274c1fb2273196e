"""Training data, initial states and grids by their documented definitions: window times, the member
split and its labels, the file checks' boundaries, normalisation statistics, the per-member random
streams and the readers of a rollout's initial states (helper-121's mutation audit of data,
initial_conditions, grids and rollout_inputs). Expected values are worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from hybridnde.config import InitialConditionConfig, parse_case
from hybridnde.data import WindowSet, load_training_data, normalization_statistics, split_members
from hybridnde.grids import other_domain_length
from hybridnde.initial_conditions import draw_initial_conditions, members_and_start
from hybridnde.io import DataError, write_netcdf
from hybridnde.rollout_inputs import check_closure_fits, initial_states, read_initial_states
from hybridnde.simulate import simulate_case
from hybridnde.systems import build_host_solver
from solvers import KuramotoSivashinskySpectral, Lorenz63, TwoBody

LORENZ_GAUSSIAN = {"distribution": "gaussian", "value": [1.2, 2.1, 1.7], "std": [0.5]}


def two_body_case(**sections):
    raw = {"system": {"name": "two_body"}, "time": {"dt": 0.01, "n_steps": 60},
           "initial_condition": {"members": 5}, "hybrid": {"setup": "neural_ode"},
           "training": {"validation_fraction": 0.4}}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_case(raw)


def lorenz_case(**sections):
    raw = {"system": {"name": "lorenz63"}, "initial_condition": dict(LORENZ_GAUSSIAN, members=4)}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_case(raw)


@pytest.fixture(scope="module")
def two_body_truth():
    """The simulated two-body truth (5 members, 61 samples 0.01 apart from t = 0), in memory."""
    return simulate_case(two_body_case(), progress=False)


def written(dataset, path):
    write_netcdf(dataset, path)
    return path


def component_file(path, values, members):
    """u(member, time, component) of Lorenz-63 states ``values: (member, time, 3)`` with member labels."""
    xr.Dataset({"u": (("member", "time", "component"), values)},
               coords={"member": list(members), "time": 0.1 * np.arange(values.shape[1]),
                       "component": ["x", "y", "z"]}).to_netcdf(path)
    return path


def field_file(path, fields, domain_length):
    """u(member, time, x) of one time, the fields ``(member, n)`` on ``x_j = j L / n``."""
    n = fields.shape[-1]
    xr.Dataset({"u": (("member", "time", "x"), fields[:, None])},
               coords={"member": np.arange(len(fields)), "time": [0.0],
                       "x": np.arange(n) * domain_length / n}).to_netcdf(path)
    return path

def read_as_simulate(path, solver, members):
    """States as `simulate` reads ``initial_condition.file`` (float64 solvers: exactly the file's)."""
    return draw_initial_conditions(InitialConditionConfig(distribution="file", file=str(path)), solver, members).numpy()



# -- windows ---------------------------------------------------------------------------------------

def test_a_window_of_one_sample_is_refused():
    """A window needs at least one step: length 1 would train on nothing but the initial state."""
    with pytest.raises(ValueError, match="at least 2 samples"):
        WindowSet.build(torch.zeros(2, 5, 1, dtype=torch.float64), 1)


def test_window_start_times_count_time_indices_from_the_first_samples_time():
    """Member 1's windows start at the same times as member 0's: t0 + first index * interval, per window asked."""
    windows = WindowSet.build(torch.zeros(2, 6, 1, dtype=torch.float64), 3, stride=2, start_time=5.0)
    assert windows.starts.tolist() == [[0, 0], [0, 2], [1, 0], [1, 2]]
    torch.testing.assert_close(windows.start_times(0.1),
                               torch.tensor([5.0, 5.2, 5.0, 5.2], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(windows.start_times(0.1, torch.tensor([3, 0])),
                               torch.tensor([5.2, 5.0], dtype=torch.float64), rtol=0, atol=1e-12)


# -- the member split ------------------------------------------------------------------------------

def test_a_validation_share_near_one_still_leaves_one_member_to_train():
    """0.9 of 4 rounds to 4 members: at most n - 1 validate."""
    train, validation = split_members(np.arange(4), 0.9)
    assert train.tolist() == [0] and validation.tolist() == [1, 2, 3]


def test_training_data_keep_the_files_member_labels_and_first_time(two_body_truth, tmp_path):
    """A test split later in time (members 10..14 from t = 5): the split is by position, the members
    are named by label, and windows start at the file's times."""
    shifted = two_body_truth.assign_coords(member=two_body_truth.member + 10, time=two_body_truth.time + 5.0)
    data = load_training_data(written(shifted, tmp_path / "later.nc"), two_body_case(), window_length=3)
    assert data.train_members == (10, 11, 12) and data.validation_members == (13, 14)
    assert data.start_time == 5.0 and data.summary()["times"] == 61
    torch.testing.assert_close(data.windows("train", 3).start_times(0.01)[:2],
                               torch.tensor([5.0, 5.01], dtype=torch.float64), rtol=0, atol=1e-12)


def test_a_one_member_file_says_so_when_validating_on_its_training_member(two_body_truth, tmp_path, caplog):
    path = written(two_body_truth.isel(member=[0]), tmp_path / "one.nc")
    with caplog.at_level("WARNING", logger="hybridnde"):
        data = load_training_data(path, two_body_case(), window_length=3)
    assert data.validation_members == data.train_members == (0,)
    assert "one member only; validation (and early stopping) uses the training members" in caplog.text


# -- the file's checks at their boundaries ---------------------------------------------------------

def test_a_system_parameter_off_by_a_small_fraction_is_refused_naming_both_values(two_body_truth, tmp_path):
    """gravitational_parameter 1.0005 against the file's 1.0: another system, however close."""
    path = written(two_body_truth, tmp_path / "truth.nc")
    with pytest.raises(DataError, match=r"system.gravitational_parameter: data 1.0, case 1.0005"):
        load_training_data(path, two_body_case(system={"gravitational_parameter": 1.0005}), window_length=3)


def test_samples_half_a_percent_off_the_cases_interval_are_refused(two_body_truth, tmp_path):
    path = written(two_body_truth, tmp_path / "truth.nc")
    with pytest.raises(DataError, match=r"samples are 0.01..0.01 apart; the case's time.dt \* time.save_every = 0.01005"):
        load_training_data(path, two_body_case(time={"dt": 0.01005}), window_length=3)


def test_the_longest_window_may_span_the_file_and_no_more(two_body_truth, tmp_path):
    """61 samples hold one window of 61 samples; a window of 62 is refused naming the count."""
    path = written(two_body_truth, tmp_path / "truth.nc")
    assert len(load_training_data(path, two_body_case(), window_length=61).windows("train", 61)) == 3
    with pytest.raises(DataError, match="61 samples per member; training windows need 62 consecutive samples"):
        load_training_data(path, two_body_case(), window_length=62)


def test_a_truth_with_its_components_in_another_order_is_refused(two_body_truth, tmp_path):
    """(y, x, vx, vy) columns would train x's closure on y: training data must list the system's order."""
    path = written(two_body_truth.isel(component=[1, 0, 2, 3]), tmp_path / "swapped.nc")
    with pytest.raises(DataError, match=r"components \('y', 'x', 'vx', 'vy'\); two_body has \('x', 'y', 'vx', 'vy'\)"):
        load_training_data(path, two_body_case(), window_length=3)


def test_members_that_did_not_finish_are_counted_in_the_warning(two_body_truth, tmp_path, caplog):
    """One member marked blew_up: "1 member(s)"; a file of finished members: no such warning."""
    with caplog.at_level("WARNING", logger="hybridnde"):
        load_training_data(written(two_body_truth, tmp_path / "ok.nc"), two_body_case(), window_length=3)
    assert "did not finish ok" not in caplog.text
    status = two_body_truth["status"].values.copy()
    status[1] = 1  # blew_up
    with caplog.at_level("WARNING", logger="hybridnde"):
        load_training_data(written(two_body_truth.assign(status=("member", status, two_body_truth["status"].attrs)),
                                   tmp_path / "one_failed.nc"), two_body_case(), window_length=3)
    assert "1 member(s) did not finish ok" in caplog.text
    assert "marked ok" not in caplog.text  # (the marked member's samples are said once)


def test_non_finite_samples_of_a_member_marked_ok_are_named_not_dropped_silently(two_body_truth, tmp_path, caplog):
    """inf in a member whose status says ok (another tool's file): its samples were left out without a word."""
    u = two_body_truth["u"].values.copy()
    u[2, 3, 0] = np.inf
    path = written(two_body_truth.assign(u=(two_body_truth["u"].dims, u, two_body_truth["u"].attrs)), tmp_path / "inf.nc")
    with caplog.at_level("WARNING", logger="hybridnde"):
        load_training_data(path, two_body_case(), window_length=3)
    member = int(two_body_truth["member"].values[2])
    assert f"member(s) [{member}] hold non-finite samples though marked ok (or unmarked)" in caplog.text
    assert "did not finish ok" not in caplog.text


# -- normalisation statistics ----------------------------------------------------------------------

def zero_rhs(t, u):
    return torch.zeros_like(u)


def test_a_state_beside_a_non_finite_sample_is_left_out_of_the_statistics():
    """u = 0, 1, 2, NaN (dt 0.5): the centre 2's difference touches the NaN; only the centre 1, with
    du/dt = (2 - 0) / 1 = 2, remains."""
    trajectories = torch.tensor([0.0, 1.0, 2.0, float("nan")], dtype=torch.float64).reshape(1, 4, 1)
    stats = normalization_statistics(trajectories, zero_rhs, 0.5, per_component=True)
    torch.testing.assert_close(stats["input_shift"], torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(stats["output_shift"], torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(stats["output_scale"], torch.tensor([1.0], dtype=torch.float64))


def test_two_states_give_their_sample_standard_deviation():
    """u = 0, 1, 3, 6 (dt 0.5): centres 1 and 3 (mean 2, std sqrt 2), du/dt 3 and 5 (mean 4, std sqrt 2)."""
    trajectories = torch.tensor([0.0, 1.0, 3.0, 6.0], dtype=torch.float64).reshape(1, 4, 1)
    stats = normalization_statistics(trajectories, zero_rhs, 0.5, per_component=True)
    root2 = torch.tensor([2.0 ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(stats["input_shift"], torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(stats["input_scale"], root2)
    torch.testing.assert_close(stats["output_shift"], torch.tensor([4.0], dtype=torch.float64))
    torch.testing.assert_close(stats["output_scale"], root2)


def test_more_states_than_max_states_are_evenly_spaced_picks():
    """u_t = t, t = 0..11: centres 1..10; 4 evenly spaced of them are 1, 4, 7, 10 (mean 5.5, std sqrt 15)."""
    trajectories = torch.arange(12, dtype=torch.float64).reshape(1, 12, 1)
    stats = normalization_statistics(trajectories, zero_rhs, 1.0, per_component=True, max_states=4)
    torch.testing.assert_close(stats["input_shift"], torch.tensor([5.5], dtype=torch.float64))
    torch.testing.assert_close(stats["input_scale"], torch.tensor([15.0 ** 0.5], dtype=torch.float64))


def test_statistics_need_three_samples_and_leave_out_a_non_finite_state():
    """Two samples hold no central difference; u = 0, NaN, 2, 3, 4 (dt 0.5): the NaN state (whose
    neighbours' difference is finite) and the state beside it go, leaving u = 3 with du/dt = 2."""
    with pytest.raises(ValueError, match="at least 3 samples"):
        normalization_statistics(torch.zeros(1, 2, 1, dtype=torch.float64), zero_rhs, 0.5, per_component=True)
    trajectories = torch.tensor([0.0, float("nan"), 2.0, 3.0, 4.0], dtype=torch.float64).reshape(1, 5, 1)
    stats = normalization_statistics(trajectories, zero_rhs, 0.5, per_component=True)
    torch.testing.assert_close(stats["input_shift"], torch.tensor([3.0], dtype=torch.float64))
    torch.testing.assert_close(stats["output_shift"], torch.tensor([2.0], dtype=torch.float64))


# -- grids -----------------------------------------------------------------------------------------

def test_an_x_coordinate_of_one_point_says_nothing_about_the_domain():
    assert other_domain_length(np.array([0.0]), 22.0) is None and other_domain_length(None, 22.0) is None


# -- drawn initial states --------------------------------------------------------------------------

def test_member_i_draws_from_the_stream_seed_i_alone():
    """Gaussian members: value + std * default_rng([seed, i]).standard_normal(3); a rank drawing members
    2..3 gets what one drawing 0..3 got for them; the seed argument replaces initial_condition.seed."""
    ic = InitialConditionConfig(**LORENZ_GAUSSIAN, seed=7)
    solver = Lorenz63()

    def expected(seed, member):
        return np.array([1.2, 2.1, 1.7]) + 0.5 * np.random.default_rng([seed, member]).standard_normal(3)

    whole = draw_initial_conditions(ic, solver, range(4)).numpy()
    np.testing.assert_array_equal(whole, np.stack([expected(7, m) for m in range(4)]))
    np.testing.assert_array_equal(draw_initial_conditions(ic, solver, range(2, 4)).numpy(), whole[2:])
    np.testing.assert_array_equal(draw_initial_conditions(ic, solver, [0], seed=1).numpy()[0], expected(1, 0))
    assert not np.array_equal(expected(1, 0), expected(0, 1))


def test_random_fourier_fields_hold_modes_1_to_n_modes_with_the_amplitude_as_their_standard_deviation():
    ic = InitialConditionConfig(distribution="random_fourier", n_modes=4, amplitude=2.5)
    solver = KuramotoSivashinskySpectral(domain_length=22.0, n_points=32, dt=0.25)
    fields = draw_initial_conditions(ic, solver, range(3)).numpy()
    np.testing.assert_allclose(fields.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.sqrt((fields ** 2).mean(axis=1)), 2.5, rtol=1e-12)
    spectrum = np.abs(np.fft.rfft(fields, axis=1))
    assert (spectrum[:, 1:5] > 1e-9).all() and (spectrum[:, 5:] < 1e-9).all()


def test_two_body_orbits_start_at_the_pericentre_of_a_unit_semi_major_axis():
    """State (1 - e, 0, 0, v): energy v^2 / 2 - 1 / r = -1 / (2 a) = -1/2 for every drawn e."""
    states = draw_initial_conditions(InitialConditionConfig(distribution="two_body_orbit"), TwoBody(dt=0.01),
                                     range(4)).numpy()
    energy = 0.5 * (states[:, 2] ** 2 + states[:, 3] ** 2) - 1.0 / np.hypot(states[:, 0], states[:, 1])
    np.testing.assert_allclose(energy, -0.5, rtol=1e-12)
    assert ((states[:, 0] >= 0.3) & (states[:, 0] <= 0.5)).all()  # r = 1 - e, e in [0.5, 0.7]


def test_gaussian_members_spread_by_each_components_own_std():
    """std (0.1, 1, 10): member 0 of seed 0 is value + std * default_rng([0, 0]).standard_normal(3)."""
    ic = InitialConditionConfig(distribution="gaussian", value=(1.0, 2.0, 3.0), std=(0.1, 1.0, 10.0))
    expected = np.array([1.0, 2.0, 3.0]) + np.array([0.1, 1.0, 10.0]) * np.random.default_rng([0, 0]).standard_normal(3)
    np.testing.assert_array_equal(draw_initial_conditions(ic, Lorenz63(), [0]).numpy()[0], expected)


def test_rigid_body_states_lie_on_the_unit_circle_of_the_m1_m3_plane():
    from solvers import RigidBody

    states = draw_initial_conditions(InitialConditionConfig(distribution="rigid_body_circle"), RigidBody(),
                                     range(4)).numpy()
    phi = np.array([np.random.default_rng([0, m]).uniform(0.5, 1.5) for m in range(4)])
    np.testing.assert_allclose(states, np.stack([np.cos(phi), np.zeros(4), np.sin(phi)], axis=1), rtol=0, atol=1e-15)


def test_asking_for_more_members_than_the_file_holds_names_the_count(tmp_path):
    path = component_file(tmp_path / "ic.nc", np.ones((2, 1, 3)), [0, 1])
    with pytest.raises(DataError, match="holds 2 members; initial_condition.members = 3: set it to at most 2"):
        read_as_simulate(path, Lorenz63(), range(3))


def test_a_field_of_another_length_is_refused_as_initial_conditions(tmp_path):
    """48 points for a 64-point solver: named before any step (the file's domain itself fits)."""
    ic = InitialConditionConfig(distribution="file", file=str(field_file(tmp_path / "ic.nc", np.zeros((2, 48)), 22.0)))
    with pytest.raises(DataError, match="48 grid points cannot be filtered onto the case's 64 points"):
        draw_initial_conditions(ic, KuramotoSivashinskySpectral(domain_length=22.0, n_points=64, dt=0.25), range(2))


def test_a_files_member_labels_are_its_first_members():
    dataset = xr.Dataset({"u": (("member", "component"), np.zeros((3, 3)))}, coords={"member": [10, 20, 30]})
    labels, start = members_and_start(dataset, 2)
    assert labels.tolist() == [10, 20] and start == 0.0


def test_a_non_finite_state_of_a_later_member_is_named_by_its_label(tmp_path):
    """Members [1] of a file labelled (10, 20) whose member 20 is NaN: named 20, not the batch's first label."""
    values = np.ones((2, 1, 3))
    values[1, 0, 2] = np.nan
    ic = InitialConditionConfig(distribution="file", file=str(component_file(tmp_path / "nan.nc", values, [10, 20])))
    with pytest.raises(DataError, match=r"initial states of members \[20\] are not finite"):
        draw_initial_conditions(ic, Lorenz63(), [1])


# -- a rollout's initial states --------------------------------------------------------------------

def test_a_rank_reads_its_own_members_of_a_file_and_names_a_non_finite_one_by_label(tmp_path):
    values = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3)
    path = component_file(tmp_path / "ic.nc", values, [10, 11, 12, 13])
    ids, t0, states = read_initial_states(path, Lorenz63(), 4, range(2, 4))
    assert ids.tolist() == [10, 11, 12, 13] and t0 == 0.0
    np.testing.assert_array_equal(states, values[2:, 0])
    values[3, 0, 1] = np.nan
    case = lorenz_case(rollout={"initial_conditions": str(component_file(tmp_path / "nan.nc", values, [10, 11, 12, 13])),
                                "members": 4})
    with pytest.raises(DataError, match=r"initial states of members \[13\] are not finite"):
        initial_states(case, build_host_solver(case), range(2, 4))


def test_a_rollout_asking_for_more_members_than_the_file_holds_is_refused(tmp_path):
    path = component_file(tmp_path / "ic.nc", np.ones((2, 1, 3)), [0, 1])
    with pytest.raises(DataError, match="holds 2 members; rollout.members = 3: set it to at most 2"):
        read_initial_states(path, Lorenz63(), 3, range(3))


def test_a_field_file_for_an_ode_host_is_refused_naming_its_dimension(tmp_path):
    path = field_file(tmp_path / "ks.nc", np.zeros((2, 8)), 22.0)
    with pytest.raises(DataError, match=r"u has dims \('member', 'time', 'x'\); the host's solver needs u\(member, component\)"):
        read_initial_states(path, Lorenz63(), 2, range(2))


def test_a_rollouts_field_states_are_filtered_onto_the_host_grid_of_the_same_domain(tmp_path):
    """cos(k1 x) + cos(k12 x) on 64 points onto a 16-point host: mode 12 is beyond the host's 8 and goes
    (sampling every 4th point would fold it onto mode 4); another domain or a grid the host's points do not
    divide is refused."""
    x = np.arange(64) * 22.0 / 64
    fields = np.stack([np.cos(2 * np.pi * x / 22.0) + np.cos(2 * np.pi * 12 * x / 22.0)] * 2)
    host = KuramotoSivashinskySpectral(domain_length=22.0, n_points=16, dt=0.25)
    _, _, states = read_initial_states(field_file(tmp_path / "fine.nc", fields, 22.0), host, 2, range(2))
    np.testing.assert_allclose(states, np.cos(2 * np.pi * np.arange(16) / 16)[None].repeat(2, 0), atol=1e-12)
    with pytest.raises(DataError, match="its domain length 30 differs from the host's system.domain_length = 22"):
        read_initial_states(field_file(tmp_path / "long.nc", fields, 30.0), host, 2, range(2))
    with pytest.raises(DataError, match="48 grid points cannot be filtered onto the host's 32"):
        read_initial_states(field_file(tmp_path / "odd.nc", np.zeros((2, 48)), 22.0),
                            KuramotoSivashinskySpectral(domain_length=22.0, n_points=32, dt=0.25), 2, range(2))


def test_a_drawn_rollout_uses_rollout_seed_not_the_truths():
    case = lorenz_case(rollout={"seed": 5, "members": 4})
    _, _, u0 = initial_states(case, build_host_solver(case), range(1, 3))
    expected = [np.array([1.2, 2.1, 1.7]) + 0.5 * np.random.default_rng([5, m]).standard_normal(3) for m in (1, 2)]
    np.testing.assert_array_equal(u0.numpy(), np.stack(expected))


def test_members_starting_beyond_the_blowup_threshold_are_named_by_their_global_index(caplog):
    """Every two-body orbit starts with speed > 1; a rank holding members 1..2 names [1, 2]."""
    from hybridnde.config import fields

    fields._warned.clear()  # (the warning is given once per process)
    case = two_body_case(rollout={"blowup_threshold": 1.0, "members": 3})
    with caplog.at_level("WARNING", logger="hybridnde"):
        initial_states(case, build_host_solver(case), range(1, 3))
    assert "members [1, 2] start beyond rollout.blowup_threshold = 1" in caplog.text


def test_a_closure_returning_another_state_shape_is_refused_before_any_work():
    with pytest.raises(DataError, match=r"closure: returns \(2, 1\) for host states of shape \(2, 3\)"):
        check_closure_fits(lambda t, u: u[:, :1], Lorenz63(), "closure")
