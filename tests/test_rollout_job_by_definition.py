"""The rollout job's orchestration by definition, in one process: ranks played by threads that share
an in-memory communicator (the collectives ``distributed.Communicator`` names, with MPI's meaning), so
that which rank steps which members, what rank 0 gathers and records, and what every rank returns are
checked without a launcher; ``rank_device``, ``agree`` and ``rank_batches`` called directly.

Every expectation is a definition or an independent run: the same rollout in one process (the
module's docstring: "the output is the same bit for bit" on any number of ranks), the members whose
saves went non-finite, the count of ranks."""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import threading
import tomllib

import numpy as np
import pytest
import torch
import xarray as xr

from hybridnde import distributed, rollout_job
from hybridnde.config import ConfigError, parse_case
from hybridnde.distributed import Communicator, RankFailure, SerialCommunicator, agree, rank_batches, rank_device
from hybridnde.initial_conditions import draw_initial_conditions
from hybridnde.io import STATUS_FLAGS, DataError, trajectory_dataset, write_netcdf
from hybridnde.netcdf_stream import read_checkpoint
from hybridnde.rollout import batch_bounds
from hybridnde.rollout_job import run_rollout
from hybridnde.systems import build_host_solver

KS_TOML = """
[case]
name = "ks_rollout_job_test"
[system]
name = "kuramoto_sivashinsky"
domain_length = 22.0
n_points = 64
[time]
dt = 0.25
[initial_condition]
seed = 0
[rollout]
members = 7
steps = 24
batch_size = 2
checkpoint_every = 0
[output]
time_chunk = 4
"""
TIMEOUT = 60  # seconds a rank waits in a collective before the test fails (a mutant that deadlocks)
#: the ranks' set-ups (``_prepare``: no collectives) one at a time: they read files through netCDF4 and h5py,
#: whose HDF5 libraries are not thread-safe (concurrent reads crashed the process, 4 runs in 90)
SET_UP_ONE_AT_A_TIME = threading.Lock()


class StopsAfter(torch.nn.Module):
    """A closure with no term that counts its calls and raises Ctrl-C past ``after`` of them."""
    calls, after = 0, None

    def forward(self, t, u):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt
        return torch.zeros_like(u)


def ks_case(*overrides: str):
    return parse_case(tomllib.loads(KS_TOML), overrides=overrides)


class ThreadWorld:
    """``size`` ranks in one process; ``layout[rank]`` is the rank's local rank (its node's numbering)."""

    def __init__(self, layout: list[int]):
        self.size, self.layout = len(layout), layout
        self._barrier = threading.Barrier(self.size, timeout=TIMEOUT)
        self._slots: list = [None] * self.size

    def exchange(self, rank: int, item):
        self._slots[rank] = item
        self._barrier.wait()
        everyone = list(self._slots)
        self._barrier.wait()
        return everyone

    def communicator(self, rank: int) -> Communicator:
        world = self

        class Rank(Communicator):
            def gather(self, item):
                everyone = world.exchange(self.rank, item)
                return everyone if self.rank == 0 else None

            def allgather(self, item):
                return world.exchange(self.rank, item)

            def bcast(self, item):
                return world.exchange(self.rank, item)[0]

            def allreduce_max(self, value):
                return max(world.exchange(self.rank, int(value)))

            def barrier(self):
                world.exchange(self.rank, None)

            def abort(self, code=1):  # the others stop in their next collective (BrokenBarrierError)
                world._barrier.abort()
                raise SystemExit(code)

        comm = Rank()
        comm.rank, comm.size, comm.local_rank = rank, self.size, self.layout[rank]
        start = max(r for r in range(rank + 1) if self.layout[r] == 0)  # this node's first rank
        stop = next((r for r in range(rank + 1, self.size) if self.layout[r] == 0), self.size)
        comm.local_size = stop - start
        return comm

    def run(self, job) -> list:
        """``job(comm)`` on every rank (rank 0 on this thread); every rank's result, or its exception."""
        results: list = [None] * self.size
        prepare = rollout_job._prepare

        def serialized(*args, **kwargs):
            with SET_UP_ONE_AT_A_TIME:
                return prepare(*args, **kwargs)

        def one(rank):
            try:
                results[rank] = job(self.communicator(rank))
            except BaseException as failure:  # noqa: BLE001 - handed to the test
                results[rank] = failure
                self._barrier.abort()

        threads = [threading.Thread(target=one, args=(rank,), daemon=True) for rank in range(1, self.size)]
        rollout_job._prepare = serialized
        try:
            for thread in threads:
                thread.start()
            one(0)
            for thread in threads:
                thread.join(TIMEOUT)
                assert not thread.is_alive(), "a rank hangs"
        finally:
            rollout_job._prepare = prepare
        return results


def read(path) -> xr.Dataset:
    with xr.open_dataset(path) as dataset:
        return dataset.load()


def prone_states(tmp_path, prone: list[int]):
    """The case's drawn states as a file, members ``prone`` scaled x20 (finite at first, then they blow up)."""
    case = ks_case()
    solver = build_host_solver(case)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(case.rollout.members), seed=3).numpy()
    u0[prone] *= 20.0
    return write_netcdf(trajectory_dataset(u0[:, None], [0.0], state_dim="x", state_coords=solver.x.numpy()),
                        tmp_path / "initial.nc")


# 7 members in 4 batches of 2: on 3 ranks 2 + 1 + 1 batches; ranks 0-1 on one node, rank 2 first of another
@pytest.mark.parametrize("layout", [[0, 1, 0], [0, 1, 2, 3, 4]], ids=["two_nodes", "idle_ranks"])
def test_ranks_write_the_file_one_process_writes_and_every_rank_returns_its_summary(tmp_path, layout, caplog):
    initial = prone_states(tmp_path, prone=[5])  # in the third batch: never rank 0's
    case = ks_case(f"rollout.initial_conditions='{initial}'")
    serial = run_rollout(case, tmp_path / "serial.nc", progress=False)
    world = ThreadWorld(layout)
    results = world.run(lambda comm: run_rollout(case, tmp_path / "ranks.nc", progress=False, comm=comm))
    assert not any(isinstance(result, BaseException) for result in results), results
    idle = [rank for rank in range(len(layout)) if not rank_batches(batch_bounds(7, 2), len(layout), rank)]
    warned = [record for record in caplog.records if "nothing to do" in record.getMessage()]
    assert len(warned) == (1 if idle else 0)  # once for the job, and only where a rank idles
    one, many = read(tmp_path / "serial.nc"), read(tmp_path / "ranks.nc")
    for name in ("u", "status", "blowup_time", "member", "time"):
        np.testing.assert_array_equal(many[name].values, one[name].values, err_msg=name)
    # blew_up: exactly the members whose saves went non-finite (a definition, not the file's own word)
    non_finite = ~np.isfinite(one.u.values.reshape(case.rollout.members, -1)).all(axis=1)
    assert non_finite.any() and not non_finite.all()
    np.testing.assert_array_equal(many.status.values == STATUS_FLAGS["blew_up"], non_finite)
    assert many.attrs["members_blew_up"] == int(non_finite.sum()) == serial.blew_up
    assert many.attrs["ranks"] == len(layout) and one.attrs["ranks"] == 1
    assert many.attrs["member_steps"] == one.attrs["member_steps"]  # the same work, however shared
    # run_rollout returns the same summary on every rank
    assert all(result == results[0] for result in results)
    assert results[0].ranks == len(layout) and results[0].blew_up == serial.blew_up
    assert results[0].member_steps == serial.member_steps
    # --resume over the finished file: it is taken as it is, and its summary counts its members
    again = run_rollout(case, tmp_path / "ranks.nc", resume=True, progress=False)
    assert (again.members, again.ok, again.blew_up) == (case.rollout.members, int((~non_finite).sum()),
                                                       int(non_finite.sum()))


def test_every_member_is_stepped_on_exactly_one_rank_from_its_own_initial_state(tmp_path):
    """Each rank's set-up: its batches are its contiguous share of the global batches, and its states are
    the drawn states of exactly those members (as one process draws them)."""
    case = ks_case()
    whole = rollout_job._prepare(case, tmp_path / "one.nc", None, None, False, SerialCommunicator(),
                                 contextlib.ExitStack())
    world = ThreadWorld([0, 1, 0])

    def prepare(comm):
        if comm.rank == 0:  # (rank 0 alone locks the output; the others may not need it)
            with contextlib.ExitStack() as held:
                return rollout_job._prepare(case, tmp_path / "ranks.nc", None, None, False, comm, held)
        return rollout_job._prepare(case, tmp_path / "ranks.nc", None, None, False, comm, contextlib.ExitStack())

    setups = world.run(prepare)
    seen = []
    for rank, setup in enumerate(setups):
        assert not isinstance(setup, BaseException), setup
        assert setup.mine == rank_batches(whole.batches, 3, rank)
        for start, stop in setup.mine:
            offset = start - setup.first_position
            np.testing.assert_array_equal(setup.u0[offset:offset + stop - start].numpy(),
                                          whole.u0[start:stop].numpy(), err_msg=f"rank {rank}")
            seen.extend(range(start, stop))
    assert sorted(seen) == list(range(case.rollout.members)) and len(seen) == len(set(seen))


def test_a_run_resumed_on_more_ranks_redoes_no_work_and_writes_the_uninterrupted_file(tmp_path):
    """The checkpoint rank 0 read reaches every rank: a rank whose batch was finished or half-done before
    the stop continues it (the member-steps of the whole job are the uninterrupted run's)."""
    case = ks_case("rollout.checkpoint_every=4", "rollout.members=6")
    straight = run_rollout(case, tmp_path / "straight.nc", progress=False)
    stopper = StopsAfter()
    bare = run_rollout(case, tmp_path / "bare.nc", closure=stopper, progress=False)
    assert bare.member_steps == straight.member_steps
    batches = len(batch_bounds(case.rollout.members, case.rollout.batch_size))
    per_batch = stopper.calls // batches  # (calls a stage, whatever the batch's size; plus one to check the fit)
    assert batches == 3
    # batches 0-1 finished, batch 2 (rank 1's on 2 ranks) half-done, past a checkpoint
    stopper.calls, stopper.after = 0, 2 * per_batch + per_batch // 2
    with pytest.raises(KeyboardInterrupt):
        run_rollout(case, tmp_path / "resumed.nc", closure=stopper, progress=False)
    stopper.after = None
    left = read_checkpoint(tmp_path / "resumed.nc")  # what the resume starts from: as planned
    starts = [start for start, _ in batch_bounds(case.rollout.members, case.rollout.batch_size)]
    assert sorted(left["done"]) == starts[:2] and list(left["in_flight"]) == [starts[2]]
    assert starts[2] in dict(rank_batches(batch_bounds(case.rollout.members, case.rollout.batch_size), 2, 1))
    results = ThreadWorld([0, 1]).run(lambda comm: run_rollout(case, tmp_path / "resumed.nc", closure=stopper,
                                                              resume=True, progress=False, comm=comm))
    assert not any(isinstance(result, BaseException) for result in results), results
    resumed, whole = read(tmp_path / "resumed.nc"), read(tmp_path / "bare.nc")
    for name in ("u", "status", "blowup_time"):
        np.testing.assert_array_equal(resumed[name].values, whole[name].values, err_msg=name)
    assert resumed.attrs["member_steps"] == whole.attrs["member_steps"]
    assert resumed.attrs["ranks_per_run"].tolist() == [1, 2]
    assert all(result.resumed for result in results)
    # this run's summary counts this run's work: the whole rollout's less the checkpoint's
    assert results[0].member_steps == whole.attrs["member_steps"] - left["member_steps"]
    # the finished file's summary names the ranks of the run that finished it
    finished = run_rollout(case, tmp_path / "resumed.nc", closure=stopper, resume=True, progress=False)
    assert finished.ranks == 2 and not finished.resumed


def test_a_resume_of_a_finished_file_returns_it_on_every_rank_without_running(tmp_path):
    case = ks_case("rollout.members=4")
    first = run_rollout(case, tmp_path / "out.nc", progress=False)
    before = (tmp_path / "out.nc").stat().st_mtime_ns
    results = ThreadWorld([0, 1]).run(lambda comm: run_rollout(case, tmp_path / "out.nc", resume=True,
                                                              progress=False, comm=comm))
    assert not any(isinstance(result, BaseException) for result in results), results
    assert (tmp_path / "out.nc").stat().st_mtime_ns == before
    assert all(result.members == first.members and result.blew_up == first.blew_up for result in results)
    assert all(result.ranks == 1 for result in results)  # the ranks that made the file, not this call's
    import h5py

    with h5py.File(tmp_path / "out.nc", "r+") as file:  # finished on 4 ranks by a resume of an older checkpoint,
        file.attrs["ranks"] = 4                         # which recorded no ranks_per_run
        del file.attrs["ranks_per_run"]
    assert run_rollout(case, tmp_path / "out.nc", resume=True, progress=False).ranks == 4  # (it read 1)


# --- a rank's device
@pytest.fixture
def four_gpus(monkeypatch):
    """CUDA said to be there with 4 devices (``rank_device`` only names devices; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    return 4


def test_auto_and_bare_cuda_spread_the_ranks_of_a_node_over_its_gpus(four_gpus):
    for name in ("auto", "cuda"):
        for local_rank in range(2 * four_gpus):
            assert rank_device(name, local_rank) == torch.device("cuda", local_rank % four_gpus), (name, local_rank)
    # a device named with its index, or the CPU, is taken as given on every rank
    for local_rank in range(four_gpus):
        assert rank_device("cuda:0", local_rank) == torch.device("cuda", 0)
        assert rank_device("cuda:2", local_rank) == torch.device("cuda", 2)
        assert rank_device("cpu", local_rank) == torch.device("cpu")


def test_the_job_chooses_a_ranks_device_by_its_rank_on_the_node(tmp_path, monkeypatch):
    asked = []

    def spy(name, local_rank):
        asked.append((name, local_rank))
        return torch.device("cpu")

    monkeypatch.setattr(rollout_job, "rank_device", spy)
    comm = SerialCommunicator()
    comm.rank, comm.size, comm.local_rank, comm.local_size = 3, 4, 1, 2
    case = ks_case()
    rollout_job._prepare(case, tmp_path / "out.nc", None, None, False, comm, contextlib.ExitStack())
    assert asked == [(case.compute.device, comm.local_rank)]


# --- failures shared by every rank
class Gathered(SerialCommunicator):
    """What ``allgather`` answers on rank ``rank`` when the ranks report ``everyone``."""

    def __init__(self, rank: int, everyone: list):
        self.rank, self.size, self.everyone = rank, len(everyone), everyone

    def allgather(self, item):
        return self.everyone


def test_agree_raises_the_lowest_failing_ranks_error_everywhere_with_its_kind():
    errors = [None, DataError("bad members [3]"), ConfigError("other")]
    reports = [None if e is None else (type(e), str(e)) for e in errors]
    agree(Gathered(0, [None] * 3), None)  # nobody failed: nothing raised
    # rank 0 reports the lowest failing rank's error, as its type
    with pytest.raises(DataError, match=r"^rank 1: bad members \[3\]$"):
        agree(Gathered(0, reports), None)
    # the failing rank raises its own exception, the others RankFailure marked as bad input (exit 2)
    with pytest.raises(DataError) as own:
        agree(Gathered(1, reports), errors[1])
    assert own.value is errors[1]
    with pytest.raises(RankFailure, match="rank 1 failed: bad members") as other:  # rank 2 failed too, later
        agree(Gathered(2, reports), errors[2])
    assert other.value.bad_input
    # a failure that is not bad input: not bad_input elsewhere
    reports = [None, (RuntimeError, "no device"), None]
    with pytest.raises(RankFailure) as other:
        agree(Gathered(2, reports), None)
    assert not other.value.bad_input


def test_batches_go_to_ranks_contiguously_first_ranks_taking_the_extra_one():
    """``rank_batches``' definition: a contiguous run each, in rank order, and the first ranks get one
    more when the ranks do not divide the batches."""
    for members in range(1, 15):
        for batch_size in (1, 2, 3):
            batches = batch_bounds(members, batch_size)
            for size in range(1, 7):
                split = [rank_batches(batches, size, rank) for rank in range(size)]
                assert [b for part in split for b in part] == batches
                counts = [len(part) for part in split]
                assert counts == sorted(counts, reverse=True) and counts[0] - counts[-1] <= 1, counts


def test_idle_ranks_named_are_those_without_a_batch():
    """The warning names exactly the ranks ``rank_batches`` leaves empty."""
    import re

    from hybridnde.distributed import idle_ranks_warning

    for members in range(1, 12):
        for batch_size in (1, 2, 3, 5):
            batches = batch_bounds(members, min(batch_size, members))
            for ranks in range(len(batches) + 1, len(batches) + 4):
                message = idle_ranks_warning(members, len(batches), batch_size, ranks)
                named = re.search(r"ranks? (\d+)(?:-(\d+))? ha(?:s|ve) nothing to do", message)
                first, last = int(named[1]), int(named[2] or named[1])
                idle = [rank for rank in range(ranks) if not rank_batches(batches, ranks, rank)]
                assert list(range(first, last + 1)) == idle, message


def test_a_launcher_that_does_not_say_the_job_is_one_rank_without_mpi4py_is_refused(monkeypatch):
    """Without mpi4py a rank cannot know its partners: it runs alone only where the launcher says the job
    has one rank."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    for name in distributed.LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PMIX_RANK", "0")  # a PMIx launcher: the rank, no size among the variables read
    monkeypatch.setattr(distributed, "_WORLD", None)
    with pytest.raises(ConfigError, match="mpi4py is not installed"):
        distributed.world()


def test_largest_batch_size_needs_two_ranks():
    with pytest.raises(ValueError, match="members >= ranks >= 2"):
        distributed.largest_batch_size_for(5, 1)


def test_checkpoints_come_every_checkpoint_every_steps_rounded_up_to_whole_chunks_and_not_at_the_end(
        tmp_path, monkeypatch):
    """docs/rollout.md: ``checkpoint_every`` steps between restart checkpoints, rounded up to whole output
    chunks; the finished file needs none (it is committed at once)."""
    from hybridnde.netcdf_stream import TrajectoryStreamWriter

    steps, chunk_steps, every = 23, 4, 5  # chunks of 4 steps (time_chunk 4, save_every 1): 24 saves, 6 chunks
    case = ks_case(f"rollout.steps={steps}", "output.time_chunk=4", "rollout.save_every=1", "rollout.members=2",
                   f"rollout.checkpoint_every={every}")
    written = []
    original = TrajectoryStreamWriter.checkpoint

    def spy(self, status, blowup_time, payload, *args, **kwargs):
        written.append(payload["member_steps"] // case.rollout.members)  # steps each member has done
        return original(self, status, blowup_time, payload, *args, **kwargs)

    monkeypatch.setattr(TrajectoryStreamWriter, "checkpoint", spy)
    run_rollout(case, tmp_path / "out.nc", progress=False)
    out = read(tmp_path / "out.nc")
    n_saves = out.time.size  # (save 0 is the initial state: the first chunk holds one step fewer)
    chunk_ends = [min((j + 1) * 4, n_saves) - 1 for j in range(-(-n_saves // 4))]  # step of each chunk's last save
    interval = -(-every // chunk_steps)  # the smallest whole number of chunks >= every steps
    assert interval == 2 and written == chunk_ends[interval - 1:-1:interval]


def test_the_steps_recorded_are_the_steps_run_to_the_last_save(tmp_path):
    """docs/netcdf.md: ``steps`` is what ran; steps after the last save are not run."""
    case = ks_case("rollout.steps=25", "rollout.save_every=2", "rollout.members=2")
    run_rollout(case, tmp_path / "out.nc", progress=False)
    out = read(tmp_path / "out.nc")
    assert out.attrs["steps"] == round((out.time.values[-1] - out.time.values[0]) / out.attrs["dt"]) != 25


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None or importlib.util.find_spec("mpi4py") is None,
                    reason="needs mpiexec and mpi4py (pip install 'hybridnde[mpi]')")
@pytest.mark.parametrize("failing", ["0", "1"])
def test_a_rank_failing_under_mpi_leaves_no_output_lock_file(tmp_path, monkeypatch, failing):
    """Only a real abort reaches this: ``MPI_Abort`` skips every exit handler, so the lock rank 0 holds
    beside the output is released (its file removed) before it, as the partial file is; when another
    rank fails, the abort kills rank 0 inside a collective and that rank removes the file (it was left)."""
    from test_rollout_mpi import CASE_FILES, FAILING_DRIVER, mpiexec

    from hybridnde.output_lock import lock_path

    (tmp_path / "two_body.toml").write_text(CASE_FILES["two_body.toml"])
    out = tmp_path / "rollout.nc"
    monkeypatch.setenv("FAILING_RANK", failing)
    result = mpiexec(2, sys.executable, "-c", FAILING_DRIVER, str(tmp_path / "two_body.toml"), str(out), "runtime",
                     "0.1", cwd=tmp_path)
    assert result.returncode == 1 and f"rank {failing} of 2 failed" in result.stderr, result.stderr[-3000:]
    assert not out.exists() and not lock_path(out).exists()


def test_a_disk_too_small_for_the_file_is_said_once_for_the_job(tmp_path, monkeypatch, caplog):
    """Every rank checks the disk before drawing its members; rank 0 alone says so (one job, one file)."""
    import collections
    import shutil as shell

    case = ks_case()
    n_saves = case.rollout.steps // case.rollout.save_every + 1
    solver = build_host_solver(case)
    raw = case.rollout.members * n_saves * int(np.prod(solver.state_shape)) * solver.dtype.itemsize  # u, uncompressed
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shell, "disk_usage", lambda path: usage(2 * raw, raw + 1, raw - 1))  # short, not 4x short
    results = ThreadWorld([0, 1, 0]).run(lambda comm: run_rollout(case, tmp_path / "out.nc", progress=False,
                                                                  comm=comm))
    assert not any(isinstance(result, BaseException) for result in results), results
    said = [record for record in caplog.records if "GiB are free there" in record.getMessage()]
    assert len(said) == 1, [record.getMessage() for record in said]


def test_a_batch_size_above_the_members_records_the_batch_that_ran(tmp_path):
    """docs/netcdf.md: ``batch_size`` is what ran; a batch never holds more than the members."""
    case = ks_case("rollout.members=3", "rollout.batch_size=10")
    summary = run_rollout(case, tmp_path / "out.nc", progress=False)
    ran = max(stop - start for start, stop in batch_bounds(case.rollout.members, case.rollout.batch_size))
    assert read(tmp_path / "out.nc").attrs["batch_size"] == summary.batch_size == ran


def test_a_fresh_start_discards_an_earlier_runs_checkpoint_so_a_later_resume_is_not_refused(tmp_path):
    """The warning says the earlier checkpoint is discarded: left beside this run's partial file it
    described another run's, and this run stopped before its own first checkpoint could not resume."""
    case = ks_case("rollout.members=2", "rollout.checkpoint_every=4")
    closure = StopsAfter()
    run_rollout(case, tmp_path / "straight.nc", closure=closure, progress=False)
    out, whole = tmp_path / "out.nc", closure.calls
    closure.calls, closure.after = 0, whole // 2  # the earlier run: stopped half-way, past checkpoints
    with pytest.raises(KeyboardInterrupt):
        run_rollout(case, out, closure=closure, progress=False)
    assert read_checkpoint(out) is not None
    closure.calls, closure.after = 0, 2  # this run, afresh: stopped in its first chunk, before any checkpoint
    with pytest.raises(KeyboardInterrupt):
        run_rollout(case, out, closure=closure, progress=False)
    closure.after = None
    run_rollout(case, out, closure=closure, resume=True, progress=False)  # from the beginning: nothing to resume
    done, straight = read(out), read(tmp_path / "straight.nc")
    for name in ("u", "status", "blowup_time"):
        np.testing.assert_array_equal(done[name].values, straight[name].values, err_msg=name)
