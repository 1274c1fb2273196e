"""`[initial_condition]` inputs checked before any work: a file's ODE components matched by name (not
by position), folders and non-NetCDF files named as such, a file the distribution does not use refused
and its other unused keys warned about."""
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hybridnde.cli import main
from hybridnde.config import ConfigError, InitialConditionConfig, load_case, parse_case
from hybridnde.initial_conditions import draw_initial_conditions
from hybridnde.io import DataError
from hybridnde.rollout_inputs import read_initial_states
from hybridnde.systems import build_solver
from solvers import Lorenz63

CASES = Path(__file__).resolve().parent.parent / "cases"

LORENZ = """
[case]
name = "lorenz_ic"
[system]
name = "lorenz63"
[time]
dt = 0.01
n_steps = 100
save_every = 10
[initial_condition]
distribution = "gaussian"
value = [1.2, 2.1, 1.7]
std = [0.5]
members = 3
"""


def read_as_simulate(path, solver, members):
    """States as `simulate` reads ``initial_condition.file`` (float64 solvers: exactly the file's)."""
    return draw_initial_conditions(InitialConditionConfig(distribution="file", file=str(path)), solver, members).numpy()


def write_case(tmp_path, text=LORENZ) -> Path:
    path = tmp_path / "case.toml"
    path.write_text(text)
    return path


def from_file(source: Path) -> str:
    return LORENZ.replace('distribution = "gaussian"', f'distribution = "file"\nfile = "{source}"').replace(
        "std = [0.5]\n", "").replace("value = [1.2, 2.1, 1.7]\n", "")


def test_a_files_components_are_matched_by_name_not_position(tmp_path):
    """A file listing the components as (z, y, x) starts the same trajectories as one listing them as
    (x, y, z); positions assigned z's values to x (exit 0, wrong physics)."""
    truth = tmp_path / "truth.nc"
    assert main(["simulate", str(write_case(tmp_path)), "--out", str(truth)]) == 0
    with xr.open_dataset(truth) as data:
        data.isel(component=[2, 1, 0]).to_netcdf(tmp_path / "reversed.nc")
        original = data.u.values[:, 0]
    assert read_as_simulate(tmp_path / "reversed.nc", Lorenz63(), range(3)).tolist() == original.tolist()
    for name in ("truth", "reversed"):
        source = tmp_path / f"{name}.nc"
        assert main(["simulate", str(write_case(tmp_path, from_file(source))), "--out",
                     str(tmp_path / f"from_{name}.nc")]) == 0
    with xr.open_dataset(tmp_path / "from_truth.nc") as a, xr.open_dataset(tmp_path / "from_reversed.nc") as b:
        assert list(b.component.values) == ["x", "y", "z"]
        np.testing.assert_array_equal(b.u.values, a.u.values)
        np.testing.assert_array_equal(b.u.values[:, 0], original)


def test_a_file_with_other_components_exits_2_naming_them(tmp_path, capsys):
    source = tmp_path / "abc.nc"
    xr.Dataset({"u": (("member", "component"), np.ones((3, 3)))},
               coords={"component": ["a", "b", "c"]}).to_netcdf(source)
    out = tmp_path / "out.nc"
    assert main(["simulate", str(write_case(tmp_path, from_file(source))), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(source) in error and "['a', 'b', 'c']" in error and "needs ['x', 'y', 'z']" in error
    assert not out.exists()
    xr.Dataset({"u": (("member", "component"), np.ones((3, 3)))},
               coords={"component": ["x", "w", "z"]}).to_netcdf(tmp_path / "xwz.nc")
    with pytest.raises(DataError, match=r"lack \['y'\]"):  # one missing, one extra: the same rule
        read_as_simulate(tmp_path / "xwz.nc", Lorenz63(), range(3))


def test_unlabelled_components_and_fields_are_read_as_before(tmp_path):
    """Without a component coordinate there are no names to match: by position, as before; KS fields
    (u(member, x)) are unchanged."""
    values = np.arange(6.0).reshape(2, 3)
    xr.Dataset({"u": (("member", "component"), values)}).to_netcdf(tmp_path / "plain.nc")
    assert read_as_simulate(tmp_path / "plain.nc", Lorenz63(), [1]).tolist() == [values[1].tolist()]
    from hybridnde.systems import build_solver

    case = load_case(CASES / "ks_l22.toml", quick=True)
    solver = build_solver(case.system, case.time)
    field = np.random.default_rng(0).standard_normal((2, solver.state_shape[-1]))
    xr.Dataset({"u": (("member", "x"), field)}, coords={"x": solver.x.numpy()}).to_netcdf(tmp_path / "ks.nc")
    np.testing.assert_array_equal(read_as_simulate(tmp_path / "ks.nc", solver, [0, 1]), field)


@pytest.mark.parametrize("labels", [None, [0, 1, 2]])
def test_both_readers_take_unlabelled_components_by_position(tmp_path, labels):
    """initial_condition.file read them by position, rollout.initial_conditions refused them (as
    components ['0', '1', '2']): one rule for both, by position when the labels are only positions."""
    values = np.arange(12.0).reshape(2, 2, 3)  # (member, time, component)
    coords = {"member": [0, 1], "time": [0.0, 0.1], **({"component": labels} if labels is not None else {})}
    xr.Dataset({"u": (("member", "time", "component"), values)}, coords=coords).to_netcdf(tmp_path / "plain.nc")
    simulated = read_as_simulate(tmp_path / "plain.nc", Lorenz63(), [0, 1])
    _, _, rolled = read_initial_states(tmp_path / "plain.nc", Lorenz63(), 2, range(2))
    np.testing.assert_array_equal(simulated, values[:, 0])
    np.testing.assert_array_equal(rolled, values[:, 0])


@pytest.mark.parametrize("reader", ["simulate", "rollout"])
def test_a_folder_or_a_file_that_is_not_netcdf_is_named_as_such(tmp_path, reader):
    """A folder was "does not exist"; an empty or text file gave xarray's "installing additional IO
    dependencies" advice, which does not help."""
    def read(path):
        if reader == "simulate":
            return read_as_simulate(path, Lorenz63(), range(1))
        return read_initial_states(path, Lorenz63(), 1, range(1))

    key = "initial_condition.file" if reader == "simulate" else "rollout.initial_conditions"
    (tmp_path / "folder.nc").mkdir()
    with pytest.raises(DataError, match=f"{key} = '.*folder.nc' is a folder; give a") as caught:
        read(tmp_path / "folder.nc")
    assert "does not exist" not in str(caught.value)
    (tmp_path / "empty.nc").write_bytes(b"")
    (tmp_path / "text.nc").write_text("not a NetCDF file")
    for name in ("empty.nc", "text.nc"):
        with pytest.raises(DataError, match="not a readable NetCDF file") as caught:
            read(tmp_path / name)
        assert "NetCDF: Unknown file format" in str(caught.value)
        assert "IO dependencies" not in str(caught.value) and "backends" not in str(caught.value)


@pytest.mark.parametrize("reader", ["simulate", "rollout"])
def test_a_missing_relative_file_says_where_it_was_looked_for(tmp_path, monkeypatch, reader):
    """A file named beside the case file but run from another folder was "does not exist": paths are
    read from the working directory, which the message now names (an absolute path needs no such words)."""
    def read(path):
        if reader == "simulate":
            return read_as_simulate(path, Lorenz63(), range(1))
        return read_initial_states(path, Lorenz63(), 1, range(1))

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"'ic.nc' does not exist \\(a relative path is read from the working "
                                        f"directory, {tmp_path}, not from the case file's folder\\); give"):
        read(Path("ic.nc"))
    with pytest.raises(DataError, match="ic.nc' does not exist; give") as caught:
        read(tmp_path / "ic.nc")
    assert "working directory" not in str(caught.value)


LORENZ_POINT = {"system": {"name": "lorenz63"},
                "initial_condition": {"distribution": "point", "value": [1.0, 2.0, 3.0]}}


@pytest.mark.parametrize("override, key, fix", [
    ("initial_condition.std=[1.0]", "std", "set distribution = 'gaussian' or remove std"),
    ("initial_condition.low=[0.0, 0.0, 0.0]", "low", "set distribution = 'uniform_box' or remove low"),
    ("initial_condition.eccentricity=[0.1, 0.2]", "eccentricity", "set distribution = 'two_body_orbit' or remove"),
    ("initial_condition.n_modes=8", "n_modes", "set distribution = 'random_fourier' or remove n_modes"),
])
def test_a_key_the_distribution_does_not_use_is_warned_about_when_drawing(override, key, fix, caplog):
    """Such keys were ignored silently: std with "point" gave identical members. A warning, not a refusal:
    a case switched to another distribution by --set keeps its file's keys, which --set cannot remove."""
    from hybridnde.config import fields

    case = parse_case(LORENZ_POINT, overrides=[override])
    message = f"initial_condition.{key} is set but initial_condition.distribution = 'point'"
    assert any(message in problem and fix in problem for problem in case.initial_condition.unused_keys())
    fields._warned.clear()
    solver = build_solver(case.system, case.time)
    for _ in range(2):  # once per process
        draw_initial_conditions(case.initial_condition, solver, range(2))
    assert caplog.text.count(message) == 1 and "(it is ignored)" in caplog.text


def test_a_file_the_distribution_does_not_use_is_refused():
    """A file with "point" ran from the point: the file is what the user meant, so refused."""
    with pytest.raises(ConfigError) as caught:
        parse_case(LORENZ_POINT, overrides=["initial_condition.file='ics.nc'"])
    assert "initial_condition.file is set but initial_condition.distribution = 'point'" in str(caught.value)
    assert "set distribution = 'file' or remove file (--set initial_condition.file='' removes it)" in str(caught.value)
    # a case that reads a file, switched to a draw by --set, as the message says
    switched = parse_case({**LORENZ_POINT, "initial_condition": {"distribution": "file", "file": "ics.nc"}},
                          overrides=["initial_condition.distribution='point'", "initial_condition.value=[1, 2, 3]",
                                     "initial_condition.file=''"])
    assert switched.initial_condition.distribution == "point"


def test_value_is_named_where_neither_point_nor_gaussian_reads_it():
    case = load_case(CASES / "ks_l22.toml", overrides=["initial_condition.value=[1.0]"])
    problems = case.initial_condition.unused_keys()
    assert any("initial_condition.value is set but initial_condition.distribution = 'random_fourier'" in p
               and "set distribution = 'point' or 'gaussian', or remove value" in p for p in problems)


def test_keys_the_distribution_uses_and_default_values_are_accepted():
    gaussian = parse_case(LORENZ_POINT, overrides=["initial_condition.distribution='gaussian'",
                                                   "initial_condition.std=[0.1]"])
    assert gaussian.initial_condition.std == (0.1,)
    # a default value cannot be told from an unset key (cases/two_body.toml spells its eccentricity out)
    assert parse_case(LORENZ_POINT, overrides=["initial_condition.eccentricity=[0.5, 0.7]"])
    # a case switched to a file keeps its draw (--set cannot remove keys): the file replaces it
    switched = parse_case(LORENZ_POINT, overrides=["initial_condition.distribution='file'",
                                                   "initial_condition.file='ics.nc'", "initial_condition.std=[0.1]"])
    assert switched.initial_condition.file == "ics.nc"
    assert switched.initial_condition.unused_keys() == []  # (no warning that std is ignored: the file is used)
    # auto becomes random_fourier, two_body_orbit or rigid_body_circle by the system: their keys are its
    ks = {"system": {"name": "kuramoto_sivashinsky"}, "initial_condition": {"n_modes": 6}}
    assert parse_case(ks).initial_condition.distribution == "random_fourier"
    with pytest.raises(ConfigError, match="initial_condition.file is set but initial_condition.distribution = 'auto'"):
        parse_case({**ks, "initial_condition": {"file": "ics.nc"}})


def test_every_shipped_case_still_loads():
    for path in sorted(CASES.glob("*.toml")):
        for quick in (False, True):
            load_case(path, quick=quick)


def test_simulate_with_an_unused_file_exits_2_before_writing(tmp_path, capsys):
    point = LORENZ.replace('distribution = "gaussian"', 'distribution = "point"').replace("std = [0.5]\n", "")
    out = tmp_path / "out.nc"
    assert main(["simulate", str(write_case(tmp_path, point)), "--out", str(out),
                 "--set", "initial_condition.file='ics.nc'"]) == 2
    assert "initial_condition.file is set" in capsys.readouterr().err and not out.exists()


# -- the initial-condition file is checked as training data and a rollout's initial states are (helper-118) --

def _ks_file(path, domain_length, *, times=None, time_attrs=None, members=(0, 1), n=64):
    x = np.arange(n) * domain_length / n
    fields = np.stack([np.cos(2 * np.pi * (k + 1) * x / domain_length) for k in range(len(members))])
    if times is None:
        data, coords = (("member", "x"), fields), {"member": list(members), "x": x}
    else:
        data = (("member", "time", "x"), np.repeat(fields[:, None], len(times), axis=1))
        coords = {"member": list(members), "x": x, "time": xr.Variable("time", times, attrs=time_attrs or {})}
    xr.Dataset({"u": data}, coords=coords).to_netcdf(path)
    return path


def _ks_file_case(path, domain_length=22.0):
    from hybridnde.config import InitialConditionConfig
    from solvers import KuramotoSivashinskySpectral

    return (InitialConditionConfig(distribution="file", file=str(path), members=2),
            KuramotoSivashinskySpectral(domain_length=domain_length, n_points=64, dt=0.25))


def test_a_file_of_another_domain_length_is_refused_as_initial_conditions(tmp_path):
    """States of an L = 30 field were simulated as L = 22, silently."""
    ic, solver = _ks_file_case(_ks_file(tmp_path / "ic.nc", 30.0))
    with pytest.raises(DataError, match="its domain length 30 differs from the case's system.domain_length = 22"):
        draw_initial_conditions(ic, solver, range(2))
    ic, solver = _ks_file_case(_ks_file(tmp_path / "same.nc", 22.0))
    np.testing.assert_allclose(draw_initial_conditions(ic, solver, range(2))[0, 0].item(), 1.0)


def test_a_file_whose_grid_is_shifted_from_the_solvers_is_refused(tmp_path):
    """A cell-centred 128-point file (x_j = (j + 1/2) dx) was read as if at x_j = j dx: the initial field
    came out moved by half a fine cell (0.049 off a unit cosine at the same x). A float32 grid of the
    right points is accepted; so is the same field on the right grid."""
    ic, solver = _ks_file_case(_ks_file(tmp_path / "edges.nc", 22.0, n=128))
    np.testing.assert_allclose(draw_initial_conditions(ic, solver, range(2))[0].numpy(),
                               np.cos(2 * np.pi * solver.x.numpy() / 22.0), atol=1e-12)
    path = _ks_file(tmp_path / "centres.nc", 22.0, n=128)
    with xr.open_dataset(path) as opened:
        shifted = opened.load().assign_coords(x=opened["x"].values + 0.5 * 22.0 / 128)
    shifted.to_netcdf(path)
    ic, solver = _ks_file_case(path)
    with pytest.raises(DataError, match=r"its grid points are not x_j = j L / N .* 0.5 of a cell"):
        draw_initial_conditions(ic, solver, range(2))
    with xr.open_dataset(tmp_path / "edges.nc") as opened:
        single = opened.load().assign_coords(x=opened["x"].values.astype(np.float32))
    single.to_netcdf(tmp_path / "float32.nc")
    ic, solver = _ks_file_case(tmp_path / "float32.nc")
    assert draw_initial_conditions(ic, solver, range(2)).shape == (2, 64)


def test_a_file_with_no_saved_time_is_refused_naming_it(tmp_path):
    ic, solver = _ks_file_case(_ks_file(tmp_path / "ic.nc", 22.0, times=np.zeros(0)))
    with pytest.raises(DataError, match="u has no time; initial conditions need at least one saved state"):
        draw_initial_conditions(ic, solver, range(2))


@pytest.mark.parametrize("times, attrs, message", [
    ([2.5, 2.6], {"units": "days since 2000-01-01"}, "time is decoded as dates"),  # t0 was 9.47e17 (nanoseconds)
    ([np.nan, 2.6], {}, "the time coordinate holds 1 non-finite value"),
])
def test_the_clock_of_an_initial_condition_file_is_checked(tmp_path, times, attrs, message):
    from hybridnde.initial_conditions import read_member_states

    ic, solver = _ks_file_case(_ks_file(tmp_path / "ic.nc", 22.0, times=np.array(times), time_attrs=attrs))
    with pytest.raises(DataError, match=message):
        draw_initial_conditions(ic, solver, range(2))
    good = _ks_file(tmp_path / "good.nc", 22.0, times=np.array([2.5, 2.6]))
    assert read_member_states(good, solver, range(2), key="initial_condition.file", count_key="members")[1] == 2.5


def test_a_non_finite_state_of_a_file_is_named_by_the_files_member_label(tmp_path):
    path = _ks_file(tmp_path / "ic.nc", 22.0, members=(10, 20))
    with xr.open_dataset(path) as dataset:
        broken = dataset.load()
    broken["u"][1, 3] = np.nan
    broken.to_netcdf(tmp_path / "nan.nc")
    ic, solver = _ks_file_case(tmp_path / "nan.nc")
    with pytest.raises(DataError, match=r"initial states of members \[20\] are not finite"):
        draw_initial_conditions(ic, solver, range(2))


def test_simulate_filters_a_finer_field_file_onto_its_grid_as_a_rollout_does(tmp_path):
    """One reader for both: a 128-point file of the same domain starts a 64-point simulation from its
    filtered fields (simulate refused it, a rollout filtered it). Mode 40 is beyond the 64-point grid's
    31 and goes; sampling every other point would have folded it onto mode 24."""
    from solvers import KuramotoSivashinskySpectral

    solver = KuramotoSivashinskySpectral(domain_length=22.0, n_points=64, dt=0.25)
    x = np.arange(128) * 22.0 / 128
    fields = np.stack([np.cos(2 * np.pi * x / 22.0) + np.sin(2 * np.pi * 40 * x / 22.0)] * 2)
    xr.Dataset({"u": (("member", "x"), fields)}, coords={"x": x}).to_netcdf(tmp_path / "fine.nc")
    simulated = read_as_simulate(tmp_path / "fine.nc", solver, range(2))
    np.testing.assert_allclose(simulated, np.cos(2 * np.pi * np.arange(64) / 64)[None].repeat(2, 0), atol=1e-12)
    np.testing.assert_array_equal(read_initial_states(tmp_path / "fine.nc", solver, 2, range(2))[2], simulated)


@pytest.mark.parametrize("reader", ["simulate", "rollout"])
def test_a_file_with_other_components_or_no_numbers_is_refused_by_both(tmp_path, reader):
    """(x, y, z, w) states were rolled out as Lorenz-63's (x, y, z), w dropped (simulate refused them);
    text values were a bare ValueError in simulate (a rollout named them)."""
    def read(path):
        return read_as_simulate(path, Lorenz63(), range(2)) if reader == "simulate" else \
            read_initial_states(path, Lorenz63(), 2, range(2))

    xr.Dataset({"u": (("member", "component"), np.ones((2, 4)))},
               coords={"component": ["x", "y", "z", "w"]}).to_netcdf(tmp_path / "four.nc")
    with pytest.raises(DataError, match=r"u has 4 components; the (case|host)'s solver has \['x', 'y', 'z'\]"):
        read(tmp_path / "four.nc")
    xr.Dataset({"u": (("member", "component"), np.array([["1", "2", "3"]] * 2))},
               coords={"component": ["x", "y", "z"]}).to_netcdf(tmp_path / "text.nc")
    with pytest.raises(DataError, match="initial conditions need numbers"):
        read(tmp_path / "text.nc")


def orbital_elements(states: np.ndarray, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """``(semi-major axis, eccentricity)`` of planar Kepler states ``(x, y, vx, vy)``: vis-viva energy
    ``-mu / 2a`` and ``e = sqrt(1 + 2 E h^2 / mu^2)`` with the angular momentum ``h``."""
    x, y, vx, vy = states.T
    energy = 0.5 * (vx**2 + vy**2) - mu / np.hypot(x, y)
    h = x * vy - y * vx
    return -mu / (2.0 * energy), np.sqrt(1.0 + 2.0 * energy * h**2 / mu**2)


def test_two_body_orbits_are_drawn_for_the_systems_gravitational_parameter():
    """two_body_orbit: e ~ U(low, high), the pericentre 1 - e on the x axis, semi-major axis 1 for the
    system's mu. With mu = 4 the speed was mu = 1's: e 0.58-0.62 asked for 0.52-0.68, a ~ 0.25, the
    start an apocentre. A rollout's draws (its host, a neural ODE, has no mu) are orbits of the true mu."""
    from hybridnde.rollout_inputs import initial_states
    from hybridnde.simulate import simulate_case
    from hybridnde.systems import build_host_solver

    for mu in (1.0, 4.0):
        case = load_case(CASES / "two_body.toml", overrides=[f"system.gravitational_parameter={mu}",
                                                             "initial_condition.eccentricity=[0.3, 0.8]",
                                                             "rollout.initial_conditions=\"draw\""])
        states = draw_initial_conditions(case.initial_condition, build_solver(case.system, case.time), range(6),
                                         system=case.system).numpy()
        semi_major, eccentricity = orbital_elements(states, mu)
        np.testing.assert_allclose(semi_major, 1.0, rtol=1e-12)
        np.testing.assert_allclose(eccentricity, 1.0 - states[:, 0], rtol=1e-10)  # r = a (1 - e): the pericentre
        assert ((eccentricity >= 0.3) & (eccentricity <= 0.8)).all() and np.ptp(eccentricity) > 0.1
        _, _, drawn = initial_states(case, build_host_solver(case), range(6))
        short = load_case(CASES / "two_body.toml", overrides=[f"system.gravitational_parameter={mu}",
                                                              "time.n_steps=1", "initial_condition.members=3"])
        simulated = simulate_case(short, progress=False)["u"].values[:, 0]  # simulate's draws (no spin-up)
        starts = [drawn.numpy(), simulated,
                  draw_initial_conditions(case.initial_condition, build_solver(case.system, case.time),
                                          range(3)).numpy()]  # (no system named: the solver's mu)
        for states in starts:
            semi_major, eccentricity = orbital_elements(states, mu)
            np.testing.assert_allclose(semi_major, 1.0, rtol=1e-12)
            np.testing.assert_allclose(eccentricity, 1.0 - states[:, 0], rtol=1e-10)
