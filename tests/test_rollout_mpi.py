"""Rollouts under a real ``mpiexec -n 2``: the same file as one process, bit for bit (also when a run
stopped on one process is resumed on two); a failing rank stops the whole job with its message and
leaves no file; bad input on one rank is exit 2 everywhere."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import break_chunk_index
from hybridnde.closure_file import save_closure
from hybridnde.config import load_case
from hybridnde.initial_conditions import draw_initial_conditions
from hybridnde.io import STATUS_FLAGS, trajectory_dataset, write_netcdf
from hybridnde.models import MLPClosure, PeriodicCNNClosure
from hybridnde.netcdf_stream import partial_path
from hybridnde.partial_repair import journal_path
from hybridnde.rollout_job import run_rollout
from hybridnde.systems import build_host_solver

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(shutil.which("mpiexec") is None or importlib.util.find_spec("mpi4py") is None,
                       reason="needs mpiexec and mpi4py (pip install 'hybridnde[mpi]')"),
]

# the tests' own cases (edits of the shipped cases/ cannot change them): true KS on L = 22, two-body
CASE_FILES = {
    "ks.toml": '[case]\nname = "ks"\n[system]\nname = "kuramoto_sivashinsky"\ndomain_length = 22.0\n'
               'n_points = 64\n[time]\ndt = 0.25\n',
    "two_body.toml": '[case]\nname = "two_body"\n[system]\nname = "two_body"\n[time]\ndt = 0.01\n',
}
TIMEOUT = 180  # seconds; a hang would otherwise stall CI


@pytest.fixture
def cases(tmp_path) -> Path:
    folder = tmp_path / "cases"
    folder.mkdir()
    for name, text in CASE_FILES.items():
        (folder / name).write_text(text)
    return folder


def mpiexec(ranks: int, *command: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                       OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")
    version = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version else []  # CI runners may have fewer cores than ranks
    for _ in range(3):  # Open MPI's launcher failing to start (transient, before any rank ran): launch again
        result = subprocess.run(["mpiexec", *extra, "-n", str(ranks), *command], cwd=cwd, env=environment,
                                capture_output=True, text=True, timeout=TIMEOUT)
        if "listener thread failed to start" not in result.stderr + result.stdout:
            break
    return result


#: case overrides of the two rollouts compared between 1 and 2 ranks
TWO_BODY = ["rollout.members=10", "rollout.steps=60", "rollout.batch_size=3", "output.time_chunk=7"]
#: the automatic batch size: every member in one batch, rank 1 idle (drawn states, and states from a file)
IDLE_RANK = [["rollout.members=3", "rollout.steps=20"], ["rollout.batch_size=0"]]


def ks_overrides(initial_conditions: Path) -> list[str]:
    return ["rollout.members=6", "rollout.steps=40", "rollout.batch_size=2", "rollout.save_every=2",
            "output.time_chunk=4", f"rollout.initial_conditions='{initial_conditions}'"]


DRIVER = textwrap.dedent("""
    import sys
    import torch
    from hybridnde.config import load_case
    from hybridnde.rollout_job import run_rollout

    cases, work = sys.argv[1], sys.argv[2]
    two_body = [{two_body}]
    ks = [{ks}]
    run_rollout(load_case(cases + "/two_body.toml", overrides=two_body), work + "/two_body_mpi.nc",
                closure_path=work + "/mlp.pt", progress=False)
    model = torch.load(work + "/cnn.pt", weights_only=False)
    run_rollout(load_case(cases + "/ks.toml", overrides=ks), work + "/ks_mpi.nc", closure=model, progress=False)
    run_rollout(load_case(cases + "/two_body.toml", overrides={idle_drawn}), work + "/two_body_idle_mpi.nc",
                closure_path=work + "/mlp.pt", progress=False)
    run_rollout(load_case(cases + "/ks.toml", overrides=ks + {idle_file}), work + "/ks_idle_mpi.nc", closure=model,
                progress=False)
    # a rollout interrupted on one rank, resumed on two
    run_rollout(load_case(cases + "/two_body.toml", overrides=two_body), work + "/resumed_mpi.nc",
                closure_path=work + "/mlp.pt", resume=True, progress=False)
""")


def interrupted_run(case, out: Path, model: torch.nn.Module, after_calls: int) -> None:
    """Start a rollout on one process and stop it with Ctrl-C after ``after_calls`` closure calls."""
    calls = [0]

    def count(_module, _inputs):
        calls[0] += 1
        if calls[0] > after_calls:
            raise KeyboardInterrupt

    handle = model.register_forward_pre_hook(count)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_rollout(case, out, closure=model, progress=False)
    finally:
        handle.remove()


def test_two_ranks_write_the_same_file_as_one(cases, tmp_path):
    torch.manual_seed(0)
    mlp = MLPClosure(state_dim=4, width=50).double().eval()  # width 50: batch-dependent GEMM/tanh paths
    save_closure(tmp_path / "mlp.pt", mlp)
    cnn = PeriodicCNNClosure(channels=4, depth=1, kernel_size=3).double().eval()
    with torch.no_grad():
        for parameter in cnn.parameters():
            parameter.mul_(0.1)
    torch.save(cnn, tmp_path / "cnn.pt")
    # KS from a file, with member 4 (on rank 1) blowing up after a few steps
    case = load_case(cases / "ks.toml")
    solver = build_host_solver(case)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(6), seed=3).numpy()
    u0[4] *= 10.0
    initial = write_netcdf(trajectory_dataset(u0[:, None], [0.0], state_dim="x", state_coords=solver.x.numpy()),
                           tmp_path / "initial.nc")
    ks = ks_overrides(initial)
    # batches of 3 members, 60 RK4 steps (4 closure calls each): stopped in the third batch, which
    # belongs to rank 1 when resumed on two ranks
    interrupted_run(load_case(cases / "two_body.toml", overrides=TWO_BODY), tmp_path / "resumed_mpi.nc", mlp,
                    after_calls=2 * 60 * 4 + 100)
    assert (tmp_path / ".resumed_mpi.nc.checkpoint").exists()
    driver = DRIVER.format(two_body=", ".join(map(repr, TWO_BODY)), ks=", ".join(map(repr, ks)),
                           idle_drawn=repr(IDLE_RANK[0]), idle_file=repr(IDLE_RANK[1]))
    result = mpiexec(2, sys.executable, "-c", driver, str(cases), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_rollout(load_case(cases / "two_body.toml", overrides=TWO_BODY), tmp_path / "two_body_serial.nc",
                closure_path=tmp_path / "mlp.pt", progress=False)
    run_rollout(load_case(cases / "ks.toml", overrides=ks), tmp_path / "ks_serial.nc", closure=cnn, progress=False)
    run_rollout(load_case(cases / "two_body.toml", overrides=IDLE_RANK[0]), tmp_path / "two_body_idle_serial.nc",
                closure_path=tmp_path / "mlp.pt", progress=False)
    run_rollout(load_case(cases / "ks.toml", overrides=ks + IDLE_RANK[1]), tmp_path / "ks_idle_serial.nc", closure=cnn,
                progress=False)
    for name in ("two_body", "ks", "two_body_idle", "ks_idle"):
        with xr.open_dataset(tmp_path / f"{name}_mpi.nc") as parallel, \
                xr.open_dataset(tmp_path / f"{name}_serial.nc") as serial:
            assert parallel.attrs["ranks"] == 2 and serial.attrs["ranks"] == 1
            for variable in ("u", "status", "blowup_time", "member", "time"):
                np.testing.assert_array_equal(parallel[variable].values, serial[variable].values,
                                              err_msg=f"{name}: {variable}")
            if name.startswith("ks"):
                assert parallel.status.values.tolist() == [0, 0, 0, 0, STATUS_FLAGS["blew_up"], 0]
    with xr.open_dataset(tmp_path / "resumed_mpi.nc") as resumed, \
            xr.open_dataset(tmp_path / "two_body_serial.nc") as serial:
        for variable in ("u", "status", "blowup_time"):
            np.testing.assert_array_equal(resumed[variable].values, serial[variable].values, err_msg=variable)
        # started on one rank, finished on two: the file says so, run by run
        assert resumed.attrs["ranks"] == 2 and resumed.attrs["ranks_per_run"].tolist() == [1, 2]


FAILING_DRIVER = textwrap.dedent("""
    import errno, os, sys
    import torch
    from hybridnde.config import load_case
    from hybridnde.rollout_job import run_rollout

    failure, after = sys.argv[3], float(sys.argv[4])  # what rank 1's closure raises, past which time

    class FailsOnRankOne(torch.nn.Module):
        def forward(self, t, u):
            failing = os.environ.get("FAILING_RANK", "1")
            if os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK")) == failing and float(t) > after:
                if failure == "disk_full":  # stands in for the writer meeting a full disk
                    raise OSError(errno.ENOSPC, "No space left on device")
                if failure == "sigterm":  # as the signal handler raises it
                    raise KeyboardInterrupt("SIGTERM")
                raise RuntimeError("closure exploded on purpose")
            return torch.zeros_like(u)

    case = load_case(sys.argv[1], overrides=["rollout.members=8", "rollout.steps=4000", "rollout.batch_size=2",
                                             "output.time_chunk=10", *sys.argv[5:]])
    run_rollout(case, sys.argv[2], closure=FailsOnRankOne(), progress=False)
""")


@pytest.mark.parametrize("failing", ["0", "1"])
def test_a_failing_rank_aborts_the_job_with_its_message_and_no_file(cases, tmp_path, monkeypatch, failing):
    """Nor the partial file and chunk journal, which no checkpoint resumes: the abort kills rank 0 (the
    writer) wherever it waits, so they were left behind in either case."""
    out = tmp_path / "rollout.nc"
    monkeypatch.setenv("FAILING_RANK", failing)
    result = mpiexec(2, sys.executable, "-c", FAILING_DRIVER, str(cases / "two_body.toml"), str(out), "runtime", "0.1",
                     cwd=tmp_path)
    assert result.returncode != 0
    assert "closure exploded on purpose" in result.stderr and f"rank {failing} of 2 failed" in result.stderr
    assert not out.exists() and not partial_path(out).exists() and not journal_path(out).exists()


def test_bad_input_on_one_rank_is_exit_2_on_all(cases, tmp_path):
    case = load_case(cases / "ks.toml")
    solver = build_host_solver(case)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(4), seed=0).numpy()
    u0[3, 0] = np.inf  # member 3: in rank 1's batch only
    initial = write_netcdf(trajectory_dataset(u0[:, None], [0.0], state_dim="x", state_coords=solver.x.numpy()),
                           tmp_path / "initial.nc")
    out = tmp_path / "rollout.nc"
    result = mpiexec(2, sys.executable, "-m", "hybridnde.cli", "rollout", str(cases / "ks.toml"), "--out", str(out),
                     "--set", "rollout.members=4", "--set", "rollout.batch_size=2",
                     "--set", f"rollout.initial_conditions='{initial}'", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "rank 1: " in result.stderr and "members [3]" in result.stderr
    assert result.stderr.count("members [3]") == 1  # rank 0 reports it once for the job
    assert not out.exists() and not partial_path(out).exists()


def test_a_single_process_verb_on_several_ranks_is_refused_once_before_any_work(cases, tmp_path):
    """Each rank ran the whole command into the same files: all but one were refused by the output lock
    (exit 2, a message per rank about another process) after the first had started."""
    for verb, out in (("simulate", tmp_path / "truth.nc"), ("run", tmp_path / "run")):
        result = mpiexec(2, sys.executable, "-m", "hybridnde", verb, str(cases / "two_body.toml"), "--out", str(out),
                         "--quick", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.count(f"hybridnde {verb}: error: runs in one process, and mpiexec started 2") == 1
        assert not out.exists()
    one = mpiexec(1, sys.executable, "-m", "hybridnde", "simulate", str(cases / "two_body.toml"), "--out",
                  str(tmp_path / "truth.nc"), "--quick", cwd=tmp_path)  # one rank is one process
    assert one.returncode == 0, one.stderr[-3000:]


@pytest.mark.parametrize("differing", ["steps", "closure", "checkpoint_every"])
def test_ranks_that_read_different_set_ups_stop_with_exit_2_and_no_file(cases, tmp_path, differing):
    """Each rank reads the case, closure and initial conditions itself, and rank 0 alone describes the
    file: a rank with another set-up wrote a mixed file (all-NaN saves marked ok) and exit 0. Another
    closure, or another checkpoint interval (each rank decides by it when to hand rank 0 its states), too."""
    out = tmp_path / "rollout.nc"
    for name, seed in (("a.pt", 0), ("b.pt", 1)):
        torch.manual_seed(seed)
        save_closure(tmp_path / name, MLPClosure(state_dim=4, width=8).double())

    def command(rank: int) -> list[str]:
        settings = {"steps": ["--set", f"rollout.steps={20 + 10 * rank}"],
                    "closure": ["--closure", str(tmp_path / ("a.pt", "b.pt")[rank])],
                    "checkpoint_every": ["--set", f"rollout.checkpoint_every={5 + 5 * rank}"]}[differing]
        return [sys.executable, "-m", "hybridnde.cli", "rollout", str(cases / "two_body.toml"), "--out", str(out),
                "--set", "rollout.members=4", "--set", "rollout.batch_size=2", *settings]

    result = mpiexec(1, *command(0), ":", "-n", "1", *command(1), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    expected = {"steps": "rank 1 read another case (after --set) and another number of saves",
                "closure": "rank 1 read another closure than rank 0",
                "checkpoint_every": "rank 1 read another rollout.checkpoint_every than rank 0"}[differing]
    assert result.stderr.count(expected) == 1, result.stderr[-3000:]
    assert not out.exists() and not partial_path(out).exists()


def test_rank_0_and_the_first_rank_of_every_other_node_hash_the_initial_conditions(cases, tmp_path):
    """Node-local copies of the file may differ per node: the first rank of each node hashes it, the
    others (which need only their own members) trust their node's."""
    import contextlib

    from hybridnde import rollout_job
    from hybridnde.data import data_checksum
    from hybridnde.distributed import SerialCommunicator
    from hybridnde.simulate import simulate_case

    initial = tmp_path / "initial.nc"
    write_netcdf(simulate_case(load_case(cases / "ks.toml", overrides=["time.n_steps=2"]), progress=False), initial)
    case = load_case(cases / "ks.toml", overrides=["rollout.members=4", "rollout.batch_size=2",
                                                   f"rollout.initial_conditions='{initial}'"])
    for rank, local_rank, expected in ((1, 0, data_checksum(initial)), (1, 1, None)):
        class Rank(SerialCommunicator):
            pass

        Rank.rank, Rank.size, Rank.local_rank, Rank.local_size = rank, 2, local_rank, 1 + local_rank
        with contextlib.ExitStack() as held:
            setup = rollout_job._prepare(case, tmp_path / "out.nc", None, None, False, Rank(), held)
        assert setup.identity["initial_conditions_checksum"] == expected, (rank, local_rank)


def test_more_ranks_than_members_gets_advice_it_can_follow(cases, tmp_path):
    """It advised "set rollout.batch_size <= 1" when the batch size was already 1."""
    out = tmp_path / "rollout.nc"
    result = mpiexec(2, sys.executable, "-m", "hybridnde.cli", "rollout", str(cases / "two_body.toml"), "--out", str(out),
                     "--set", "rollout.members=1", "--set", "rollout.batch_size=1", "--set", "rollout.steps=10",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 has nothing to do; for 1 member(s) use at most 1 rank(s)" in result.stderr
    assert "rollout.batch_size <=" not in result.stderr and out.exists()


def test_a_full_disk_under_mpi_says_so_without_a_traceback_and_points_to_resume(cases, tmp_path):
    """As in one process (docs/run.md): a message, not a traceback, and what was checkpointed is kept."""
    out = tmp_path / "rollout.nc"
    result = mpiexec(2, sys.executable, "-c", FAILING_DRIVER, str(cases / "two_body.toml"), str(out), "disk_full", "2.0",
                     "rollout.checkpoint_every=10", cwd=tmp_path)
    assert result.returncode != 0
    assert "rank 1 of 2 failed" in result.stderr and "no space left on the device" in result.stderr
    assert "Traceback" not in result.stderr and "--resume` continues from the last checkpoint" in result.stderr
    assert not out.exists() and partial_path(out).exists()


def test_a_resume_over_a_finished_file_that_cannot_be_read_starts_afresh_on_every_rank(cases, tmp_path):
    """Its header opens, its data do not (netCDF4's RuntimeError): rank 0 died in the check while rank 1
    waited in the broadcast for its answer, and the job hung; in one process it was a traceback."""
    out, common = tmp_path / "rollout.nc", ["--set", "rollout.members=4", "--set", "rollout.steps=40",
                                             "--set", "rollout.batch_size=2", "--no-progress", "--out"]
    command = [sys.executable, "-m", "hybridnde", "rollout", str(cases / "two_body.toml"), *common, str(out)]
    assert subprocess.run(command, capture_output=True, timeout=TIMEOUT).returncode == 0
    assert break_chunk_index(out)
    result = mpiexec(2, *command, "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cannot be read as a rollout" in result.stderr
    with xr.open_dataset(out) as dataset:
        assert dataset.attrs["ranks"] == 2 and (dataset.status.values == STATUS_FLAGS["ok"]).all()


def test_a_rank_stopped_by_sigterm_says_so_and_keeps_the_checkpoint(cases, tmp_path):
    """It read "rank 1 of 2 failed: KeyboardInterrupt: SIGTERM", as a failure; exit 130, as in one process."""
    out = tmp_path / "rollout.nc"
    result = mpiexec(2, sys.executable, "-c", FAILING_DRIVER, str(cases / "two_body.toml"), str(out), "sigterm", "2.0",
                     "rollout.checkpoint_every=10", cwd=tmp_path)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "rank 1 of 2 interrupted by SIGTERM" in result.stderr and "failed" not in result.stderr
    assert "Traceback" not in result.stderr and "--resume` continues from the last checkpoint" in result.stderr
    assert not out.exists() and partial_path(out).exists()
