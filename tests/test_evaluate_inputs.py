"""`hybridnde evaluate`'s input checks: the two files' true systems, the time coordinate, folders.

Every refusal is exit 2 before any metric is computed, with a message naming the field and the fix.
"""
import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from hybridnde.cli import main
from hybridnde.io import DataError, open_trajectories, trajectory_dataset, write_netcdf
from test_cli_evaluate import KS  # the same small KS case

LORENZ = """
[case]
name = "l63_inputs"
[system]
name = "lorenz63"
[time]
dt = 0.01
n_steps = 300
save_every = 10
[initial_condition]
distribution = "gaussian"
value = [1.2, 2.1, 1.7]
std = [1.0]
members = 3
seed = 5
"""



def run(tmp_path, command, name, text, *overrides, **extra):
    case = tmp_path / f"{name}.toml"
    case.write_text(text)
    out = tmp_path / f"{name}.nc"
    arguments = [command, str(case), "--out", str(out)]
    for override in overrides:
        arguments += ["--set", override]
    if command == "rollout":
        arguments.append("--no-progress")
    assert main(arguments) == 0
    return out


def evaluate(capsys, rollout, reference, *extra):
    """``(exit status, stdout, stderr)`` of ``hybridnde evaluate ROLLOUT --reference REFERENCE --json``."""
    capsys.readouterr()
    status = main(["evaluate", str(rollout), "--reference", str(reference), "--json", *map(str, extra)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def lorenz(tmp_path):
    """A Lorenz-63 truth (rho = 28) and a bare-host rollout of it from its own initial states."""
    truth = run(tmp_path, "simulate", "truth", LORENZ)
    rollout = run(tmp_path, "rollout", "rollout", LORENZ, f"rollout.initial_conditions={truth}",
                  "rollout.members=3", "rollout.steps=300", "rollout.save_every=10")
    return truth, rollout


def test_a_rollout_scored_against_a_truth_of_another_system_is_refused(tmp_path, lorenz, capsys):
    truth, rollout = lorenz
    other = run(tmp_path, "simulate", "truth35", LORENZ, "system.rho=35.0")
    status, out, err = evaluate(capsys, rollout, other)
    assert status == 2 and out == ""  # no metrics table
    assert "system.rho (28.0 -> 35.0) (rollout -> reference)" in err and "hybridnde simulate" in err, err
    assert str(rollout) in err and str(other) in err
    # the same files of the same system are scored
    status, out, err = evaluate(capsys, rollout, truth)
    assert status == 0 and json.loads(out)["valid_prediction_time"]["per_member"] == pytest.approx([3.0] * 3)


def test_a_case_with_other_physics_than_the_files_is_refused(tmp_path, lorenz, capsys):
    truth, rollout = lorenz
    status, _, err = evaluate(capsys, rollout, truth, "--case", tmp_path / "truth.toml", "--set", "system.sigma=9.0")
    assert status == 2 and "system.sigma (10.0 -> 9.0) (files -> --case)" in err, err
    assert evaluate(capsys, rollout, truth, "--case", tmp_path / "truth.toml")[0] == 0


def test_a_simulation_of_perturbed_physics_is_scored_as_a_model_with_a_note(tmp_path, lorenz, capsys):
    truth, _ = lorenz
    perturbed = run(tmp_path, "simulate", "perturbed", LORENZ, "system.rho=28.3")
    status, out, _ = evaluate(capsys, perturbed, truth)
    assert status == 0
    notes = json.loads(out)["notes"]
    assert any("system.rho (28.3 -> 28.0)" in note and "simulated for another system" in note for note in notes)


def test_files_without_a_stored_case_are_not_compared(tmp_path, lorenz, capsys):
    truth, rollout = lorenz
    with xr.open_dataset(rollout) as opened:
        bare = trajectory_dataset(opened.u.values, opened.time.values, state_dim="component",
                                  state_coords=["x", "y", "z"])
    bare = write_netcdf(bare, tmp_path / "bare.nc")
    other = run(tmp_path, "simulate", "truth35", LORENZ, "system.rho=35.0")
    assert evaluate(capsys, bare, other)[0] == 0


def test_a_hybrid_host_on_a_coarser_grid_without_a_term_is_still_the_truths_system(tmp_path, capsys):
    """[hybrid.system] changes the host, not the true system: a rollout on 32 points with half the
    nonlinear term is scored against the 64-point truth; a truth with another domain is refused."""
    truth = run(tmp_path, "simulate", "ks_truth", KS)
    rollout = run(tmp_path, "rollout", "ks_rollout", KS, f"rollout.initial_conditions={truth}", "rollout.members=2",
                  "rollout.steps=40", "hybrid.system.n_points=32", "hybrid.system.nonlinear_coefficient=0.5")
    status, out, _ = evaluate(capsys, rollout, truth)
    assert status == 0
    assert any("restricted spectrally from 64" in note for note in json.loads(out)["notes"])
    longer = run(tmp_path, "simulate", "ks_longer", KS, "system.domain_length=30.0")
    status, _, err = evaluate(capsys, rollout, longer)
    assert status == 2 and "system.domain_length (22.0 -> 30.0)" in err, err


def test_a_rollout_on_a_coarser_grid_of_the_same_system_is_scored_not_refused(tmp_path, capsys):
    """system.n_points is how the system is discretised, not which system it is: a 32-point rollout or
    simulation of the 64-point truth's system is scored (restricted spectrally), without a note calling
    it another system, and a --case on 32 points is the files' system too."""
    truth = run(tmp_path, "simulate", "ks_truth", KS)
    coarse = run(tmp_path, "rollout", "ks_coarse", KS, f"rollout.initial_conditions={truth}", "rollout.members=2",
                 "rollout.steps=40", "system.n_points=32")
    status, out, err = evaluate(capsys, coarse, truth)
    assert status == 0, err
    assert any("restricted spectrally from 64" in note for note in json.loads(out)["notes"])
    coarse_simulation = run(tmp_path, "simulate", "ks_coarse_simulation", KS, "system.n_points=32")
    status, out, err = evaluate(capsys, coarse_simulation, truth)
    assert status == 0, err
    assert not any("simulated for another system" in note for note in json.loads(out)["notes"])
    status, _, err = evaluate(capsys, coarse, truth, "--case", tmp_path / "ks_truth.toml", "--set", "system.n_points=32")
    assert status == 0, err


def without_time(source, path):
    with xr.open_dataset(source) as opened:
        opened.load().drop_vars("time").to_netcdf(path)
    return path


def test_a_file_without_time_values_is_refused_not_paired_by_position(tmp_path, lorenz, capsys):
    truth, rollout = lorenz
    notime = without_time(truth, tmp_path / "notime.nc")
    with xr.open_dataset(notime) as opened:
        assert "time" not in opened.variables and opened.sizes["time"] == 31  # the defect's input
    for pair in ((rollout, notime), (notime, truth)):
        status, out, err = evaluate(capsys, *pair)
        assert status == 2 and out == "", err
        assert f"{notime}: u has a time dimension but the file has no time coordinate variable" in err, err
    # training data are refused the same way (it said "samples are 1..1 apart")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "truth.toml"), "--data", str(notime)]) == 2
    assert "no time coordinate variable" in capsys.readouterr().err


@pytest.mark.parametrize("times, found", [(lambda t: t[::-1], "time[0] = 3 is followed by 2.9"),
                                          (lambda t: np.r_[t[:5], t[4:-1]], "time[4] = 0.4 is followed by 0.4"),
                                          (lambda t: np.r_[t[:-1], np.nan], "1 non-finite")])
def test_a_time_coordinate_must_be_finite_and_increase(tmp_path, lorenz, capsys, times, found):
    truth, rollout = lorenz
    with xr.open_dataset(truth) as opened:
        bad = trajectory_dataset(opened.u.values, times(opened.time.values), state_dim="component",
                                 state_coords=["x", "y", "z"])
    bad = write_netcdf(bad, tmp_path / "bad.nc")
    with pytest.raises(DataError, match="time") as raised:
        open_trajectories(bad, load=False)
    assert found in str(raised.value)
    if "non-finite" not in found:
        assert "time must increase" in str(raised.value) and "sortby('time')" in str(raised.value)
    status, _, err = evaluate(capsys, rollout, bad)
    assert status == 2 and found in err, err


@pytest.mark.parametrize("units, decoded", [("days since 2000-01-01", "dates"), ("hours", "durations")])
def test_a_time_coordinate_of_dates_or_durations_is_refused(tmp_path, units, decoded):
    """xarray decodes CF date units to datetime64 (and may decode durations to timedelta64): as numbers
    those are nanoseconds, so a file starting on 2000-01-01 would start at t = 9.5e17."""
    dataset = trajectory_dataset(np.zeros((2, 3, 3)), [0.0, 0.5, 1.0], state_dim="component", state_coords=["x", "y", "z"])
    dataset["time"].attrs["units"] = units
    write_netcdf(dataset, tmp_path / "dated.nc")
    with xr.open_dataset(tmp_path / "dated.nc", decode_timedelta=True) as opened, \
            pytest.MonkeyPatch.context() as patch:  # (whichever way this xarray decodes durations)
        patch.setattr(xr, "open_dataset", lambda *args, **kwargs: opened.copy())
        with pytest.raises(DataError, match=rf"dated.nc: time is decoded as {decoded} \(units '{units}'\), but these "
                                            r"systems' time is nondimensional: write the times as plain numbers"):
            open_trajectories(tmp_path / "dated.nc")


def test_a_folder_is_named_as_a_folder(tmp_path, lorenz, capsys):
    truth, _ = lorenz
    with pytest.raises(DataError, match="is a folder, not a NetCDF file; pass a file in it") as raised:
        open_trajectories(tmp_path)
    assert "rollout.nc" in str(raised.value) and "no such file" not in str(raised.value)
    status, _, err = evaluate(capsys, tmp_path, truth)
    assert status == 2 and f"{tmp_path}: is a folder" in err, err


def _scored_pair(tmp_path, reference_times, rollout_times, *, blown=None, status=None):
    """Two members on a circle, the rollout equal to the reference where both are given; ``blown``:
    (member, time) from which the rollout is NaN, with that blow-up time and status recorded."""
    def circle(times, member):
        return np.stack([np.cos(times + member), np.sin(times + member)], -1) + 3.0

    reference = np.stack([circle(reference_times, m) for m in range(2)])
    predicted = np.stack([circle(rollout_times, m) for m in range(2)])
    blowup_time, flags = np.full(2, np.nan), np.zeros(2, np.int8)
    if blown is not None:
        member, time = blown
        predicted[member, rollout_times >= time] = np.nan
        blowup_time[member], flags[member] = time, 1
    paths = []
    for name, times, u, extra in (("reference", reference_times, reference, {}),
                                  ("rollout", rollout_times, predicted, {"status": flags, "blowup_time": blowup_time})):
        dataset = trajectory_dataset(u, times, state_dim="component", state_coords=["x", "y"])
        for key, values in extra.items():
            dataset[key] = ("member", values)
        paths.append(write_netcdf(dataset, tmp_path / f"{name}.nc"))
    return paths


def test_a_blow_up_after_the_last_time_compared_is_outside_the_horizon(tmp_path):
    """A rollout to t = 20 scored against a reference to t = 10: the member that blew up at 15.5 was
    valid to the horizon and stable over every time scored, but counted as neither."""
    from hybridnde.evaluate import evaluate_files

    rollout, reference = _scored_pair(tmp_path, np.arange(11.0), np.arange(21.0), blown=(1, 15.5))[::-1]
    metrics = evaluate_files(rollout, reference)
    assert metrics["horizon"] == 10.0 and metrics["valid_prediction_time"]["per_member"] == [10.0, 10.0]
    assert (metrics["reached_horizon_fraction"], metrics["stable_fraction"], metrics["stable_members"]) == (1.0, 1.0, 2)
    assert any("1 member(s) blew up after the last time compared (10)" in note for note in metrics["notes"])
    rollout, reference = _scored_pair(tmp_path, np.arange(11.0), np.arange(21.0), blown=(1, 5.5))[::-1]
    metrics = evaluate_files(rollout, reference)  # within the horizon: failed as before
    assert (metrics["reached_horizon_fraction"], metrics["stable_members"]) == (0.5, 1)
    assert metrics["valid_prediction_time"]["per_member"][1] == pytest.approx(5.0)


def _damaged_copy(source, path):
    """``source`` with the middle fifth of its bytes overwritten: the header (start of the file) opens, a
    compressed chunk of u does not decode (netCDF4: "RuntimeError: NetCDF: HDF error")."""
    data = bytearray(source.read_bytes())
    start, stop = 2 * len(data) // 5, 3 * len(data) // 5
    data[start:stop] = b"\xff" * (stop - start)
    path.write_bytes(bytes(data))
    return path


def test_a_file_whose_data_cannot_be_read_is_bad_input_for_evaluate_and_simulate(tmp_path, capsys):
    """The header opens, a chunk does not: a RuntimeError traceback and exit 1 (evaluate reads lazily,
    simulate's checksum of initial_condition.file read it too), now exit 2 naming the file."""
    truth = run(tmp_path, "simulate", "truth", KS, "initial_condition.members=8", "time.n_steps=400")
    damaged = _damaged_copy(truth, tmp_path / "damaged.nc")
    for rollout, reference in ((truth, damaged), (damaged, truth)):
        status, _, error = evaluate(capsys, rollout, reference)
        assert status == 2 and f"{damaged}: its data cannot be read (NetCDF: HDF error); make or copy the file again" \
            in error, error
    case = tmp_path / "from_file.toml"
    case.write_text(KS.replace("members = 2", f'members = 2\ndistribution = "file"\nfile = "{damaged}"'))
    assert main(["simulate", str(case), "--out", str(tmp_path / "again.nc")]) == 2
    assert f"{damaged}: its data cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "again.nc").exists()


def test_a_file_without_members_or_without_grid_points_is_named(tmp_path, lorenz, capsys):
    """No members: a ValueError traceback (a zero-size minimum) as the reference, numpy's reshape message
    as the prediction. A field without an x coordinate: "covers a domain of length 64" (xarray's 0..63)."""
    truth, _ = lorenz
    with xr.open_dataset(truth) as data:
        empty = data.load().isel(member=[])  # (as ds.where(ds.status == 0, drop=True) of a run that all blew up)
    for variable in empty.variables.values():
        variable.encoding = {}  # (the source's chunk sizes do not fit an empty dimension)
    empty.to_netcdf(tmp_path / "empty.nc")
    for rollout, reference in ((truth, tmp_path / "empty.nc"), (tmp_path / "empty.nc", truth)):
        status, _, error = evaluate(capsys, rollout, reference)
        assert status == 2 and "empty.nc: holds no members; give a file with at least one" in error, error
    ks = run(tmp_path, "simulate", "ks", KS)
    with xr.open_dataset(ks) as data:
        data.drop_vars("x").to_netcdf(tmp_path / "gridless.nc")
    status, _, error = evaluate(capsys, tmp_path / "gridless.nc", ks)
    assert status == 2 and "gridless.nc: u(member, time, x) without an x coordinate, the grid points" in error, error


def _columns_reversed(source, path):
    with xr.open_dataset(source) as data:
        data.load().isel(component=slice(None, None, -1)).to_netcdf(path)  # the same states, columns reversed
    return path


def test_ode_columns_reach_the_solver_metrics_by_name_and_a_simulation_is_its_own_model(tmp_path, lorenz, capsys):
    """A prediction whose columns are (z, y, x): alignment put the reference in that order too, and the
    invariants and the Lyapunov solvers read them as (x, y, z) (two-body energy drift 0.52 instead of 3e-7).
    The truth scored against itself with --lyapunov: its model is the simulation's own system (it was the
    bare hybrid host), so both exponents agree exactly."""
    truth, _ = lorenz
    results = {}
    for name, prediction in (("same", truth), ("reversed", _columns_reversed(truth, tmp_path / "zyx.nc"))):
        status, out, error = evaluate(capsys, prediction, truth, "--lyapunov")
        assert status == 0, error
        results[name] = json.loads(out)["lyapunov"]
    assert results["reversed"]["truth"]["exponent"] == results["same"]["truth"]["exponent"]
    assert results["same"]["closure"] == "none (a simulation: its own system)"
    assert results["same"]["model"]["exponent"] == results["same"]["truth"]["exponent"]
    two_body = (Path(__file__).resolve().parent.parent / "cases" / "two_body.toml").read_text()
    reference = run(tmp_path, "simulate", "two_body", two_body, "time.n_steps=200", "initial_condition.members=2")
    drifts = {}
    for name, prediction in (("same", reference), ("reversed", _columns_reversed(reference, tmp_path / "tb_rev.nc"))):
        status, out, error = evaluate(capsys, prediction, reference)
        assert status == 0, error
        drifts[name] = json.loads(out)["invariant_drift"]["energy"]
    assert drifts["reversed"] == drifts["same"] and drifts["same"]["rollout"]["median"] < 1e-5


def test_a_stopped_runs_partial_file_is_refused_as_either_file(tmp_path, lorenz, capsys):
    """A `.NAME.partial` (attribute ``incomplete``) was scored without a word: its unwritten saves read NaN,
    so as the prediction it "blew up" where writing stopped, as the reference it cut every valid time there."""
    from hybridnde.netcdf_stream import INCOMPLETE

    truth, _ = lorenz
    with xr.open_dataset(truth) as data:
        partial = data.load()
    partial.attrs["incomplete"] = INCOMPLETE
    partial.to_netcdf(tmp_path / ".stopped.nc.partial")
    for rollout, reference in ((tmp_path / ".stopped.nc.partial", truth), (truth, tmp_path / ".stopped.nc.partial")):
        status, _, error = evaluate(capsys, rollout, reference)
        assert status == 2 and ".stopped.nc.partial: an unfinished file (rollout in progress or interrupted" in error
        assert "--resume` continues it)); finish it, then use the file it becomes" in error
