"""`hybridnde evaluate` end to end on files from `hybridnde simulate`; bad input exits 2."""
import json
import math

import numpy as np
import pytest
import xarray as xr

from hybridnde.cli import main
from hybridnde.closure_file import save_closure
from hybridnde.config import load_case
from hybridnde.models import PeriodicCNNClosure
from hybridnde.io import DataError, trajectory_dataset, write_netcdf

LORENZ = """
[case]
name = "lorenz_eval"
[system]
name = "lorenz63"
[time]
dt = 0.01
n_steps = 2000
save_every = 10
[initial_condition]
distribution = "gaussian"
value = [1.2, 2.1, 1.7]
std = [1.0]
members = 3
seed = 5
[evaluate]
lyapunov_exponent = 0.9056
"""

KS = """
[case]
name = "ks_eval"
[system]
name = "kuramoto_sivashinsky"
n_points = 64
[time]
dt = 0.25
n_steps = 80
save_every = 2
[initial_condition]
members = 2
seed = 3
"""


def simulate(tmp_path, name, text=LORENZ, *overrides):
    case = tmp_path / f"{name}.toml"
    case.write_text(text)
    out = tmp_path / f"{name}.nc"
    arguments = ["simulate", str(case), "--out", str(out)]
    for override in overrides:
        arguments += ["--set", override]
    assert main(arguments) == 0
    return out


def evaluate_json(capsys, rollout, reference, *extra):
    capsys.readouterr()
    assert main(["evaluate", str(rollout), "--reference", str(reference), "--json", *map(str, extra)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def lorenz_truth(tmp_path):
    return simulate(tmp_path, "truth")


def test_truth_against_itself_is_valid_to_the_horizon_with_zero_error(tmp_path, lorenz_truth, capsys):
    metrics = evaluate_json(capsys, lorenz_truth, lorenz_truth)
    assert metrics["case"] == "lorenz_eval" and metrics["members"] == 3 and metrics["times"] == 201
    vpt = metrics["valid_prediction_time"]
    assert metrics["horizon"] == pytest.approx(20.0)
    assert vpt["per_member"] == pytest.approx([20.0] * 3) and vpt["members"] == [0, 1, 2]
    assert metrics["valid_prediction_time_lyapunov"]["median"] == pytest.approx(20.0 * 0.9056)
    assert metrics["reached_horizon_fraction"] == 1.0 and metrics["stable_fraction"] == 1.0
    assert metrics["initial_error"]["max"] == 0.0 and max(metrics["error_growth"]["median"]) == 0.0
    assert metrics["kl_divergence"]["value"] == 0.0 and set(metrics["kl_divergence"]["per_component"]) == {"x", "y", "z"}
    assert "invariant_drift" not in metrics  # Lorenz-63 conserves nothing
    assert metrics["cost"]["reference"]["wall_seconds"] > 0
    # the table names the headline numbers
    assert main(["evaluate", str(lorenz_truth), "--reference", str(lorenz_truth)]) == 0
    table = capsys.readouterr().out
    assert "valid prediction time" in table and "Lyapunov times" in table and "100% of members" in table


def test_a_full_disk_at_the_json_leaves_the_earlier_evaluation_whole(tmp_path, lorenz_truth, monkeypatch, capsys):
    """The figures were moved into place before --out was written: a full disk there left the new
    figures beside the earlier JSON, and the message said "--resume continues", an option evaluate lacks."""
    import errno
    from pathlib import Path

    rollout = simulate(tmp_path, "perturbed", LORENZ, "system.rho=28.3")
    out, figures = tmp_path / "metrics.json", tmp_path / "figures"
    evaluate_json(capsys, lorenz_truth, lorenz_truth, "--out", out, "--figures", figures)
    earlier = {path.name: path.read_bytes() for path in [out, *figures.iterdir()]}
    original = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name.startswith(".metrics.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    assert main(["evaluate", str(rollout), "--reference", str(lorenz_truth), "--out", str(out), "--figures",
                 str(figures)]) == 1
    error = capsys.readouterr().err
    assert "no space left on the device" in error and "--resume" not in error and "Traceback" not in error
    assert {path.name: path.read_bytes() for path in [out, *figures.iterdir()]} == earlier


def test_perturbed_model_has_a_finite_vpt_figures_and_a_json_file(tmp_path, lorenz_truth, capsys):
    rollout = simulate(tmp_path, "perturbed", LORENZ, "system.rho=28.3")  # same initial states, other dynamics
    out, figures = tmp_path / "metrics.json", tmp_path / "figures"
    metrics = evaluate_json(capsys, rollout, lorenz_truth, "--out", out, "--figures", figures)
    vpt = np.array(metrics["valid_prediction_time"]["per_member"])
    assert ((vpt > 1.0) & (vpt < 20.0)).all() and metrics["reached_horizon_fraction"] == 0.0
    assert metrics["stable_fraction"] == 1.0 and metrics["initial_error"]["max"] == 0.0
    growth = np.array(metrics["error_growth"]["median"])
    assert metrics["error_growth"]["of_times"] == metrics["times"] >= len(growth)  # at most 1000 of them
    assert growth[-1] > 0.5 > growth[1] > 0  # the median error crosses the threshold
    assert json.loads(out.read_text()) == metrics
    assert sorted(p.name for p in figures.iterdir()) == ["error_growth.png", "phase_portrait.png"]
    # a lower threshold gives shorter valid times, member by member
    lower = evaluate_json(capsys, rollout, lorenz_truth, "--threshold", 0.1)["valid_prediction_time"]["per_member"]
    assert (np.array(lower) < vpt).all()



def test_a_stop_while_drawing_leaves_the_earlier_evaluation_whole(tmp_path, lorenz_truth, monkeypatch, capsys):
    """Stopped after its first figure, evaluate into a folder of an earlier evaluation left a new
    error_growth.png beside the old phase portrait and the old --out JSON: a set no evaluation made."""
    import hybridnde.figures

    rollout = simulate(tmp_path, "perturbed", LORENZ, "system.rho=28.3")
    out, figures = tmp_path / "metrics.json", tmp_path / "figures"
    evaluate_json(capsys, lorenz_truth, lorenz_truth, "--out", out, "--figures", figures)
    (figures / "space_time.png").write_bytes(b"a KS evaluation's")  # a figure these states do not draw
    (figures / "notes.png").write_bytes(b"the user's own")
    earlier = {path.name: path.read_bytes() for path in [out, *figures.iterdir()]}
    original, saved = hybridnde.figures.save_figure, []

    def stop_at_the_second(figure, path):
        saved.append(path)
        if len(saved) == 2:
            raise KeyboardInterrupt
        return original(figure, path)

    with monkeypatch.context() as patch:
        patch.setattr(hybridnde.figures, "save_figure", stop_at_the_second)
        assert main(["evaluate", str(rollout), "--reference", str(lorenz_truth), "--out", str(out), "--figures",
                     str(figures)]) == 130
    assert len(saved) == 2 and {path.name: path.read_bytes() for path in [out, *figures.iterdir()]} == earlier
    metrics = evaluate_json(capsys, rollout, lorenz_truth, "--out", out, "--figures", figures)
    assert sorted(p.name for p in figures.iterdir()) == ["error_growth.png", "notes.png", "phase_portrait.png"]
    assert metrics["figures"] == [str(figures / "error_growth.png"), str(figures / "phase_portrait.png")]
    assert json.loads(out.read_text()) == metrics and (figures / "error_growth.png").read_bytes() != \
        earlier["error_growth.png"]

def test_coarse_rollout_is_compared_on_its_grid(tmp_path, capsys, monkeypatch):
    import hybridnde.figures

    labels = []
    for name in ("space_time_figure", "spectrum_figure"):
        original = getattr(hybridnde.figures, name)
        monkeypatch.setattr(hybridnde.figures, name, lambda *a, _original=original, **k: (
            labels.append(k["predicted_label"]), _original(*a, **k))[1])
    truth = simulate(tmp_path, "ks_truth", KS)
    coarse = simulate(tmp_path, "ks_coarse", KS, "system.n_points=32")
    metrics = evaluate_json(capsys, coarse, truth, "--figures", tmp_path / "ks_figures")
    assert labels == ["prediction", "prediction"]  # no closure made it: not called "hybrid" in the figures
    assert any("restricted spectrally from 64" in note for note in metrics["notes"])
    # random_fourier states with 4 modes are exact on both grids: the files start equal
    assert metrics["initial_error"]["max"] < 1e-10
    assert len(metrics["spectrum"]["rollout"]) == len(metrics["spectrum"]["reference"]) == 17
    assert metrics["spectrum"]["distance"] < 0.5 and metrics["stable_fraction"] == 1.0
    assert sorted(p.name for p in (tmp_path / "ks_figures").iterdir()) == ["error_growth.png", "space_time.png",
                                                                        "spectrum.png"]


def test_blown_up_members_count_against_stability_and_vpt(tmp_path, lorenz_truth, capsys):
    with xr.open_dataset(lorenz_truth) as truth:
        u, times, attrs = truth.u.values.copy(), truth.time.values, dict(truth.attrs)
    u[1, 31:] = np.nan  # member 1 blew up at t = 3.1
    status = np.array([0, 1, 0], dtype=np.int8)
    dataset = trajectory_dataset(u, times, state_dim="component", state_coords=["x", "y", "z"], status=status,
                                 blowup_time=np.array([np.nan, 3.1, np.nan]), case_toml=attrs["case_toml"])
    rollout = write_netcdf(dataset, tmp_path / "blown.nc")
    metrics = evaluate_json(capsys, rollout, lorenz_truth)
    assert metrics["stable_fraction"] == pytest.approx(2 / 3) and metrics["stable_members"] == 2
    assert metrics["valid_prediction_time"]["per_member"] == pytest.approx([20.0, 3.0, 20.0])
    assert metrics["reached_horizon_fraction"] == pytest.approx(2 / 3)
    # the rollout is the truth with member 1 NaN from t = 3.1 on: its histograms cover the truth's same samples
    assert metrics["kl_divergence"]["value"] == 0.0 and metrics["statistics_finite_share"] == pytest.approx(
        (3 * 201 - 170) / (3 * 201))


def test_where_the_truth_is_undefined_the_model_is_left_out_of_the_statistics_too(tmp_path, lorenz_truth, capsys):
    """A truth NaN in its second half and a model off there: the model's off states were still counted
    (KL 0.26 where the shared samples agree exactly)."""
    with xr.open_dataset(lorenz_truth) as truth:
        u, times, attrs = truth.u.values.copy(), truth.time.values, dict(truth.attrs)
    undefined, off = u.copy(), u.copy()
    undefined[:, 100:] = np.nan
    undefined[0, 50, 1] = np.nan  # one component of one state: the whole state is left out of both
    off[:, 100:] *= 3.0
    off[0, 50, 1] = 1e3
    files = {}
    for name, values in (("undefined", undefined), ("off", off)):
        files[name] = write_netcdf(trajectory_dataset(values, times, state_dim="component", state_coords=["x", "y", "z"],
                                                      case_toml=attrs["case_toml"]), tmp_path / f"{name}.nc")
    metrics = evaluate_json(capsys, files["off"], files["undefined"])
    assert metrics["kl_divergence"]["value"] == 0.0 and metrics["statistics_finite_share"] == 1.0
    # the undefined truth also ends the valid time: a lower bound, said so
    assert any("undefined before the horizon for" in note and "(a lower bound)" in note for note in metrics["notes"])


def test_a_model_that_blows_up_at_once_has_no_attractor_statistics(tmp_path, capsys):
    """Equal to the truth at the start, NaN after: its few first states (the truth's) were compared with
    the truth's whole horizon, and the spectrum distance and KL came out better than a stable closure's."""
    truth = simulate(tmp_path, "ks_truth", KS)
    with xr.open_dataset(truth) as data:
        u, times, x, attrs = data.u.values.copy(), data.time.values, data.x.values, dict(data.attrs)
    u[:, 2:] = np.nan
    members = u.shape[0]
    dataset = trajectory_dataset(u, times, state_dim="x", state_coords=x, status=np.ones(members, dtype=np.int8),
                                 blowup_time=np.full(members, times[2]), case_toml=attrs["case_toml"])
    metrics = evaluate_json(capsys, write_netcdf(dataset, tmp_path / "blown.nc"), truth)
    assert metrics["spectrum"]["distance"] is None and metrics["kl_divergence"]["value"] is None
    assert metrics["statistics_finite_share"] == pytest.approx(2 / times.size)
    assert any("statistics undefined: only" in note and "of the predicted states" in note for note in metrics["notes"])


def test_two_body_reports_invariant_drift(tmp_path, capsys):
    two_body = '[case]\nname = "tb"\n[system]\nname = "two_body"\n[time]\ndt = 0.01\nn_steps = 300\n' \
               '[initial_condition]\nmembers = 2\n'
    truth = simulate(tmp_path, "tb_truth", two_body)
    euler = simulate(tmp_path, "tb_euler", two_body, 'time.integrator="euler"')
    drift = evaluate_json(capsys, euler, truth)["invariant_drift"]
    assert set(drift) == {"energy", "angular_momentum"}
    assert drift["energy"]["reference"]["max"] < 1e-6 < 1e-2 < drift["energy"]["rollout"]["min"]


def test_an_invariant_undefined_along_a_finite_rollout_is_explained(tmp_path, capsys):
    """A learned Lotka-Volterra model may drive a population below zero: its first integral (a
    logarithm) is undefined there, and the report says why that member has no drift."""
    lotka = '[case]\nname = "lv"\n[system]\nname = "lotka_volterra"\n[time]\ndt = 0.01\nn_steps = 200\n' \
            '[initial_condition]\nmembers = 3\ndistribution = "uniform_box"\nlow = [0.5, 0.5]\nhigh = [2.0, 2.0]\n'
    truth = simulate(tmp_path, "lv_truth", lotka)
    with xr.open_dataset(truth) as ds:
        u, times, attrs = ds.u.values.copy(), ds.time.values, dict(ds.attrs)
    u[1, 10:, 0] = -0.5  # finite, but outside x > 0
    rollout = write_netcdf(trajectory_dataset(u, times, state_dim="component", state_coords=["prey", "predator"],
                                              case_toml=attrs["case_toml"]), tmp_path / "negative.nc")
    metrics = evaluate_json(capsys, rollout, truth)
    assert metrics["stable_fraction"] == 1.0 and metrics["invariant_drift"]["first_integral"]["rollout"]["count"] == 2
    assert any("first_integral drift: undefined for 1 of 3" in note and "the other 2" in note
               for note in metrics["notes"])
    assert not any("undefined" in note for note in evaluate_json(capsys, truth, truth)["notes"])
    u[:, 10:, 0] = -0.5  # every member: nothing left to summarise, and the note says so
    rollout = write_netcdf(trajectory_dataset(u, times, state_dim="component", state_coords=["prey", "predator"],
                                              case_toml=attrs["case_toml"]), tmp_path / "all_negative.nc")
    notes = evaluate_json(capsys, rollout, truth)["notes"]
    assert any("undefined for 3 of 3" in note and "no member has a drift to summarise" in note for note in notes)


def test_lyapunov_of_the_bare_host_equals_the_truths(tmp_path, lorenz_truth, capsys):
    case = tmp_path / "truth.toml"  # written by the fixture
    # host dt = sample interval / substeps = 0.01: the bare host is the true system's solver
    lyapunov = evaluate_json(capsys, lorenz_truth, lorenz_truth, "--lyapunov", "--case", case,
                             "--set", "hybrid.substeps=10")["lyapunov"]
    assert lyapunov["closure"].startswith("none") and lyapunov["relative_difference"] == 0.0
    assert lyapunov["model"]["exponent"] == lyapunov["truth"]["exponent"]  # same solver, same states and probes
    assert 0.75 < lyapunov["truth"]["exponent"] < 1.05  # 3 members x 22 time units of Lorenz-63 (0.9056)


def test_lyapunov_finds_the_rollouts_closure_from_its_closure_file_attribute(tmp_path, lorenz_truth, capsys):
    """``--lyapunov`` without ``--closure`` uses the file the rollout records (``closure_file``) when it
    is still there with the recorded checksum; a file changed since is refused, naming both."""
    from hybridnde.models import MLPClosure

    case = tmp_path / "truth.toml"
    closure = tmp_path / "closure.pt"
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    save_closure(closure, MLPClosure(state_dim=3, width=4, depth=1, activation="tanh").double(),
                 case_toml=load_case(case).to_toml())
    rollout = tmp_path / "rollout.nc"
    assert main(["rollout", str(case), "--closure", str(closure), "--out", str(rollout), "--no-progress",
                 "--set", "rollout.initial_conditions='" + str(lorenz_truth) + "'", "--set", "rollout.steps=200",
                 "--set", "rollout.members=3"]) == 0
    given = evaluate_json(capsys, rollout, lorenz_truth, "--lyapunov", "--closure", closure)["lyapunov"]
    found = evaluate_json(capsys, rollout, lorenz_truth, "--lyapunov")["lyapunov"]
    assert found == given and found["model"]["exponent"] != found["truth"]["exponent"]
    save_closure(closure, MLPClosure(state_dim=3, width=4, depth=1, activation="tanh").double(),
                 case_toml=load_case(case).to_toml())
    assert main(["evaluate", str(rollout), "--reference", str(lorenz_truth), "--lyapunov"]) == 2
    assert "(the rollout's closure_file) is not the closure" in capsys.readouterr().err


def test_bad_input_exits_2_naming_the_problem(tmp_path, lorenz_truth, capsys):
    ks = simulate(tmp_path, "ks", KS)
    with xr.open_dataset(lorenz_truth) as truth:  # the same states, sampled half-way between the truth's times
        shifted = trajectory_dataset(truth.u.values, truth.time.values + 0.05, state_dim="component",
                                     state_coords=["x", "y", "z"])
    other_times = write_netcdf(shifted, tmp_path / "other_times.nc")
    fewer = simulate(tmp_path, "fewer", LORENZ, "initial_condition.members=2")
    with xr.open_dataset(lorenz_truth) as truth:
        foreign = trajectory_dataset(truth.u.values, truth.time.values, state_dim="component",
                                     state_coords=["x", "y", "z"], closure_checksum="abc123")
    foreign = write_netcdf(foreign, tmp_path / "foreign.nc")
    with xr.open_dataset(lorenz_truth) as truth:  # another system, with more members than the reference
        planets = trajectory_dataset(np.ones((truth.sizes["member"] + 5, truth.sizes["time"], 4)), truth.time.values,
                                     state_dim="component", state_coords=["x", "y", "vx", "vy"])
    planets = write_netcdf(planets, tmp_path / "planets.nc")
    with xr.open_dataset(lorenz_truth) as truth:
        zeros = trajectory_dataset(np.zeros(truth.u.shape), truth.time.values, state_dim="component",
                                   state_coords=["x", "y", "z"])
    zeros = write_netcdf(zeros, tmp_path / "zeros.nc")
    ks_closure = tmp_path / "ks_closure.pt"  # a periodic CNN runs on 3 components too: only its case tells
    save_closure(ks_closure, PeriodicCNNClosure(channels=2, depth=1, kernel_size=3).double(),
                 case_toml=load_case(tmp_path / "ks.toml").to_toml())
    cases = [
        ([tmp_path / "missing.nc", "--reference", lorenz_truth, "--figures", tmp_path / "new" / "figures"],
         "no such file"),  # (and no figures folder left behind)
        ([lorenz_truth, "--reference", tmp_path / "missing.nc"], "no such file"),
        ([ks, "--reference", lorenz_truth], "holds kuramoto_sivashinsky states (case 'ks_eval') and"),  # not the dims
        ([planets, "--reference", lorenz_truth], "must name the same state variables"),  # not "lacks members"
        ([lorenz_truth, "--reference", zeros], "the reference states are all zero"),  # was a traceback
        ([other_times, "--reference", lorenz_truth], "share 0 time(s)"),
        ([lorenz_truth, "--reference", fewer], "lacks members [2]"),
        ([lorenz_truth, "--reference", fewer, "--match-members", "index"], "at least as many"),
        ([lorenz_truth, "--reference", lorenz_truth, "--out", tmp_path / "metrics.txt"], ".json"),
        ([lorenz_truth, "--reference", lorenz_truth, "--set", "evaluate.vpt_threshold=0.3"], "--case"),
        ([lorenz_truth, "--reference", lorenz_truth, "--threshold", "-1"], "positive"),
        ([lorenz_truth, "--reference", lorenz_truth, "--threshold", "inf"], "finite positive"),
        ([foreign, "--reference", lorenz_truth, "--lyapunov", "--case", tmp_path / "truth.toml"], "--closure"),
        ([lorenz_truth, "--reference", lorenz_truth, "--case", tmp_path / "ks.toml"],
         "is a kuramoto_sivashinsky case but"),
        ([lorenz_truth, "--reference", lorenz_truth, "--time-tolerance", "nan"], "--time-tolerance"),
        ([lorenz_truth, "--reference", lorenz_truth, "--closure", tmp_path / "nope.pt"], "only --lyapunov uses it"),
        ([lorenz_truth, "--reference", lorenz_truth, "--figures", tmp_path / "truth.toml"], "--figures"),
        ([lorenz_truth, "--reference", lorenz_truth, "--lyapunov", "--case", tmp_path / "truth.toml",
          "--closure", ks_closure], "trained for case 'ks_eval' with host system 'kuramoto_sivashinsky' (this case: 'lorenz63')"),
    ]
    for arguments, message in cases:
        capsys.readouterr()
        assert main(["evaluate", *map(str, arguments)]) == 2, arguments
        error = capsys.readouterr().err
        assert "hybridnde evaluate: error:" in error and message in error, (arguments, error)
    assert not (tmp_path / "metrics.txt").exists() and not (tmp_path / "new").exists()
    # fewer reference members are fine the other way round, and by index
    assert main(["evaluate", str(fewer), "--reference", str(lorenz_truth), "--match-members", "index"]) == 0


def test_components_in_another_order_are_paired_by_name():
    """A reference storing (z, x, y) and a rollout storing (x, y, z): a 3-cycle, since a swap is its
    own inverse and would hide an inverted permutation. The rollout here is the reference reordered,
    so every aligned value must agree."""
    from hybridnde.alignment import align_trajectories

    values = np.random.default_rng(0).standard_normal((2, 5, 3))  # (member, time, [z, x, y])
    times = 0.1 * np.arange(5)
    reference = trajectory_dataset(values, times, state_dim="component", state_coords=["z", "x", "y"])
    rollout = trajectory_dataset(values[..., [1, 2, 0]], times, state_dim="component", state_coords=["x", "y", "z"])
    pair = align_trajectories(rollout, reference)
    np.testing.assert_array_equal(pair.predicted, pair.truth)
    np.testing.assert_array_equal(pair.reference_initial, values[:, 0][:, [1, 2, 0]])
    assert [str(name) for name in pair.state_coords] == ["x", "y", "z"]


def test_a_file_without_member_coordinate_is_said_to_be_paired_by_position():
    """xarray numbers the members of a file without a member coordinate 0, 1, ...: the pairing by label
    was then a pairing by position, silently. It is noted; with labels on both sides nothing is."""
    from hybridnde.alignment import align_trajectories

    values = np.random.default_rng(0).standard_normal((2, 3, 3))
    times = 0.1 * np.arange(3)
    reference = trajectory_dataset(values, times, state_dim="component", state_coords=["x", "y", "z"])
    assert not align_trajectories(reference, reference).notes
    unlabelled = reference.drop_vars("member")
    pair = align_trajectories(unlabelled, reference, names=("run.nc", "truth.nc"))
    assert pair.notes == ("run.nc without a member coordinate: members taken as 0, 1, ... (paired by position)",)
    np.testing.assert_array_equal(pair.predicted, pair.truth)
    both = align_trajectories(unlabelled, unlabelled, names=("run.nc", "truth.nc"))
    assert "run.nc and truth.nc without a member coordinate" in both.notes[0]
    assert not align_trajectories(unlabelled, reference, match_members="index").notes


def test_a_float32_time_coordinate_keeps_every_time():
    """A rollout whose time is float32 (an external file): t = 100 rounds by up to 4e-6, above the
    default 1e-6 x dt, and 752 of 1001 times were dropped with only a note."""
    from hybridnde.alignment import align_trajectories

    times = 0.1 * np.arange(1001)
    values = np.random.default_rng(0).standard_normal((2, times.size, 3))
    reference = trajectory_dataset(values, times, state_dim="component", state_coords=["x", "y", "z"])
    rollout = reference.assign_coords(time=times.astype(np.float32))
    pair = align_trajectories(rollout, reference)
    assert pair.times.size == times.size and not pair.notes
    # a time between two samples is still no common time
    shifted = reference.assign_coords(time=times + 0.05)
    with pytest.raises(DataError, match="share 0 time"):
        align_trajectories(shifted, reference)
    # at t = 1e6 float32 rounds by 0.06: the tolerance that absorbs it paired a reference half a sample
    # off with every time (101 of 101, no note); now refused
    late = 1e6 + times[:101]
    late_rollout = trajectory_dataset(values[:, :101], late, state_dim="component", state_coords=["x", "y", "z"])
    late_rollout = late_rollout.assign_coords(time=late.astype(np.float32))
    half_off = trajectory_dataset(values[:, :101], late + 0.05, state_dim="component", state_coords=["x", "y", "z"])
    with pytest.raises(DataError, match="too coarse to pair samples .* store time in float64"):
        align_trajectories(late_rollout, half_off)


def test_grids_that_do_not_share_their_points_and_other_dimension_orders_are_refused():
    """A cell-centred reference (x + dx/2) was compared with a cell-edge rollout: the same sine read 14.7%
    off. A reference stored u(time, member, ...) was paired as if (member, time) with no error. Grids that
    share their points are compared (float32 coordinates too), the coarse one every ratio-th fine point."""
    from hybridnde.alignment import align_trajectories

    length, times = 22.0, 0.1 * np.arange(4)
    fine_x, coarse_x = np.arange(64) * length / 64, np.arange(32) * length / 32

    def sine(x):
        return np.broadcast_to(np.sin(6 * np.pi * x / length), (2, times.size, x.size)).copy()

    reference = trajectory_dataset(sine(fine_x), times, state_dim="x", state_coords=fine_x)
    rollout = trajectory_dataset(sine(coarse_x), times, state_dim="x", state_coords=coarse_x.astype(np.float32))
    pair = align_trajectories(rollout, reference)
    np.testing.assert_allclose(pair.predicted, pair.truth, atol=1e-6)
    centred = coarse_x + length / 64
    shifted = trajectory_dataset(sine(centred), times, state_dim="x", state_coords=centred)
    with pytest.raises(DataError, match="grid points of rollout are not points of reference's grid .*0.5 of a cell"):
        align_trajectories(shifted, reference)
    with pytest.raises(DataError, match=r"in that order \(dataset.transpose"):
        align_trajectories(rollout, reference.transpose("time", "member", "x"))


def component_pair(predicted: np.ndarray, truth: np.ndarray, times: np.ndarray):
    from hybridnde.alignment import AlignedPair

    members = predicted.shape[0]
    return AlignedPair(times=times, predicted=predicted, truth=truth, members=np.arange(members),
                       reference_members=np.arange(members), status=np.zeros(members, np.int8),
                       blowup_time=np.full(members, np.nan), state_dim="component",
                       state_coords=np.array(["x", "y", "z"]), reference_initial=truth[:, 0])


def lorenz_like(members: int = 3, n_times: int = 200) -> tuple[np.ndarray, np.ndarray]:
    times = np.arange(n_times) * 0.1
    phases = np.random.default_rng(0).random((members, 1, 3)) * 6
    return times, (np.sin(times[None, :, None] * np.array([1.0, 1.3, 0.7]) + phases) * np.array([8.0, 9.0, 10.0])
                   + np.array([0.0, 0.0, 24.0]))


def test_statistics_of_component_states_follow_the_finite_share_rule():
    """A component model that blows up at once has no statistics (the field case was tested, this branch
    not); exactly half its samples finite is enough; the lower-bound note counts the members still within
    the threshold where the truth ends, not those that left it before."""
    from hybridnde.evaluate import compute_metrics

    times, truth = lorenz_like()
    blown = truth.copy()
    blown[:, 2:] = np.nan
    metrics = compute_metrics(component_pair(blown, truth, times))
    assert math.isnan(metrics["kl_divergence"]["value"])
    assert all(math.isnan(value) for value in metrics["kl_divergence"]["per_component"].values())
    times2, truth2 = lorenz_like(members=2)
    half = truth2.copy()
    half[1] = np.nan
    metrics = compute_metrics(component_pair(half, truth2, times2))
    assert metrics["statistics_finite_share"] == 0.5 and metrics["kl_divergence"]["value"] == 0.0
    ended = truth.copy()
    ended[:, 100:] = np.nan
    predicted = truth.copy()
    predicted[0, 50:] += 100.0  # member 0 leaves the threshold before the truth ends
    metrics = compute_metrics(component_pair(predicted, ended, times))
    assert any("undefined before the horizon for 2 member(s)" in note for note in metrics["notes"]), metrics["notes"]


def _sine_pair(n_fine, n_coarse, *, shift=0.0, coarse_dtype=np.float64):
    from hybridnde.io import trajectory_dataset

    length, times = 22.0, 0.1 * np.arange(4)
    fine_x = np.arange(n_fine) * length / n_fine
    coarse_x = np.arange(n_coarse) * length / n_coarse + shift * length / n_coarse

    def sine(x):
        return np.broadcast_to(np.sin(2 * np.pi * x / length), (2, times.size, x.size)).copy()

    reference = trajectory_dataset(sine(fine_x), times, state_dim="x", state_coords=fine_x)
    rollout = trajectory_dataset(sine(coarse_x), times, state_dim="x", state_coords=coarse_x.astype(coarse_dtype))
    return rollout, reference


def test_a_rollout_in_another_dimension_order_is_refused():
    from hybridnde.alignment import align_trajectories
    from hybridnde.io import DataError

    rollout, reference = _sine_pair(64, 32)
    with pytest.raises(DataError, match="in that order"):
        align_trajectories(rollout.transpose("time", "member", "x"), reference)


def test_a_grid_shifted_by_a_twentieth_of_a_cell_is_refused():
    from hybridnde.alignment import align_trajectories
    from hybridnde.io import DataError

    rollout, reference = _sine_pair(64, 32, shift=0.05)
    with pytest.raises(DataError, match="not points of"):
        align_trajectories(rollout, reference)
    align_trajectories(*_sine_pair(64, 32, shift=1e-4))  # within 1e-3 of a cell


def test_float32_coordinates_of_a_very_fine_grid_pass():
    from hybridnde.alignment import align_trajectories

    rollout, reference = _sine_pair(100_000, 100_000, coarse_dtype=np.float32)  # x not dyadic: rounded
    align_trajectories(rollout, reference)


def test_the_text_summary_shows_the_field_rows_and_the_finite_share():
    """hybridnde evaluate's table: the spatial mean drift, the spectrum's compared modes, and for a model
    that blew up the share of finite states its statistics are over (the report said it, the table not)."""
    from hybridnde.evaluate import format_summary

    summary = {"median": 0.17, "p16": 0.12, "p84": 0.28}
    metrics = {"spread_percentiles": [16.0, 84.0], "members": 16, "times": 401, "horizon": 100.0, "threshold": 0.5,
               "valid_prediction_time": summary, "reached_horizon_fraction": 0.0, "stable_fraction": 0.0,
               "initial_error": summary, "mean_drift": {"rollout": summary, "reference": {"median": 4.5e-17}},
               "spectrum": {"distance": 4.28, "compared_modes": [1, 2, 3, 4, 5, 6, 7, 8]},
               "kl_divergence": {"value": 2.28}, "statistics_finite_share": 0.626, "rollout": "b.nc",
               "reference": "r.nc"}
    text = format_summary(metrics)
    assert "spatial mean drift" in text and "(of the truth's rms; reference 4.5e-17)" in text
    assert "4.28 (mean |log10 E/E*|, 8 modes in 1-8; over the 62.6% finite states)" in text
    assert "2.28 nats (50-bin histograms; over the 62.6% finite states)" in text
    assert "finite states" not in format_summary({**metrics, "statistics_finite_share": 1.0})


def test_a_rollout_whose_members_all_start_blown_up_is_not_said_to_start_apart(tmp_path, lorenz_truth, capsys):
    """Every member non-finite from the first time: the note asked whether the files share their initial
    conditions (median initial error inf), not a word of the blow-ups, which the status says."""
    with xr.open_dataset(lorenz_truth) as ds:
        u, times, attrs = ds.u.values.copy(), ds.time.values, dict(ds.attrs)
    u[:] = np.nan
    status = np.full(u.shape[0], 1, dtype=np.int8)
    rollout = write_netcdf(trajectory_dataset(u, times, state_dim="component", state_coords=["x", "y", "z"],
                                              case_toml=attrs["case_toml"], status=status,
                                              blowup_time=np.zeros(u.shape[0])), tmp_path / "blown.nc")
    metrics = evaluate_json(capsys, rollout, lorenz_truth)
    assert metrics["stable_fraction"] == 0.0
    assert not any("start apart" in note for note in metrics["notes"])


def test_every_figure_evaluate_draws_is_one_a_later_evaluation_replaces():
    """A figure added to write_figures but not to EVALUATION_FIGURES would stay beside a later
    evaluation that does not draw it (publish_evaluation removes only the names it knows)."""
    import inspect
    import re

    from hybridnde.evaluation_figures import EVALUATION_FIGURES, write_figures

    drawn = re.findall(r'directory / "(\w+)\.png"', inspect.getsource(write_figures))
    assert len(drawn) >= 5 and set(drawn) == set(EVALUATION_FIGURES)


def test_a_ctrl_c_while_the_figures_are_put_in_place_is_held_until_the_set_is_whole(tmp_path, monkeypatch):
    import os
    import signal
    from types import SimpleNamespace

    import hybridnde.evaluation_figures as evaluation_figures

    folder, staging, out = tmp_path / "figures", tmp_path / "staging", tmp_path / "metrics.json"
    folder.mkdir()
    staging.mkdir()
    for name in ("error_growth", "phase_portrait"):
        (folder / f"{name}.png").write_bytes(b"earlier")
        (staging / f"{name}.png").write_bytes(b"new")
    out.write_text("{}\n")

    def replace_then_ctrl_c(source, target):
        os.replace(source, target)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the first figure is in place

    monkeypatch.setattr(evaluation_figures, "os", SimpleNamespace(replace=replace_then_ctrl_c))
    with pytest.raises(KeyboardInterrupt):
        evaluation_figures.publish_evaluation({"stable_fraction": 1.0}, out, drawn=sorted(staging.iterdir()),
                                              folder=folder, names=evaluation_figures.EVALUATION_FIGURES)
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == {"error_growth.png": b"new",
                                                                           "phase_portrait.png": b"new"}
    assert json.loads(out.read_text()) == {"stable_fraction": 1.0, "figures": [str(folder / "error_growth.png"),
                                                                              str(folder / "phase_portrait.png")]}
