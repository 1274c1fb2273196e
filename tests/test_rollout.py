"""Ensemble rollouts (hybridnde.rollout, rollout_job, netcdf_stream): the streamed file holds exactly
what the host solver computes, blow-ups are isolated, restarts are exact, memory stays flat."""
from __future__ import annotations

import math
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import break_chunk_index
from hybridnde.cli import main
from hybridnde.closure_file import save_closure
from hybridnde.config import ConfigError, parse_case
from hybridnde.distributed import rank_batches
from hybridnde.grids import restrict_to_grid
from hybridnde.initial_conditions import draw_initial_conditions
from hybridnde.io import STATUS_FLAGS, DataError, package_version, trajectory_dataset, write_netcdf
from hybridnde.models import MLPClosure, PeriodicCNNClosure
from hybridnde.netcdf_stream import TrajectoryStreamWriter, checkpoint_path, partial_path
from hybridnde.partial_repair import journal_path
from hybridnde.rollout import auto_batch_size, batch_bounds, first_blowup
from hybridnde.rollout_job import run_rollout
from hybridnde.simulate import simulate_case
from hybridnde.systems import build_host_solver, resolve_dtype

DATA_VARIABLES = ("u", "status", "blowup_time")

# The tests' own cases, so that edits of the shipped cases/ cannot change what they check: the true
# Kuramoto-Sivashinsky equation on L = 22 (N = 64, ETDRK4, dt = 0.25) and the two-body problem (RK4).
KS_TOML = """
[case]
name = "ks_rollout_test"
[system]
name = "kuramoto_sivashinsky"
domain_length = 22.0
n_points = 64
[time]
dt = 0.25
[initial_condition]
seed = 0
[rollout]
members = 4
steps = 24
"""
TWO_BODY_TOML = """
[case]
name = "two_body_rollout_test"
[system]
name = "two_body"
[time]
dt = 0.01
[rollout]
members = 6
steps = 40
"""


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cases")
    files = {"ks": folder / "ks.toml", "two_body": folder / "two_body.toml"}
    files["ks"].write_text(KS_TOML)
    files["two_body"].write_text(TWO_BODY_TOML)
    return files


def ks_case(*overrides: str):
    return parse_case(tomllib.loads(KS_TOML), overrides=overrides)


def two_body_case(*overrides: str):
    return parse_case(tomllib.loads(TWO_BODY_TOML), overrides=overrides)


def small_cnn(seed: int = 0) -> PeriodicCNNClosure:
    torch.manual_seed(seed)
    model = PeriodicCNNClosure(channels=4, depth=1, kernel_size=3).double()
    with torch.no_grad():  # a weak closure keeps the hybrid close to KS over a short rollout
        for parameter in model.parameters():
            parameter.mul_(0.1)
    return model.eval()


def small_mlp(seed: int = 0, state_dim: int = 4) -> MLPClosure:
    torch.manual_seed(seed)
    model = MLPClosure(state_dim=state_dim, width=16, depth=1).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.01)
    return model.eval()


def read(path: Path) -> xr.Dataset:
    with xr.open_dataset(path) as dataset:
        return dataset.load()


def interrupted_rollout(case, out: Path, model, *, after: float, resume: bool = False) -> None:
    """``run_rollout`` stopped as by Ctrl-C at the closure's first call past time ``after``."""
    def interrupt(_module, inputs):
        if float(inputs[0]) > after:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_rollout(case, out, closure=model, resume=resume, progress=False)
    finally:
        handle.remove()


def assert_same_data(first: Path, second: Path) -> None:
    a, b = read(first), read(second)
    for name in DATA_VARIABLES + ("member", "time"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        assert a[name].dtype == b[name].dtype


def initial_condition_file(path: Path, u0: np.ndarray, x: np.ndarray, *, t0: float = 0.0, members=None) -> Path:
    """A truth-like file u(member, time, x) with one time."""
    dataset = trajectory_dataset(u0[:, None, :], [t0], state_dim="x", state_coords=x, members=members)
    return write_netcdf(dataset, path)


def reference_rollout(case, closure, members: range, batch_size: int) -> tuple[np.ndarray, list[float]]:
    """``Solver.rollout`` over the same batches (same composition, so bit-for-bit comparable) and its times."""
    solver = build_host_solver(case, closure=closure, dtype=resolve_dtype(case.compute.dtype))
    u0 = draw_initial_conditions(case.initial_condition, solver, members, seed=case.rollout.seed)
    with torch.inference_mode():
        parts = [solver.rollout(u0[start:stop], case.rollout.steps, save_every=case.rollout.save_every)
                 for start, stop in batch_bounds(len(members), batch_size)]
    return torch.cat(parts).numpy(), solver.times(case.rollout.steps, save_every=case.rollout.save_every)


@pytest.mark.parametrize("system", ["ks", "two_body"])
def test_streamed_file_equals_the_solvers_own_rollout(tmp_path, system):
    # several batches (the last one short), several output chunks (the last one partial), save_every > 1
    if system == "ks":
        case, closure = ks_case("rollout.members=5", "rollout.batch_size=2", "rollout.steps=31",
                                "rollout.save_every=3", "output.time_chunk=4"), small_cnn()
    else:
        case, closure = two_body_case("rollout.batch_size=4", "rollout.save_every=2", "output.time_chunk=3"), small_mlp()
    summary = run_rollout(case, tmp_path / "rollout.nc", closure=closure, progress=False)
    expected, times = reference_rollout(case, closure, range(case.rollout.members), case.rollout.batch_size)
    dataset = read(tmp_path / "rollout.nc")
    np.testing.assert_array_equal(dataset.u.values, expected)
    np.testing.assert_array_equal(dataset.time.values, times)
    np.testing.assert_array_equal(dataset.member.values, np.arange(case.rollout.members))
    assert (dataset.status.values == STATUS_FLAGS["ok"]).all() and np.isnan(dataset.blowup_time.values).all()
    steps_run = case.rollout.steps // case.rollout.save_every * case.rollout.save_every  # none after the last save
    assert summary.blew_up == 0 and summary.member_steps == case.rollout.members * steps_run
    assert not partial_path(tmp_path / "rollout.nc").exists() and not checkpoint_path(tmp_path / "rollout.nc").exists()


def test_file_has_the_schema_of_the_io_writer_and_reads_back(case_files, tmp_path):
    import netCDF4

    case = ks_case("output.time_chunk=8", "output.compression_level=2")
    out = tmp_path / "rollout.nc"
    assert main(["rollout", str(case_files["ks"]), "--out", str(out), "--set", "rollout.members=4",
                 "--set", "rollout.steps=24", "--set", "output.time_chunk=8", "--set", "output.compression_level=2"]) == 0
    streamed = read(out)
    reference = tmp_path / "reference.nc"
    write_netcdf(trajectory_dataset(streamed.u.values, streamed.time.values, state_dim="x", state_coords=streamed.x.values),
                 reference, compression_level=2, time_chunk=8)
    with netCDF4.Dataset(out) as ours, netCDF4.Dataset(reference) as theirs:
        assert ours.dimensions.keys() == theirs.dimensions.keys()
        for name, variable in theirs.variables.items():
            mine = ours.variables[name]
            assert mine.dimensions == variable.dimensions and mine.dtype == variable.dtype, name
            assert mine.filters() == variable.filters(), name
            assert mine.chunking() == variable.chunking(), name
            assert sorted(mine.ncattrs()) == sorted(variable.ncattrs()), name
            for key in variable.ncattrs():  # values too (units, flags, _FillValue), not just the names
                np.testing.assert_array_equal(mine.getncattr(key), variable.getncattr(key), err_msg=f"{name}.{key}")
        assert set(theirs.ncattrs()) <= set(ours.ncattrs())
    assert streamed.attrs["Conventions"] == "CF-1.10" and streamed.attrs["closure_checksum"] == "none"
    assert streamed.member.attrs["standard_name"] == "realization"  # CF's ensemble axis (iris, cf-python)
    assert streamed.attrs["stage"] == "rollout" and streamed.attrs["member_steps"] == 4 * 24
    assert streamed.attrs["platform"].startswith(f"torch {torch.__version__} on cpu (")
    assert "), 1 torch thread(s); numpy" in streamed.attrs["platform"]  # rollout.threads = 1, the default
    # the stored configuration is the full case: it parses back to the same thing
    assert tomllib.loads(streamed.attrs["case_toml"])["rollout"] == tomllib.loads(case.to_toml())["rollout"]
    if shutil.which("ncdump"):
        header = subprocess.run(["ncdump", "-h", str(out)], capture_output=True, text=True, check=True).stdout
        assert "u(member, time, x)" in header and ":Conventions = \"CF-1.10\"" in header


def test_a_second_rollout_into_the_same_output_is_refused_while_the_first_writes(case_files, tmp_path, capsys):
    """It used to remove the first one's partial file and checkpoint and write beside it; a later
    --resume then trusted a checkpoint of the other file and committed members of NaN as ok."""
    from hybridnde.netcdf_stream import checkpoint_path, partial_path
    from hybridnde.output_lock import lock_path, output_lock

    out = tmp_path / "rollout.nc"
    arguments = ["rollout", str(case_files["two_body"]), "--out", str(out), "--set", "rollout.members=3",
                 "--set", "rollout.steps=10"]
    with output_lock(out):  # what a running rollout holds
        assert main(arguments) == 2
        assert "is writing it" in capsys.readouterr().err
        assert not out.exists() and not partial_path(out).exists() and not checkpoint_path(out).exists()
    assert main(arguments) == 0 and out.exists() and not lock_path(out).exists()


def test_closure_file_checksum_is_recorded(case_files, tmp_path):
    checksum = save_closure(tmp_path / "closure.pt", small_mlp())
    out = tmp_path / "rollout.nc"
    assert main(["rollout", str(case_files["two_body"]), "--closure", str(tmp_path / "closure.pt"), "--out", str(out),
                 "--set", "rollout.members=3", "--set", "rollout.steps=10"]) == 0
    attrs = read(out).attrs
    assert attrs["closure_checksum"] == checksum and checksum in attrs["source"]


def test_a_blowing_up_member_is_frozen_and_the_others_are_untouched(tmp_path):
    case = ks_case("rollout.steps=40", "output.time_chunk=8")
    solver = build_host_solver(case)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(4), seed=0).numpy()
    x = solver.x.numpy()
    calm = initial_condition_file(tmp_path / "calm.nc", u0, x)
    prone = u0.copy()
    prone[2] *= 10.0  # finite and below the bound at first; ETDRK4 at dt = 0.25 then diverges within a few steps
    wild = initial_condition_file(tmp_path / "wild.nc", prone, x)
    run_rollout(ks_case("rollout.steps=40", "output.time_chunk=8", f"rollout.initial_conditions='{calm}'"),
                tmp_path / "calm_out.nc", progress=False)
    run_rollout(ks_case("rollout.steps=40", "output.time_chunk=8", f"rollout.initial_conditions='{wild}'"),
                tmp_path / "wild_out.nc", progress=False)
    calm_out, wild_out = read(tmp_path / "calm_out.nc"), read(tmp_path / "wild_out.nc")
    assert wild_out.status.values.tolist() == [0, 0, 1, 0]  # 1: blew_up (docs/netcdf.md)
    blowup_time = wild_out.blowup_time.values[2]
    assert 0 < blowup_time < 40 * 0.25 and np.isnan(np.delete(wild_out.blowup_time.values, 2)).all()
    frozen = wild_out.u.values[2]
    before = wild_out.time.values < blowup_time
    assert np.isfinite(frozen[before]).all() and np.abs(frozen[before]).max() <= case.rollout.blowup_threshold
    assert np.isnan(frozen[~before]).all()
    keep = [0, 1, 3]
    np.testing.assert_array_equal(wild_out.u.values[keep], calm_out.u.values[keep])


def test_dead_rows_are_compacted_and_survivors_continue(tmp_path):
    # three of four members blow up: the batch is compacted to the survivor after the first chunk
    case = ks_case("rollout.steps=40", "output.time_chunk=4")
    solver = build_host_solver(case)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(4), seed=0).numpy()
    prone = u0.copy()
    prone[[0, 1, 3]] *= 10.0
    path = initial_condition_file(tmp_path / "wild.nc", prone, solver.x.numpy())
    summary = run_rollout(ks_case("rollout.steps=40", "output.time_chunk=4", f"rollout.initial_conditions='{path}'"),
                          tmp_path / "out.nc", progress=False)
    out = read(tmp_path / "out.nc")
    assert out.status.values.tolist() == [1, 1, 0, 1]
    # the steps done: the survivor's 40 and the others' until they were dropped (all 4 x 40 were counted)
    assert 40 < summary.member_steps < 4 * 40 and out.attrs["member_steps"] == summary.member_steps
    with torch.inference_mode():
        alone = solver.rollout(torch.as_tensor(u0[2:3]), 40).numpy()[0]
    # row-wise FFTs do not mix members; a smaller batch may change the last bit at most
    np.testing.assert_allclose(out.u.values[2], alone, rtol=0, atol=1e-12)


def test_a_resumed_rollout_with_blowups_counts_the_steps_an_uninterrupted_one_does(tmp_path):
    """member_steps counts the steps done (dropped blown-up members stop counting); the part restored
    from a checkpoint counted every member for every step (109 against 49 in a review's run)."""
    case = ks_case("rollout.steps=40", "output.time_chunk=4")
    solver = build_host_solver(case)
    prone = draw_initial_conditions(case.initial_condition, solver, range(4), seed=0).numpy()
    prone[[0, 1, 3]] *= 10.0  # these blow up, and the batch is compacted to the survivor
    path = initial_condition_file(tmp_path / "wild.nc", prone, solver.x.numpy())
    case = ks_case("rollout.steps=40", "output.time_chunk=4", "rollout.checkpoint_every=4",
                   f"rollout.initial_conditions='{path}'")
    model = small_cnn()
    with torch.no_grad():
        model.net[-1].weight.zero_()  # no closure term: the bare dynamics, which blow up
        model.net[-1].bias.zero_()
    straight = run_rollout(case, tmp_path / "straight.nc", closure=model, progress=False)
    assert straight.blew_up == 3 and straight.member_steps < 4 * 40

    interrupted_rollout(case, tmp_path / "resumed.nc", model, after=7.5)
    run_rollout(case, tmp_path / "resumed.nc", closure=model, resume=True, progress=False)
    assert_same_data(tmp_path / "resumed.nc", tmp_path / "straight.nc")
    with xr.open_dataset(tmp_path / "resumed.nc") as resumed:
        assert resumed.attrs["member_steps"] == straight.member_steps


def test_a_resumed_rollout_records_the_case_that_finished_it(tmp_path):
    """A resume may change keys outside the rollout's sections ([evaluate], which evaluate reads from the
    file): the file kept the stopped run's case_toml."""
    from hybridnde.config import parse_case_text

    case = ks_case("rollout.steps=40", "output.time_chunk=4", "rollout.checkpoint_every=4", "rollout.members=2")
    model = small_cnn()
    interrupted_rollout(case, tmp_path / "resumed.nc", model, after=7.5)
    run_rollout(ks_case("rollout.steps=40", "output.time_chunk=4", "rollout.checkpoint_every=4", "rollout.members=2",
                        "evaluate.vpt_threshold=0.3"), tmp_path / "resumed.nc", closure=model, resume=True, progress=False)
    with xr.open_dataset(tmp_path / "resumed.nc") as resumed:
        assert resumed.attrs["resumed_runs"] == 1
        assert parse_case_text(resumed.attrs["case_toml"]).evaluate.vpt_threshold == 0.3


def test_non_finite_initial_conditions_are_rejected_before_any_work(case_files, tmp_path, capsys):
    case = ks_case()
    solver = build_host_solver(case)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(4), seed=0).numpy()
    u0[1, 5] = np.nan
    path = initial_condition_file(tmp_path / "bad.nc", u0, solver.x.numpy(), members=[10, 11, 12, 13])
    out = tmp_path / "rollout.nc"
    code = main(["rollout", str(case_files["ks"]), "--out", str(out), "--set", "rollout.members=4",
                 "--set", f"rollout.initial_conditions='{path}'"])
    assert code == 2
    assert "members [11]" in capsys.readouterr().err
    assert not out.exists() and not partial_path(out).exists()


def test_initial_conditions_from_a_truth_file_are_filtered_onto_the_host_grid(case_files, tmp_path):
    truth_case = ks_case("initial_condition.members=3", "time.n_steps=8", "time.save_every=2")
    truth = simulate_case(truth_case, progress=False)
    truth = truth.assign_coords(time=truth.time + 5.0, member=truth.member + 10)  # a test split, later in time
    truth_path = write_netcdf(truth, tmp_path / "truth.nc")
    case = ks_case("hybrid.system={n_points = 32}", "rollout.members=2", "rollout.steps=6",
                   f"rollout.initial_conditions='{truth_path}'")
    run_rollout(case, tmp_path / "rollout.nc", progress=False)
    out = read(tmp_path / "rollout.nc")
    assert out.sizes["x"] == 32
    np.testing.assert_array_equal(out.u.values[:, 0], restrict_to_grid(truth.u.values[:2, 0], 32))
    np.testing.assert_array_equal(out.member.values, truth.member.values[:2])
    assert out.time.values[0] == 5.0 and np.allclose(np.diff(out.time.values), 0.25)
    too_many = main(["rollout", str(case_files["ks"]), "--out", str(tmp_path / "x.nc"),
                     "--set", "rollout.members=5", "--set", f"rollout.initial_conditions='{truth_path}'"])
    assert too_many == 2 and not (tmp_path / "x.nc").exists()


def test_bad_settings_exit_2_naming_the_field(case_files, tmp_path, capsys):
    with pytest.raises(ConfigError, match="rollout.initial_conditions"):
        ks_case("rollout.initial_conditions='somewhere'")
    with pytest.raises(ConfigError, match="rollout.steps"):
        ks_case("rollout.steps=2", "rollout.save_every=5")
    save_closure(tmp_path / "closure.pt", small_mlp(state_dim=3))  # a Lorenz closure on a two-body host
    code = main(["rollout", str(case_files["two_body"]), "--closure", str(tmp_path / "closure.pt"),
                 "--out", str(tmp_path / "rollout.nc"), "--set", "rollout.members=2"])
    assert code == 2 and "closure" in capsys.readouterr().err
    assert not (tmp_path / "rollout.nc").exists()
    # an explicit host beyond its stability limit (a traceback, exit 1, before)
    code = main(["rollout", str(case_files["ks"]), "--out", str(tmp_path / "rollout.nc"),
                 "--set", "hybrid.system={method=\"finite_difference\"}"])
    assert code == 2 and "raise hybrid.substeps" in capsys.readouterr().err
    assert not (tmp_path / "rollout.nc").exists()


def test_a_closure_trained_for_another_case_is_refused_before_any_work(case_files, tmp_path, capsys):
    # a periodic CNN runs on any grid and any state length, so only the case stored with it can tell
    save_closure(tmp_path / "ks.pt", small_cnn(), case_toml=ks_case().to_toml())
    for case, overrides, expected in [
            (case_files["two_body"], [], "host system 'kuramoto_sivashinsky' (this case: 'two_body')"),
            (case_files["ks"], ["--set", "system.n_points=128"], "host n_points 64 (this case: 128)"),
            (case_files["ks"], ["--set", "system.domain_length=44.0"], "host domain_length 22.0 (this case: 44.0)"),
            # what the host leaves to the closure: a closure that complements the full KS host would
            # count the whole vector field twice as a neural ODE's, or miss -u u_x in a host without it
            (case_files["ks"], ["--set", 'hybrid.setup="neural_ode"'], "hybrid.setup 'residual' (this case: 'neural_ode')"),
            (case_files["ks"], ["--set", "hybrid.system={nonlinear_coefficient=0.0}"],
             "host nonlinear_coefficient 1.0 (this case: 0.0)"),
            (case_files["ks"], ["--set", "system.dealiasing_fraction=1.0"],
             "host dealiasing_fraction 0.6666666666666666 (this case: 1.0)")]:
        out = tmp_path / "rollout.nc"
        assert main(["rollout", str(case), "--closure", str(tmp_path / "ks.pt"), "--out", str(out), *overrides]) == 2
        error = capsys.readouterr().err
        assert expected in error and "ks_rollout_test" in error and "hybridnde train" in error
        assert not out.exists() and not partial_path(out).exists()
    # a setting the host's method does not use is no difference: a spectral host has no fd_order
    assert main(["rollout", str(case_files["ks"]), "--closure", str(tmp_path / "ks.pt"), "--out", str(tmp_path / "fd.nc"),
                 "--set", "rollout.steps=4", "--set", "system.fd_order=2"]) == 0
    # the case it was trained with (and a closure saved without a case, checked by shape alone) run
    assert main(["rollout", str(case_files["ks"]), "--closure", str(tmp_path / "ks.pt"), "--out", str(tmp_path / "a.nc"),
                 "--set", "rollout.steps=4"]) == 0
    assert "[model]" not in capsys.readouterr().err
    # another [model] in the case: the file's network runs, and the output records the case's: said so
    assert main(["rollout", str(case_files["ks"]), "--closure", str(tmp_path / "ks.pt"), "--out",
                 str(tmp_path / "m.nc"), "--set", "rollout.steps=4", "--set", "model.width=7"]) == 0
    assert "was trained with a [model] that differs from this case's in width 200 (this case: 7)" in \
        capsys.readouterr().err
    save_closure(tmp_path / "bare.pt", small_cnn())
    assert main(["rollout", str(case_files["ks"]), "--closure", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "b.nc"),
                 "--set", "rollout.steps=4", "--set", "system.n_points=128"]) == 0


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(case_files, tmp_path, capsys):
    (tmp_path / "folder.nc").mkdir()
    (tmp_path / "file").write_text("")
    for out, expected in [(tmp_path / "folder.nc", "is a folder"), (tmp_path / "file" / "r.nc", "is a file, not a folder")]:
        assert main(["rollout", str(case_files["ks"]), "--out", str(out)]) == 2
        assert expected in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "folder.nc"]
    assert list((tmp_path / "folder.nc").iterdir()) == []
    # its own input: a rollout from a truth file written over that file (it ran and replaced it, before)
    truth = tmp_path / "truth.nc"
    assert main(["simulate", str(case_files["ks"]), "--out", str(truth), "--set", "initial_condition.members=2"]) == 0
    before = truth.read_bytes()
    assert main(["rollout", str(case_files["ks"]), "--out", str(truth), "--set", "rollout.members=2",
                 "--set", f"rollout.initial_conditions='{truth}'"]) == 2
    assert "is the input file rollout.initial_conditions" in capsys.readouterr().err
    assert truth.read_bytes() == before


def test_float32_rollouts_work(tmp_path):
    case = two_body_case("compute.dtype='float32'", "rollout.batch_size=3")
    closure = small_mlp().float()
    run_rollout(case, tmp_path / "rollout.nc", closure=closure, progress=False)
    out = read(tmp_path / "rollout.nc")
    assert out.u.dtype == np.float32
    run_rollout(ks_case("compute.dtype='float32'", "rollout.steps=4"), tmp_path / "ks.nc", progress=False)
    field = read(tmp_path / "ks.nc")
    assert field.u.dtype == np.float32 and field.x.dtype == np.float64  # the schema's coordinates stay float64
    expected, _ = reference_rollout(case, closure, range(6), 3)
    np.testing.assert_array_equal(out.u.values, expected)


def test_batches_are_global_and_whole_batches_go_to_ranks():
    batches = batch_bounds(10, 3)
    assert batches == [(0, 3), (3, 6), (6, 9), (9, 10)]
    for size in (1, 2, 3, 4, 5):
        split = [rank_batches(batches, size, rank) for rank in range(size)]
        assert [b for part in split for b in part] == batches  # contiguous, in rank order, nothing lost
        counts = [len(part) for part in split]
        assert max(counts) - min(counts) <= 1
    case = ks_case()
    bare, hybrid = build_host_solver(case), build_host_solver(case, closure=PeriodicCNNClosure(channels=64).double())
    small = auto_batch_size(bare, memory_budget_mb=1.0, time_chunk=64, n_saves=1000)
    assert 1 <= small < auto_batch_size(bare, memory_budget_mb=4.0, time_chunk=64, n_saves=1000)
    # the closure's activations count: a wide CNN leaves room for fewer members
    assert auto_batch_size(hybrid, memory_budget_mb=4.0, time_chunk=64, n_saves=1000) < \
        auto_batch_size(bare, memory_budget_mb=4.0, time_chunk=64, n_saves=1000)
    # on a CPU a closure's activations per call stay cache-sized whatever the budget (1024 members of a
    # 16-channel CNN ran 2.6x slower a member-step than 256); the bare solver keeps the 1024 cap
    from hybridnde.rollout import CPU_ACTIVATION_BUDGET_BYTES, _closure_activation_bytes

    cnn = build_host_solver(case, closure=PeriodicCNNClosure(channels=16, depth=2).double())
    roomy = auto_batch_size(cnn, memory_budget_mb=4096.0, time_chunk=64, n_saves=1000)
    assert roomy == CPU_ACTIVATION_BUDGET_BYTES // _closure_activation_bytes(cnn.closure, cnn) < 1024
    assert auto_batch_size(bare, memory_budget_mb=4096.0, time_chunk=64, n_saves=1000) == 1024


def test_ranks_must_hold_rank_0s_values_except_where_one_did_not_compute_them():
    from hybridnde.distributed import RankFailure, require_same

    class Gathered:  # allgather's answer, seen from rank ``rank``
        def __init__(self, rank, everyone):
            self.rank, self.everyone = rank, everyone

        def allgather(self, item):
            return self.everyone

    meaning = {"closure": "closure", "ic": "initial conditions", "every": "rollout.checkpoint_every"}
    agreeing = [{"closure": "a", "ic": "x", "every": 4}, {"closure": "a", "ic": None, "every": 4}]
    require_same(Gathered(0, agreeing), agreeing[0], meaning)  # None: not hashed on that rank
    differing = [*agreeing, {"closure": "b", "ic": "x", "every": 8}]
    with pytest.raises(ConfigError, match="rank 2 read another closure and another rollout.checkpoint_every than"):
        require_same(Gathered(0, differing), differing[0], meaning)
    with pytest.raises(RankFailure) as raised:
        require_same(Gathered(1, differing), differing[1], meaning)
    assert raised.value.bad_input


def test_the_idle_rank_advice_gives_every_rank_a_batch_and_no_larger_size_does():
    """The warning advised batch_size <= ceil(members / ranks): 9 members on 4 ranks in batches of 3
    left rank 3 idle."""
    from hybridnde.distributed import largest_batch_size_for

    assert largest_batch_size_for(9, 4) == 2
    for members in range(2, 40):
        for ranks in range(2, min(members, 9) + 1):
            size = largest_batch_size_for(members, ranks)
            assert all(rank_batches(batch_bounds(members, size), ranks, rank) for rank in range(ranks))
            assert not rank_batches(batch_bounds(members, size + 1), ranks, ranks - 1)
    with pytest.raises(ValueError, match="members >= ranks"):
        largest_batch_size_for(3, 4)


def test_the_advice_for_fewer_members_than_ranks_leaves_no_rank_idle():
    """3 members in batches of 2 on 4 ranks: "use at most 3 ranks" still left rank 2 idle."""
    from hybridnde.distributed import idle_ranks_warning

    message = idle_ranks_warning(members=3, batches=2, batch_size=2, ranks=4)
    assert message.endswith("for 3 member(s) use at most 2 rank(s), or 3 with rollout.batch_size = 1")
    assert all(rank_batches(batch_bounds(3, 2), 2, rank) for rank in range(2))
    assert all(rank_batches(batch_bounds(3, 1), 3, rank) for rank in range(3))
    assert idle_ranks_warning(members=1, batches=1, batch_size=1, ranks=2).endswith("use at most 1 rank(s)")


@pytest.mark.parametrize("size_variable", ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])
def test_ranks_started_without_mpi4py_are_refused_not_run_alone(monkeypatch, size_variable):
    """Each rank ran as rank 0 of 1 and wrote the same file: the second failed on the output lock and the
    launcher killed the first (no file, an error about a lock). One rank without mpi4py runs alone."""
    from hybridnde import distributed

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(size_variable, "2")
    monkeypatch.setattr(distributed, "_WORLD", None)
    with pytest.raises(ConfigError, match=r"mpi4py is not installed.*pip install 'hybridnde\[mpi\]'"):
        distributed.world()
    monkeypatch.setenv(size_variable, "1")
    assert distributed.world().size == 1


def test_an_exported_closure_rolls_out_with_the_automatic_batch_size(tmp_path):
    """A TorchScript archive (hybridnde export) is a ScriptModule, which takes no forward hooks: the
    batch size estimate failed on it (RuntimeError) unless rollout.batch_size was set. Its activations
    are estimated from its weights, within 5% of what the hooks count on the Python closure, and it
    rolls out the same file as the closure it came from."""
    import warnings

    from hybridnde.rollout import _closure_activation_bytes

    solver = build_host_solver(ks_case())
    for model in (PeriodicCNNClosure(channels=64).double().eval(), MLPClosure(state_dim=64, width=50).double().eval()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(model)
        hooks, weights = _closure_activation_bytes(model, solver), _closure_activation_bytes(scripted, solver)
        assert abs(weights - hooks) <= 0.05 * hooks, (type(model).__name__, weights, hooks)
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(model)
    case = ks_case("rollout.steps=6")
    assert case.rollout.batch_size == 0  # automatic
    run_rollout(case, tmp_path / "scripted.nc", closure=scripted, progress=False)
    run_rollout(case, tmp_path / "eager.nc", closure=model, progress=False)
    assert_same_data(tmp_path / "scripted.nc", tmp_path / "eager.nc")
    with xr.open_dataset(tmp_path / "eager.nc") as eager:  # a Python closure is named in the title, not "none"
        assert eager.attrs["title"].endswith("(closure: PeriodicCNNClosure)")
    # the archive `hybridnde export` writes, loaded whole: its 0-dim dtype buffer broke the weights checksum
    save_closure(tmp_path / "closure.pt", model)
    assert main(["export", str(tmp_path / "closure.pt"), "--out", str(tmp_path / "closure.ts")]) == 0
    run_rollout(case, tmp_path / "archive.nc", closure=torch.jit.load(tmp_path / "closure.ts"), progress=False)
    assert_same_data(tmp_path / "archive.nc", tmp_path / "eager.nc")


def test_a_failed_background_write_is_raised_not_lost(tmp_path):
    writer = TrajectoryStreamWriter(
        tmp_path / "out.nc", members=np.arange(2), times=np.arange(4.0), state_dim="component",
        state_coords=["a", "b"], state_shape=(2,), dtype=np.float64, title="t", solver="s", closure_checksum="none",
        case_toml="", extra_attrs={}, compression_level=1, time_chunk=2)
    writer.write(0, 0, np.zeros((2, 2, 3)))  # three components where the file has two
    with pytest.raises(RuntimeError, match="writing .* failed"):
        writer.flush()
    writer.discard()
    assert not partial_path(tmp_path / "out.nc").exists() and not (tmp_path / "out.nc").exists()


def test_first_blowup_finds_nan_inf_and_the_bound():
    values = np.zeros((6, 5, 3))
    values[0, 2, :2] = [10.0, -10.0]  # on the bound: not past it
    values[1, 3, 0] = np.nan
    values[2, 1:, 2] = np.inf
    values[3, 4, 1] = -11.0
    values[4, 2, 0], values[5, 0, 2] = -np.inf, 11.0
    assert first_blowup(values, 100, 10.0).tolist() == [-1, 103, 101, 104, 102, 100]
    rng = np.random.default_rng(0)  # against the plain definition: the first save with any |u| past the bound
    values = rng.standard_normal((50, 7, 2, 3)) * 3
    values[rng.random(values.shape) < 0.01] = np.nan
    past = ~(np.abs(values) <= 9.0).reshape(50, 7, -1).all(axis=2)
    expected = np.where(past.any(axis=1), 20 + past.argmax(axis=1), -1)
    np.testing.assert_array_equal(first_blowup(values, 20, 9.0), expected)


def test_resume_after_an_interruption_gives_the_identical_file(tmp_path, caplog):
    case = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model = small_mlp()
    stop_time = 0.3

    # Ctrl-C in the middle of a batch, after a few checkpoints
    interrupted_rollout(case, tmp_path / "resumed.nc", model, after=stop_time)
    assert not (tmp_path / "resumed.nc").exists()
    assert checkpoint_path(tmp_path / "resumed.nc").exists() and partial_path(tmp_path / "resumed.nc").exists()
    with xr.open_dataset(partial_path(tmp_path / "resumed.nc"), engine="netcdf4") as partial:  # said so in the file
        assert "final only for the members of finished batches" in partial.attrs["incomplete"]
    # refusals name what changed: a case key, or the thread count (the bits depend on it)
    with pytest.raises(DataError, match=r"the case differs in rollout.steps \(60 -> 80\)"):
        run_rollout(two_body_case("rollout.batch_size=2", "rollout.steps=80", "output.time_chunk=5"),
                    tmp_path / "resumed.nc", closure=model, resume=True, progress=False)
    with pytest.raises(DataError, match=r"written with 1 torch thread\(s\) per rank, this run has 2.*rollout.threads=1"):
        run_rollout(two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5",
                                  "rollout.threads=2"), tmp_path / "resumed.nc", closure=model, resume=True,
                    progress=False)
    # a checkpoint is tied to its partial file (run_id in both): another partial under the name is refused
    import h5py

    with h5py.File(partial_path(tmp_path / "resumed.nc"), "r+") as file:
        run_id = file.attrs["run_id"]
        file.attrs["run_id"] = "another run"
    with pytest.raises(DataError, match="does not describe the partial file"):
        run_rollout(case, tmp_path / "resumed.nc", closure=model, resume=True, progress=False)
    with h5py.File(partial_path(tmp_path / "resumed.nc"), "r+") as file:
        file.attrs["run_id"] = run_id
    # a partial file whose chunk index is broken (Ctrl-C under mpiexec: a rank aborted rank 0 while HDF5
    # wrote metadata) is rebuilt from the checkpoint's record (tests/test_partial_repair.py), on a copy
    import shutil

    copy = tmp_path / "copy" / "resumed.nc"
    copy.parent.mkdir()
    for path in (partial_path, checkpoint_path, journal_path):
        shutil.copy(path(tmp_path / "resumed.nc"), path(copy))
    assert break_chunk_index(partial_path(copy))
    caplog.clear()
    run_rollout(case, copy, closure=model, resume=True, progress=False)
    assert "is damaged (" in caplog.text and "rebuilt from the " in caplog.text
    # a checkpoint from before these checks (no run_id, threads or input checksum) still resumes
    state = torch.load(checkpoint_path(tmp_path / "resumed.nc"), weights_only=True)
    for key in ("run_id", "threads", "initial_conditions_checksum", "member_steps"):
        del state[key]
    torch.save(state, checkpoint_path(tmp_path / "resumed.nc"))
    with h5py.File(partial_path(tmp_path / "resumed.nc"), "r+") as file:
        del file.attrs["run_id"]
    caplog.set_level("INFO", logger="hybridnde.rollout_job")
    summary = run_rollout(case, tmp_path / "resumed.nc", closure=model, resume=True, progress=False)
    assert summary.resumed and 0 < summary.member_steps < 6 * 60
    done = 6 * 60 - summary.member_steps  # said where it starts (a batch job's log said nothing)
    assert f"resumed.nc from its checkpoint: {done} of 360 member-steps done ({100 * done / 360:.0f}%), " in caplog.text
    run_rollout(case, tmp_path / "straight.nc", closure=model, progress=False)
    assert_same_data(tmp_path / "resumed.nc", tmp_path / "straight.nc")
    assert_same_data(copy, tmp_path / "straight.nc")
    # finished, resumed or rebuilt, a rollout leaves its output alone (no checkpoint, partial file or journal)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "resumed.nc", "straight.nc"]
    assert [p.name for p in copy.parent.iterdir()] == ["resumed.nc"]
    with xr.open_dataset(copy) as rebuilt, xr.open_dataset(tmp_path / "resumed.nc") as resumed:  # the same header
        per_run = {"history", "wall_seconds", "member_steps_per_second", "run_id"}  # (resumed.nc: none, below)
        assert {k: str(v) for k, v in rebuilt.attrs.items() if k not in per_run} == {
            k: str(v) for k, v in resumed.attrs.items() if k not in per_run}
        for name in rebuilt.variables:
            assert rebuilt[name].attrs.keys() == resumed[name].attrs.keys(), name
    # the file's cost attributes cover the whole rollout, not the last run's part (which they did)
    with xr.open_dataset(tmp_path / "resumed.nc") as resumed, xr.open_dataset(tmp_path / "straight.nc") as straight:
        assert resumed.attrs["member_steps"] == straight.attrs["member_steps"] == 6 * 60
        assert (resumed.attrs["resumed_runs"], straight.attrs["resumed_runs"]) == (1, 0)
        assert "incomplete" not in resumed.attrs and "incomplete" not in straight.attrs
        # the code that finished a resumed file is named as well as the code that started it
        created, finished = resumed.attrs["history"].splitlines()
        assert created.endswith(f"created by hybridnde {package_version()}")
        assert finished.endswith(f"resumed 1 time(s), finished by hybridnde {package_version()}")
        assert "\n" not in straight.attrs["history"]
        assert np.atleast_1d(resumed.attrs["ranks_per_run"]).tolist() == [1, 1]  # one entry per run
        assert np.atleast_1d(straight.attrs["ranks_per_run"]).tolist() == [1]
        assert resumed.attrs["wall_seconds"] > summary.seconds
        assert math.isclose(resumed.attrs["member_steps_per_second"],
                            6 * 60 / resumed.attrs["wall_seconds"], rel_tol=1e-12)


def test_a_checkpointed_batch_is_a_copy_that_later_blowups_do_not_reach():
    """The writer thread saves the checkpoint later; the blow-up marks of the next chunks went into it
    through a shared array, and a resume from it shrank the batch one chunk early (other values)."""
    from hybridnde.rollout import BatchState

    state = BatchState(start=0, stop=2, next_chunk=3, rows=np.arange(2), internal=torch.zeros(2, 4),
                       first_bad_save=np.array([-1, -1]))
    kept = state.to_host()
    state.first_bad_save[1] = 250  # what _mark_blowups does in place
    state.rows[0] = 1
    assert kept["first_bad_save"].tolist() == [-1, -1] and kept["rows"].tolist() == [0, 1]
    on_cpu = SimpleNamespace(device=torch.device("cpu"))
    restored = BatchState.from_host(kept, on_cpu)
    assert restored.first_bad_save.tolist() == [-1, -1]
    restored.first_bad_save[1], restored.rows[0] = 250, 1  # the restored state is a copy too
    assert kept["first_bad_save"].tolist() == [-1, -1] and kept["rows"].tolist() == [0, 1]


def test_dead_rows_go_once_they_are_half_of_those_stepped():
    """Compaction at exactly half dead (2 of 4): they cost work and give only NaN."""
    from hybridnde.rollout import BatchRunner, BatchState

    state = BatchState(start=0, stop=4, next_chunk=1, rows=np.arange(4), internal=torch.arange(12.0).reshape(4, 3),
                       first_bad_save=np.array([-1, 3, -1, 2]))
    BatchRunner._compact(None, state)
    assert state.rows.tolist() == [0, 2] and state.internal[:, 0].tolist() == [0.0, 6.0]
    state = BatchState(start=0, stop=4, next_chunk=1, rows=np.arange(4), internal=torch.zeros(4, 3),
                       first_bad_save=np.array([-1, 3, -1, -1]))
    BatchRunner._compact(None, state)  # 1 of 4: kept for now
    assert state.rows.tolist() == [0, 1, 2, 3]


def test_a_resume_with_another_batch_size_is_refused_naming_it():
    """The automatic batch size follows the device, the memory budget and the closure's estimated
    activations (which a new version may count otherwise): a resume that chose another one automatically
    is told the --set that resumes it."""
    from hybridnde.rollout_resume import _difference

    explicit, automatic = two_body_case("rollout.batch_size=8"), two_body_case("rollout.batch_size=0")
    assert _difference({"batch_size": 4}, {"batch_size": 8, "device_type": "cpu"}, explicit, None) == (
        "it was written with another batch size (4, now 8)")
    assert _difference({"batch_size": 4}, {"batch_size": 8, "device_type": "cpu"}, automatic, None) == (
        "it was written with batch size 4, and this run chose 8 automatically (--set rollout.batch_size=4 resumes it)")


def test_members_starting_beyond_the_blowup_threshold_are_named_before_they_run(tmp_path, caplog):
    """A threshold below the initial states marked every member blew_up at t = 0, exit 0, no hint."""
    from hybridnde.config import fields

    fields._warned.clear()  # (the warning is given once per process)
    case = two_body_case("rollout.blowup_threshold=1.0", "rollout.steps=4", "output.time_chunk=5")
    summary = run_rollout(case, tmp_path / "r.nc", progress=False)
    assert summary.blew_up == case.rollout.members
    assert caplog.text.count("start beyond rollout.blowup_threshold = 1") == 1
    assert "raise rollout.blowup_threshold" in caplog.text
    run_rollout(case, tmp_path / "again.nc", progress=False)  # once per process
    assert caplog.text.count("start beyond rollout.blowup_threshold = 1") == 1
    caplog.clear()
    run_rollout(two_body_case("rollout.steps=4", "output.time_chunk=5"), tmp_path / "ok.nc", progress=False)
    assert "blowup_threshold" not in caplog.text


def test_a_rollout_too_large_for_the_disk_is_refused_before_drawing_its_members(tmp_path, monkeypatch):
    """A mistyped member count (1e9) drew every member in a Python loop for minutes, then only warned."""
    from hybridnde import rollout_inputs

    def drawn(*arguments, **keywords):
        raise RuntimeError("members drawn")

    monkeypatch.setattr(rollout_inputs, "draw_initial_conditions", drawn)
    with pytest.raises(DataError, match=r"the rollout writes 2\.98e\+06 GiB .* lower rollout.members"):
        run_rollout(two_body_case(f"rollout.members={10**9}", "rollout.steps=100000"), tmp_path / "r.nc",
                    progress=False)


def test_a_checkpoint_without_its_partial_file_is_said_once_on_resume(tmp_path, caplog):
    """Three lines contradicted each other: "no partial file ... starting from the beginning", "no
    checkpoint", and "the checkpoint is discarded (--resume continues one)" though --resume was given."""
    case = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "r.nc"
    interrupted_rollout(case, out, model, after=0.3)
    partial_path(out).unlink()
    caplog.clear()
    caplog.set_level("INFO")
    assert not run_rollout(case, out, closure=model, resume=True, progress=False).resumed
    assert "has no partial file" in caplog.text and "starting from the beginning" in caplog.text
    assert "no checkpoint for" not in caplog.text and "is discarded" not in caplog.text
    from hybridnde.closure_file import load_closure

    with pytest.raises(DataError, match="closure file .* is a folder; give the closure.pt in it"):
        load_closure(tmp_path)


def test_a_resume_may_choose_the_same_batch_size_another_way(tmp_path, caplog):
    """``batch_size = 0`` resolving to the size a checkpoint was written with (here all 6 members) is the
    same rollout, for a checkpoint and for a finished file; another resolved size is refused by name."""
    case = two_body_case("rollout.batch_size=6", "rollout.steps=60", "output.time_chunk=5")
    automatic = two_body_case("rollout.batch_size=0", "rollout.memory_budget_mb=64", "rollout.steps=60",
                              "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "resumed.nc"
    interrupted_rollout(case, out, model, after=0.3)
    with pytest.raises(DataError, match=r"another batch size \(6, now 2\)"):
        run_rollout(two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5"), out,
                    closure=model, resume=True, progress=False)
    resumed = run_rollout(automatic, out, closure=model, resume=True, progress=False)
    assert resumed.resumed and resumed.batch_size == 6
    run_rollout(case, tmp_path / "straight.nc", closure=model, progress=False)
    assert_same_data(out, tmp_path / "straight.nc")
    caplog.set_level("INFO")
    made = out.read_bytes()
    assert not run_rollout(automatic, out, closure=model, resume=True, progress=False).resumed
    assert out.read_bytes() == made and "nothing to resume" in caplog.text


def test_a_rollout_recorded_with_the_earlier_checksum_resumes_and_is_found_finished(tmp_path, caplog):
    """Checkpoints and files written before the batch-choice keys were left out of the checksum carry the
    full table's: such a checkpoint resumes, and such a finished file is found finished (by the case
    given and by one choosing the same batch size automatically) instead of being rolled out again."""
    import netCDF4

    from hybridnde.rollout_resume import rollout_checksum

    case = two_body_case("rollout.batch_size=6", "rollout.steps=60", "output.time_chunk=5")
    automatic = two_body_case("rollout.batch_size=0", "rollout.memory_budget_mb=64", "rollout.steps=60",
                              "output.time_chunk=5")
    legacy = rollout_checksum(case, legacy=True)
    assert legacy != rollout_checksum(case)
    model, out = small_mlp(), tmp_path / "r.nc"
    interrupted_rollout(case, out, model, after=0.3)
    state = torch.load(checkpoint_path(out), weights_only=True)
    assert state["config_checksum"] == rollout_checksum(case)
    torch.save({**state, "config_checksum": legacy}, checkpoint_path(out))
    assert run_rollout(case, out, closure=model, resume=True, progress=False).resumed
    with netCDF4.Dataset(out, "a") as dataset:
        dataset.setncattr("config_checksum", legacy)
    made = out.read_bytes()
    caplog.set_level("INFO")
    for same in (case, automatic):
        caplog.clear()
        assert not run_rollout(same, out, closure=model, resume=True, progress=False).resumed
        assert out.read_bytes() == made and "nothing to resume" in caplog.text


def test_a_checkpoint_of_another_kind_of_device_resumes_in_this_devices_working_form(tmp_path, caplog, monkeypatch):
    """A GPU keeps KS states dense (physical), a CPU as Fourier coefficients at N = 128: a GPU checkpoint
    resumed on a CPU goes on in the CPU's form (the dense form costs two transforms a step more there),
    with a warning that the file is not bit for bit an uninterrupted run's; the numbers agree."""
    from hybridnde.rollout import in_working_form

    case = ks_case("system.n_points=128", "rollout.members=4", "rollout.batch_size=2", "rollout.steps=40",
                   "output.time_chunk=4")
    solver = build_host_solver(case)
    u = torch.randn(2, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.1
    fourier = solver.to_internal(u.clone())
    assert fourier.is_complex() and in_working_form(solver, fourier) is fourier  # already this form: kept
    converted = in_working_form(solver, u.clone())  # a GPU's dense form
    assert converted.is_complex()
    torch.testing.assert_close(solver.from_internal(converted), u, rtol=0, atol=1e-15)
    model, out = small_cnn(), tmp_path / "rollout.nc"

    interrupted_rollout(case, out, model, after=5.0)
    state = torch.load(checkpoint_path(out), weights_only=True)
    assert state["device_type"] == "cpu" and state["in_flight"]
    for batch in state["in_flight"].values():  # as a GPU would have written it
        batch["internal"] = solver.from_internal(batch["internal"]).clone()
    assert state["device_name"] == "cpu"
    torch.save({**state, "device_type": "cuda", "device_name": "cuda: NVIDIA H100 80GB HBM3"}, checkpoint_path(out))
    from hybridnde import rollout

    forms = []
    real_form = rollout.in_working_form
    monkeypatch.setattr(rollout, "in_working_form", lambda *args: forms.append(real_form(*args)) or forms[-1])
    assert run_rollout(case, out, closure=model, resume=True, progress=False).resumed
    assert forms and all(form.is_complex() for form in forms)
    assert "resuming on cpu a rollout written on cuda: NVIDIA H100 80GB HBM3" in caplog.text
    run_rollout(case, tmp_path / "straight.nc", closure=model, progress=False)
    resumed, straight = read(out), read(tmp_path / "straight.nc")
    np.testing.assert_allclose(resumed["u"].values, straight["u"].values, rtol=0, atol=1e-12)


def test_resume_of_a_finished_rollout_does_nothing_unless_it_changed(tmp_path, caplog):
    """A job script resubmitted after its rollout finished: `--resume` finds the file finished (same
    case, closure, initial conditions and batch size) and leaves it; it was made again from the start.
    The log said "starting from the beginning", then "nothing to resume"."""
    case = two_body_case("rollout.batch_size=2", "rollout.steps=20", "output.time_chunk=5")
    model = small_mlp()
    out = tmp_path / "done.nc"
    first = run_rollout(case, out, closure=model, progress=False)
    made = out.read_bytes()
    caplog.set_level("INFO")
    again = run_rollout(case, out, closure=model, resume=True, progress=False)
    assert out.read_bytes() == made and "nothing to resume" in caplog.text
    assert "starting from the beginning" not in caplog.text
    assert (again.members, again.ok, again.blew_up, again.member_steps) == \
        (first.members, first.ok, first.blew_up, first.member_steps)
    other = two_body_case("rollout.batch_size=3", "rollout.steps=20", "output.time_chunk=5")
    assert run_rollout(other, out, closure=model, resume=True, progress=False).batch_size == 3  # made again
    assert "the file there is another rollout's (case, closure, initial conditions or batch size): starting" \
        in caplog.text
    with xr.open_dataset(out) as remade:
        assert int(remade.attrs["batch_size"]) == 3


def test_a_thread_count_refuses_a_resume_when_either_side_chose_it():
    """Counts differ: refused when the checkpoint's or this run's rollout.threads set it, a warning when
    both left it to torch (0); checkpoints without a record (older ones, GPU rollouts) pass."""
    from hybridnde.rollout_resume import resume_identity, threads_changed

    def _threads_changed(checkpoint, case, setup):  # the identity this run's checkpoints would record
        identity = resume_identity(case, closure_checksum="none", batch_size=1, n_saves=1,
                                   initial_conditions_checksum="draw", device=setup.solver.device)
        return threads_changed(checkpoint, identity)

    setup = SimpleNamespace(solver=SimpleNamespace(device=torch.device("cpu")))
    now = torch.get_num_threads()
    other = {"threads": now + 1}
    assert _threads_changed({**other, "threads_setting": 0}, two_body_case("rollout.threads=0"), setup) is None
    for written, resuming in ((0, now), (now + 1, 0), (now + 1, now)):
        refusal = _threads_changed({**other, "threads_setting": written},
                                   two_body_case(f"rollout.threads={resuming}"), setup)
        assert refusal and f"--set rollout.threads={now + 1}" in refusal
    assert _threads_changed({"threads": now, "threads_setting": 0}, two_body_case("rollout.threads=0"), setup) is None
    assert _threads_changed({}, two_body_case("rollout.threads=1"), setup) is None
    gpu = SimpleNamespace(solver=SimpleNamespace(device=torch.device("cuda")))
    assert _threads_changed({**other, "threads_setting": 1}, two_body_case("rollout.threads=1"), gpu) is None


def interrupted_from_a_file(tmp_path: Path):
    """A KS rollout of 4 members from ``states.nc`` (a 4-member truth) interrupted at t = 5: returns the
    truth dataset, the file, the case, the closure and the output."""
    truth = simulate_case(ks_case("initial_condition.members=4", "time.n_steps=4"), progress=False)
    states = tmp_path / "states.nc"
    write_netcdf(truth, states)
    case = ks_case("rollout.members=4", "rollout.batch_size=2", "rollout.steps=40", "output.time_chunk=4",
                   f"rollout.initial_conditions='{states}'")
    model, out = small_cnn(), tmp_path / "rollout.nc"
    interrupted_rollout(case, out, model, after=5.0)
    return truth, states, case, model, out


def test_resume_refuses_an_initial_conditions_file_that_changed(tmp_path):
    """Only the path was checked: a resume mixed members from the old and the new file, exit 0."""
    truth, states, case, model, out = interrupted_from_a_file(tmp_path)
    write_netcdf(truth.assign(u=truth.u * 1.01), states)  # same path, other states
    with pytest.raises(DataError, match="rollout.initial_conditions, .*states.nc, has changed since"):
        run_rollout(case, out, closure=model, resume=True, progress=False)
    # a damaged partial file is a refusal too (ResumeRefused: `run` then starts the stage afresh)
    from hybridnde.io import ResumeRefused

    write_netcdf(truth, states)
    partial = partial_path(out)
    partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 3])
    with pytest.raises(ResumeRefused, match="partial file of the interrupted rollout cannot be read"):
        run_rollout(case, out, closure=model, resume=True, progress=False)


def test_resume_accepts_initial_conditions_written_again_with_the_same_states(tmp_path):
    """The same states in other bytes (simulated again: a new history) are the same input, and a
    checkpoint that recorded the file's bytes (before data checksums) resumes too: both resumes give the
    uninterrupted rollout's file."""
    from hybridnde.data import file_checksum

    truth, states, case, model, out = interrupted_from_a_file(tmp_path)
    before = file_checksum(states)
    write_netcdf(truth.assign_attrs(history="simulated again"), states)
    assert file_checksum(states) != before
    interrupted_rollout(case, out, model, after=8.0, resume=True)  # resumed (not refused), and interrupted again
    state = torch.load(checkpoint_path(out), weights_only=True)
    torch.save({**state, "initial_conditions_checksum": file_checksum(states)}, checkpoint_path(out))
    assert run_rollout(case, out, closure=model, resume=True, progress=False).resumed
    run_rollout(case, tmp_path / "straight.nc", closure=model, progress=False)
    assert_same_data(out, tmp_path / "straight.nc")
    # a finished rollout that recorded the file's bytes (before data checksums) is this rollout, finished
    import netCDF4

    with netCDF4.Dataset(out, "a") as finished:
        finished.setncattr("initial_conditions_sha256", file_checksum(states))
    made = out.read_bytes()
    assert not run_rollout(case, out, closure=model, resume=True, progress=False).resumed
    assert out.read_bytes() == made


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_sigkill_or_sigterm_gives_the_identical_file(case_files, tmp_path, stop):
    """Killed, or stopped by SIGTERM (a batch system's time limit): SIGTERM now stops the work as Ctrl-C
    does -- exit 130, saying so, with the resume hint -- where it killed the process before."""
    save_closure(tmp_path / "closure.pt", small_mlp())
    arguments = ["rollout", str(case_files["two_body"]), "--closure", str(tmp_path / "closure.pt"),
                 "--set", "rollout.members=32", "--set", "rollout.steps=1200", "--set", "rollout.batch_size=16",
                 "--set", "output.time_chunk=25", "--no-progress"]
    command = [sys.executable, "-m", "hybridnde.cli", "-q"]
    killed = tmp_path / "killed.nc"
    process = subprocess.Popen(command + arguments + ["--out", str(killed)], cwd=tmp_path, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not checkpoint_path(killed).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # into the chunks after the first checkpoint
    process.send_signal(stop)
    _, stderr = process.communicate()
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL, "the rollout ended before it could be killed: make it longer"
    else:
        assert process.returncode == 130, stderr
        assert "interrupted by SIGTERM" in stderr and "--resume` continues from the last checkpoint" in stderr
    assert not killed.exists() and checkpoint_path(killed).exists()
    resumed = subprocess.run(command + arguments + ["--out", str(killed), "--resume"], cwd=tmp_path,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stdout
    assert main(arguments + ["--out", str(tmp_path / "straight.nc")]) == 0
    assert_same_data(killed, tmp_path / "straight.nc")
    with xr.open_dataset(killed) as finished:  # CF 2.6.2: each command that wrote it
        created, finished = finished.attrs["history"].splitlines()
    typed = shlex.join(["hybridnde", "-q", *arguments, "--out", str(killed)])
    assert created.endswith(f"created by hybridnde {package_version()}: {typed}")
    assert finished.endswith(f"resumed 1 time(s), finished by hybridnde {package_version()}: {typed} --resume")


MEMORY_PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hybridnde.config import load_case
    from hybridnde.rollout_job import run_rollout

    def status_mb(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    def case(steps):
        return load_case(sys.argv[1], overrides=["rollout.members=64", f"rollout.steps={steps}",
                                                 "output.time_chunk=32", "output.compression_level=1"])

    run_rollout(case(40), sys.argv[2] + "/warm.nc", progress=False)  # libraries, caches, first chunks
    baseline = status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS (Linux >= 4.0)
    run_rollout(case(int(sys.argv[3])), sys.argv[2] + "/long.nc", progress=False)
    print(status_mb("VmHWM") - baseline)
""")


def test_memory_does_not_grow_with_the_number_of_steps(case_files, tmp_path):
    def growth_mb(steps: int) -> float:
        result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(case_files["ks"]), str(tmp_path),
                                 str(steps)], capture_output=True, text=True, check=True)
        return float(result.stdout.split()[-1])

    short, long = growth_mb(200), growth_mb(2000)
    trajectory_mb = 64 * 2001 * 64 * 8 / 2**20  # 62.5 MB: what holding the long rollout would cost
    assert long < 0.3 * trajectory_mb, (short, long)
    assert long < 2.0 * short + 10.0, (short, long)


@pytest.mark.parametrize("setup, known", [("neural_ode", "no known dynamics"), ("second_order", "only the kinematics")])
def test_a_bare_rollout_of_a_host_without_physics_warns(tmp_path, capsys, setup, known):
    """`hybridnde rollout` without --closure: a neural-ODE host stands still and a second-order host
    coasts, which `--set 'hybrid.system={}'` alone does not change: it says so. The residual host
    (known physics) does not warn, nor does `run`'s baseline (it means the bare host)."""
    case = tmp_path / "case.toml"
    case.write_text(TWO_BODY_TOML)
    for name in (setup, "residual"):
        capsys.readouterr()
        assert main(["rollout", str(case), "--set", f"hybrid.setup={name}", "--set", "rollout.steps=4",
                     "--out", str(tmp_path / f"{name}.nc"), "--no-progress"]) == 0
        warned = [line for line in capsys.readouterr().err.splitlines() if "without --closure" in line]
        assert (known in warned[0]) if name == setup else not warned


def test_a_closure_in_a_coarser_dtype_is_refused_before_any_work(tmp_path):
    single = small_cnn().float()  # wrapped to take the host's float64 states and answer in float32
    with pytest.raises(DataError, match=r"returns torch.float32 for host states in torch.float64; every step"):
        run_rollout(ks_case("rollout.steps=4"), tmp_path / "single.nc", closure=lambda t, u: single(t.float(), u.float()),
                    progress=False)
    assert not (tmp_path / "single.nc").exists() and not partial_path(tmp_path / "single.nc").exists()


def test_without_closure_the_default_output_is_the_bare_hosts_and_a_trained_closure_is_pointed_out(
        case_files, tmp_path, capsys):
    """The verbs one by one: `train` leaves closure.pt in the case's folder; `rollout` without --closure
    rolls out the bare host, so it writes baseline.nc (as `hybridnde run` names it) and says which
    closure it is not using; with --closure, rollout.nc."""
    folder = tmp_path / "runs"
    common = ["--set", f"output.directory='{folder}'", "--set", "rollout.steps=4", "--no-progress"]
    folder.mkdir()
    save_closure(folder / "closure.pt", small_cnn(), case_toml=ks_case().to_toml())
    assert main(["rollout", str(case_files["ks"]), *common]) == 0
    assert "not used unless given: --closure" in capsys.readouterr().err
    assert (folder / "baseline.nc").is_file() and not (folder / "rollout.nc").exists()
    with xr.open_dataset(folder / "baseline.nc") as bare:
        assert bare.attrs["closure_checksum"] == "none"
    # an interrupted bare rollout under the old default name is pointed out to --resume
    checkpoint_path(folder / "rollout.nc").write_bytes(b"")
    (folder / "baseline.nc").unlink()
    assert main(["rollout", str(case_files["ks"]), "--resume", *common]) == 0
    assert f"resume that one with --out {folder / 'rollout.nc'}" in capsys.readouterr().err
    checkpoint_path(folder / "rollout.nc").unlink()
    assert main(["rollout", str(case_files["ks"]), "--closure", str(folder / "closure.pt"), *common]) == 0
    assert "not used" not in capsys.readouterr().err
    with xr.open_dataset(folder / "rollout.nc") as hybrid:
        assert hybrid.attrs["closure_checksum"] != "none"


def test_without_a_terminal_the_rollout_logs_its_progress(caplog):
    """A batch job's log or mpiexec's pipes show no bar: rank 0 logs how far it is every minute --
    counted from this run's start (a resume's earlier steps are done, not this run's rate)."""
    import logging

    from hybridnde.progress import ProgressLog, progress_bar

    clock = [0.0]
    progress = ProgressLog(1000, "rollout", "member-step", 60.0, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="hybridnde.progress")
    progress.update(200)  # resumed
    clock[0] = 30.0
    progress.update(100)
    assert "rollout:" not in caplog.text  # not yet a minute
    clock[0] = 60.0
    progress.update(100)
    assert "rollout: 40% (400 of 1000 member-steps), 3.333 member-steps/s, about 180 s left" in caplog.text
    # pytest's stderr is no terminal: a bar with log_every becomes the log; --no-progress silences both
    assert isinstance(progress_bar(total=10, enabled=None, log_every=60.0), ProgressLog)
    assert not isinstance(progress_bar(total=10, enabled=False, log_every=60.0), ProgressLog)


def test_a_resumed_bar_starts_at_the_work_done_and_does_not_count_it_in_its_rate():
    """A train bar resumed after epoch 12 of 20 read 0/8; a rollout bar resumed at 56% took the steps done
    for a burst: 207k member-steps/s against a true 6k, and no time left."""
    import io

    from hybridnde.progress import ProgressLog, progress_bar

    bar = progress_bar(range(12, 20), total=20, enabled=True, unit="epoch", initial=12)
    bar.fp = io.StringIO()  # (a terminal's bar, drawn into a string)
    assert bar.n == 12 and bar.format_dict["rate"] is None
    assert list(bar) == list(range(12, 20)) and bar.n == 20
    rollout = progress_bar(total=1000, enabled=True, initial=560)
    rollout.fp = io.StringIO()
    rollout.update(10)
    assert rollout.n == 570 and rollout.format_dict["initial"] == 560
    lines = progress_bar(total=1000, enabled=None, log_every=60.0, initial=560)  # no terminal: the log
    assert isinstance(lines, ProgressLog) and lines.done == lines.counted_from == 560


def test_another_gpu_model_of_the_same_kind_is_elsewhere():
    from hybridnde.rollout_resume import written_elsewhere

    here = {"device_type": "cuda", "device_name": "cuda: NVIDIA A100-SXM4-80GB"}
    assert written_elsewhere({"device_type": "cuda", "device_name": "cuda: NVIDIA GeForce RTX 4090"}, here)
    assert not written_elsewhere(dict(here), here)
    assert not written_elsewhere({"device_type": "cuda"}, here)  # older: the type only


def test_a_gpus_device_name_is_its_model(monkeypatch):
    from hybridnde.rollout_resume import device_name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_name(torch.device("cuda", 0)) == "cuda: NVIDIA H100 80GB HBM3"
    assert device_name(torch.device("cpu")) == "cpu"


def test_an_older_checkpoint_of_another_device_type_is_elsewhere():
    """Checkpoints of eaa8d00..65e26b0 recorded the type but not the name."""
    from hybridnde.rollout_resume import written_elsewhere

    here = {"device_type": "cpu", "device_name": "cpu"}
    assert written_elsewhere({"device_type": "cuda"}, here)
    assert not written_elsewhere({"device_type": "cpu"}, here) and not written_elsewhere({}, here)


def test_a_checkpoint_of_this_device_keeps_its_states_form(tmp_path, monkeypatch):
    from hybridnde import rollout
    from hybridnde.rollout_job import run_rollout

    case = ks_case("system.n_points=128", "rollout.members=4", "rollout.batch_size=2", "rollout.steps=40",
                   "output.time_chunk=4")
    model, out = small_cnn(), tmp_path / "rollout.nc"

    interrupted_rollout(case, out, model, after=5.0)
    monkeypatch.setattr(rollout, "in_working_form", lambda *args: pytest.fail("converted on the same device"))
    assert run_rollout(case, out, closure=model, resume=True, progress=False).resumed


def test_an_empty_batch_keeps_its_form():
    """A batch with no rows left: irfft of nothing fails in MKL, so it is returned as it is."""
    from hybridnde.rollout import in_working_form
    from hybridnde.systems import build_host_solver

    solver = build_host_solver(ks_case("system.n_points=128"))
    empty = solver.to_internal(torch.zeros(2, 128, dtype=torch.float64))[:0]
    assert in_working_form(solver, empty) is empty


def test_the_progress_log_replaces_only_a_bar_that_would_not_show(monkeypatch):
    """A bar asked for (enabled=True, e.g. train_case(progress=True)) stays a bar; on a terminal no log."""
    import hybridnde.progress as progress
    from hybridnde.progress import ProgressLog, progress_bar, progress_log

    assert isinstance(progress_log(10, "train", "epoch", enabled=None, every=60.0), ProgressLog)  # pytest: no tty
    assert progress_log(10, "train", "epoch", enabled=True, every=60.0) is None
    bar = progress_bar(total=10, enabled=True, log_every=60.0)
    assert not isinstance(bar, ProgressLog)
    bar.close()
    monkeypatch.setattr(progress, "progress_enabled", lambda enabled=None: True if enabled is None else enabled)
    assert progress_log(10, "train", "epoch", enabled=None, every=60.0) is None  # a terminal: its bar shows


def test_a_resumed_rollout_says_and_shows_where_it_starts(tmp_path, caplog, monkeypatch):
    """The log line counts the finished batches (not those in flight), and the bar starts at the
    member-steps done of all of them."""
    import hybridnde.rollout_job as rollout_job

    case = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "resumed.nc"
    interrupted_rollout(case, out, model, after=0.3)
    state = torch.load(checkpoint_path(out), weights_only=True)
    done, finished = int(state["member_steps"]), len(state["done"])
    assert 0 < done < 360 and finished != len(state["in_flight"])
    bars, real = [], rollout_job.progress_bar
    monkeypatch.setattr(rollout_job, "progress_bar", lambda **keywords: bars.append(keywords) or real(**keywords))
    caplog.set_level("INFO", logger="hybridnde.rollout_job")
    run_rollout(case, out, closure=model, resume=True, progress=False)
    assert (f"{done} of 360 member-steps done ({100 * done / 360:.0f}%), {finished} of 3 batches finished"
            in caplog.text)
    assert (bars[0]["total"], bars[0]["initial"]) == (360, done)  # 'done' shown as done, not counted again


def test_a_restored_job_record_keeps_the_blowups_and_what_is_unknown_of_earlier_runs():
    """Blow-ups of batches finished before the stop are kept, and an older checkpoint's unknown rank
    counts are not made up."""
    from hybridnde.rollout_resume import JobRecord

    checkpoint = {"done": [0], "in_flight": {2: {"next_chunk": 1}}, "first_bad_save": torch.tensor([3, -1, -1, -1]),
                  "member_steps": 50, "elapsed_seconds": 7.5, "resumes": 1}
    batches = [(0, 2), (2, 4)]
    record = JobRecord.restored(checkpoint, members=4, batches=batches, schedule=None, ranks=2)
    assert record.first_bad_save.tolist() == [3, -1, -1, -1] and record.done == {0} and set(record.in_flight) == {2}
    assert (record.member_steps, record.elapsed_seconds, record.resumes) == (50, 7.5, 2)
    assert record.ranks_per_run is None  # an older checkpoint: the earlier runs' ranks are unknown, not [2]
    with_ranks = JobRecord.restored({**checkpoint, "ranks_per_run": [1]}, members=4, batches=batches, schedule=None,
                                    ranks=2)
    assert with_ranks.ranks_per_run == [1, 2]
    fresh = JobRecord.restored(None, members=4, batches=batches, schedule=None, ranks=3)
    assert fresh.first_bad_save.tolist() == [-1] * 4 and fresh.ranks_per_run == [3] and fresh.resumes == 0


def test_a_rerun_without_resume_says_that_resume_would_have_continued(tmp_path, caplog):
    case = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "r.nc"
    interrupted_rollout(case, out, model, after=0.3)
    caplog.clear()
    caplog.set_level("WARNING")
    run_rollout(case, out, closure=model, progress=False)
    assert (f"the checkpoint of an earlier interrupted rollout to {out} is discarded (`hybridnde rollout ... "
            "--resume` continues one)") in caplog.text


def test_a_refused_resume_says_how_to_go_on(tmp_path):
    case = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "r.nc"
    interrupted_rollout(case, out, model, after=0.3)
    with pytest.raises(DataError, match=r"cannot resume: the case differs in rollout.steps \(60 -> 80\); rerun with "
                                        r"the same case, closure, input files and --set values, or without --resume$"):
        run_rollout(two_body_case("rollout.batch_size=2", "rollout.steps=80", "output.time_chunk=5"), out,
                    closure=model, resume=True, progress=False)


def test_ranks_per_run_is_stored_as_int64_like_the_other_counts(tmp_path):
    out = tmp_path / "r.nc"
    run_rollout(two_body_case("rollout.steps=4", "output.time_chunk=5"), out, closure=small_mlp(), progress=False)
    with xr.open_dataset(out) as finished:
        assert np.asarray(finished.attrs["ranks_per_run"]).dtype == np.asarray(finished.attrs["ranks"]).dtype == np.int64


def test_a_batch_whose_chunks_exceed_the_memory_is_refused_before_any_file(tmp_path, monkeypatch):
    """An explicit batch size with long chunks: 20,000 KS members in one batch with 1,000-save chunks
    held 24 GB at its peak and the OOM killer ended the run, its partial file left behind."""
    from hybridnde import memory
    from hybridnde.config import ConfigError

    case = two_body_case("rollout.members=6", "rollout.batch_size=4", "rollout.steps=40", "output.time_chunk=10")
    chunk = 4 * 10 * 4 * 8  # members x saves x state x bytes
    monkeypatch.setattr(memory, "available_memory", lambda: 3 * chunk - 1)
    with pytest.raises(ConfigError, match=r"a batch of 4 members holds its chunk of 10 saves \(output.time_chunk\) 3 times "
                                          r"over while it streams: .*; lower rollout.batch_size or output.time_chunk"):
        run_rollout(case, tmp_path / "r.nc", progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(memory, "available_memory", lambda: 3 * chunk)
    assert run_rollout(case, tmp_path / "r.nc", progress=False).members == 6
