"""`hybridnde simulate` streamed with checkpoints: the file is the in-memory simulation's, bit for bit,
and a stopped simulation resumed from its checkpoint ends with the uninterrupted run's file."""
import errno
import os

import numpy as np
import pytest
import torch
import xarray as xr

from conftest import break_chunk_index
from hybridnde import simulation_job
from hybridnde.cli import main
from hybridnde.config import load_case
from hybridnde.io import DataError, ResumeRefused, write_netcdf
from hybridnde.netcdf_stream import checkpoint_path, has_restart_files, partial_path
from hybridnde.rollout import BatchRunner
from hybridnde.simulate import simulate_case
from hybridnde.simulation_job import run_simulation
from hybridnde.systems import build_solver

CASES = os.path.join(os.path.dirname(__file__), "..", "cases")

#: small, several output chunks, a spin-up (KS) or a file's clock (below)
SMALL = {"ks_l22": ["time.n_steps=30", "time.spinup_steps=8", "initial_condition.members=3", "output.time_chunk=4"],
         "ks_fd": ["time.n_steps=24", "time.save_every=2", "time.spinup_steps=20", "initial_condition.members=2", "output.time_chunk=5"],
         "lorenz63": ["time.n_steps=90", "time.save_every=10", "initial_condition.members=3", "output.time_chunk=2"]}


def small_case(name: str, *extra: str):
    return load_case(os.path.join(CASES, f"{name}.toml"), overrides=[*SMALL[name], *extra])


def in_memory_file(case, path):
    write_netcdf(simulate_case(case, progress=False), path, compression_level=case.output.compression_level,
                 time_chunk=case.output.time_chunk)
    return path


#: attributes that differ between two runs of the same simulation
PER_RUN = {"history", "wall_seconds", "run_id", "resumed_runs"}


def plain(attrs):
    return {key: np.asarray(value).tolist() for key, value in attrs.items()}


def assert_same_file(first, second):
    with xr.open_dataset(first) as a, xr.open_dataset(second) as b:
        for name in ("u", "status", "blowup_time", "time", "member"):
            np.testing.assert_array_equal(a[name].values, b[name].values)
            assert a[name].dtype == b[name].dtype and plain(a[name].attrs) == plain(b[name].attrs)
        assert a.u.encoding["chunksizes"] == b.u.encoding["chunksizes"]
        shared = set(a.attrs) - PER_RUN
        assert shared <= set(b.attrs) and {key: str(a.attrs[key]) for key in shared} == \
            {key: str(b.attrs[key]) for key in shared}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_streamed_file_is_the_in_memory_simulations(tmp_path, name):
    case = small_case(name)
    run_simulation(case, tmp_path / "streamed.nc", progress=False, checkpoint_seconds=0.0)
    assert_same_file(in_memory_file(case, tmp_path / "memory.nc"), tmp_path / "streamed.nc")
    # what `hybridnde run` compares: a closure trained on a truth written in memory is not made again
    from hybridnde.checksums import data_checksum

    assert data_checksum(tmp_path / "memory.nc") == data_checksum(tmp_path / "streamed.nc")
    assert not has_restart_files(tmp_path / "streamed.nc") and not partial_path(tmp_path / "streamed.nc").exists()


@pytest.mark.filterwarnings("error::RuntimeWarning")  # (a float64 bound overflowed against float32 states)
def test_float32_states_are_written_as_float64_and_a_blowup_is_marked_as_in_memory(tmp_path):
    """u is float64 in every truth file (docs/netcdf.md); RK4 far past its stability limit blows up,
    and the member is NaN from its first non-finite save, with its time, as in memory."""
    case = small_case("lorenz63", "compute.dtype=\"float32\"", "time.dt=0.4")
    run_simulation(case, tmp_path / "streamed.nc", progress=False)
    with xr.open_dataset(tmp_path / "streamed.nc") as streamed:
        assert streamed.u.dtype == np.float64 and (streamed.status.values == 1).all()
        assert np.isfinite(streamed.blowup_time.values).all()
    assert_same_file(in_memory_file(case, tmp_path / "memory.nc"), tmp_path / "streamed.nc")


def stop_after(monkeypatch, chunks: int):
    """Ctrl-C in the ``chunks + 1``-th chunk's stepping."""
    real, calls = BatchRunner.advance, []

    def advance(self, state):
        calls.append(1)
        if len(calls) > chunks:
            raise KeyboardInterrupt
        return real(self, state)
    monkeypatch.setattr(BatchRunner, "advance", advance)
    return calls


def stopped_with_a_checkpoint(case, out, *, chunks: int = 2, **kwargs):
    """``run_simulation`` stopped by Ctrl-C in chunk ``chunks + 1``, with a checkpoint after every chunk
    before it (``kwargs``: more of its arguments)."""
    with pytest.MonkeyPatch.context() as patch:
        stop_after(patch, chunks)
        with pytest.raises(KeyboardInterrupt):
            run_simulation(case, out, progress=False, checkpoint_seconds=0.0, **kwargs)


def edit_checkpoint(out, **changes):
    payload = torch.load(checkpoint_path(out), weights_only=True)
    torch.save({**payload, **changes}, checkpoint_path(out))


@pytest.mark.parametrize("name", ["ks_l22", "lorenz63"])
def test_a_stopped_simulation_resumes_to_the_uninterrupted_file_without_its_spin_up(tmp_path, monkeypatch, name):
    case = small_case(name)
    whole = run_simulation(case, tmp_path / "whole.nc", progress=False)
    out = tmp_path / "truth.nc"
    stop_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(case, out, progress=False, checkpoint_seconds=0.0)
    assert has_restart_files(out) and not out.exists()
    with xr.open_dataset(partial_path(out)) as partial:
        assert "simulate ... --resume" in partial.attrs["incomplete"]
    monkeypatch.undo()
    spun_up = []
    real_spin_up = simulation_job.spin_up
    monkeypatch.setattr(simulation_job, "spin_up", lambda *a, **k: spun_up.append(1) or real_spin_up(*a, **k))
    run_simulation(case, out, resume=True, progress=False, checkpoint_seconds=0.0)
    assert spun_up == [] and not has_restart_files(out)
    assert_same_file(whole, out)
    with xr.open_dataset(out) as resumed:
        assert resumed.attrs["resumed_runs"] == 1 and "resumed 1 time(s), finished" in resumed.attrs["history"]
        assert "incomplete" not in resumed.attrs


def stop_in_spin_up(monkeypatch, case, out, *, steps: int):
    """Ctrl-C in spin-up step ``steps`` (1-based), with a checkpoint after every step before it."""
    from hybridnde.systems import build_solver

    solver_class, calls = type(build_solver(case.system, case.time)), []
    real_step = solver_class.step

    def step(self, t, u, *args, **kwargs):
        calls.append(1)
        if len(calls) == steps:
            raise KeyboardInterrupt
        return real_step(self, t, u, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(solver_class, "step", step)
        with pytest.raises(KeyboardInterrupt):
            run_simulation(case, out, progress=False, checkpoint_seconds=0.0)


def test_a_simulation_stopped_in_its_spin_up_resumes_from_the_spin_up_step(tmp_path, monkeypatch):
    """The spin-up can be most of the work (ks_fd: 40000 of 60000 steps): it is checkpointed too."""
    case = small_case("ks_l22")  # 8 spin-up steps
    whole = run_simulation(case, tmp_path / "whole.nc", progress=False)
    out = tmp_path / "truth.nc"
    stop_in_spin_up(monkeypatch, case, out, steps=6)
    assert torch.load(checkpoint_path(out), weights_only=True)["spinup_step"] == 5
    first_steps = []
    real_spin_up = simulation_job.spin_up
    monkeypatch.setattr(simulation_job, "spin_up",
                        lambda *a, first=0, **k: first_steps.append(first) or real_spin_up(*a, first=first, **k))
    run_simulation(case, out, resume=True, progress=False)
    assert first_steps == [5]
    assert_same_file(whole, out)


def test_a_stop_before_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "truth.nc"
    stop_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(small_case("lorenz63"), out, progress=False)  # (a minute between checkpoints)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_a_resume_of_another_case_or_thread_count_or_a_rollouts_checkpoint_is_refused(tmp_path, monkeypatch):
    case = small_case("lorenz63")
    out = tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out)
    for other, says in ((small_case("lorenz63", "initial_condition.seed=11"), r"initial_condition.seed \(0 -> 11\)"),
                        (small_case("lorenz63", "time.n_steps=100"), r"time.n_steps \(90 -> 100\)")):
        with pytest.raises(ResumeRefused, match=f"cannot resume: the case differs in {says}"):
            run_simulation(other, out, resume=True, progress=False)
    torch.set_num_threads(2)  # (the fixture gives back one thread after the test)
    with pytest.raises(ResumeRefused, match=r"written with 1 torch thread\(s\), this run has 2.*\(--threads 1\)"):
        run_simulation(case, out, resume=True, progress=False)
    torch.set_num_threads(1)
    assert has_restart_files(out)  # a refusal leaves them for the right command
    # a rollout refuses a simulation's checkpoint, and a simulation a rollout's
    from hybridnde.rollout_resume import checked_checkpoint

    with pytest.raises(ResumeRefused, match="a simulation's checkpoint, not a rollout's"):
        checked_checkpoint(case, out, {})
    payload = torch.load(checkpoint_path(out), weights_only=True)
    del payload["stage"]
    torch.save(payload, checkpoint_path(out))
    with pytest.raises(ResumeRefused, match="a rollout's checkpoint, not a simulation's"):
        run_simulation(case, out, resume=True, progress=False)
    # without --resume: afresh, the checkpoint discarded
    run_simulation(case, out, progress=False)
    assert not has_restart_files(out) and out.is_file()


def test_simulate_resume_on_the_command_line(tmp_path, monkeypatch, capsys):
    case_file = os.path.join(CASES, "lorenz63.toml")
    sets = [argument for key in SMALL["lorenz63"] for argument in ("--set", key)]
    out = tmp_path / "truth.nc"
    assert main(["simulate", case_file, "--out", str(tmp_path / "whole.nc"), *sets]) == 0
    monkeypatch.setattr(simulation_job, "CHECKPOINT_SECONDS", 0.0)
    with monkeypatch.context() as patch:
        stop_after(patch, 4)
        assert main(["simulate", case_file, "--out", str(out), *sets]) == 130
    assert "`hybridnde simulate ... --resume` continues" in capsys.readouterr().err
    assert main(["simulate", case_file, "--out", str(out), *sets, "--resume"]) == 0
    assert_same_file(tmp_path / "whole.nc", out)
    modified = out.stat().st_mtime_ns
    assert main(["simulate", case_file, "--out", str(out), *sets, "--resume"]) == 0  # finished: nothing to do
    assert "nothing to resume" in capsys.readouterr().err and out.stat().st_mtime_ns == modified


def test_a_streamed_simulation_is_not_held_in_memory(tmp_path, monkeypatch, capsys):
    """The in-memory simulation is refused when its trajectory exceeds the memory available; streamed,
    only a chunk is held, and it runs (adaptive integrators still run in memory, and are refused)."""
    from hybridnde import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 450)  # the trajectory, 720 bytes, does not fit; a chunk of every member, 144 thrice, does
    case = small_case("lorenz63")
    with pytest.raises(Exception, match="holds the whole trajectory in memory"):
        simulate_case(case, progress=False)
    assert main(["simulate", os.path.join(CASES, "lorenz63.toml"), "--out", str(tmp_path / "truth.nc"),
                 *[argument for key in SMALL["lorenz63"] for argument in ("--set", key)]]) == 0
    capsys.readouterr()
    assert main(["simulate", os.path.join(CASES, "lorenz63.toml"), "--out", str(tmp_path / "adaptive.nc"),
                 "--set", "time.integrator=\"dopri5\"",
                 *[argument for key in SMALL["lorenz63"] for argument in ("--set", key)]]) == 2
    assert "holds the whole trajectory in memory" in capsys.readouterr().err


def test_a_full_disk_while_streaming_keeps_the_checkpoint_and_says_resume(tmp_path, monkeypatch, capsys):
    from hybridnde.netcdf_stream import TrajectoryStreamWriter

    real, calls = TrajectoryStreamWriter._store, []

    def store(self, block):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, block)
    monkeypatch.setattr(TrajectoryStreamWriter, "_store", store)
    monkeypatch.setattr(simulation_job, "CHECKPOINT_SECONDS", 0.0)
    out = tmp_path / "truth.nc"
    assert main(["simulate", os.path.join(CASES, "lorenz63.toml"), "--out", str(out),
                 *[argument for key in SMALL["lorenz63"] for argument in ("--set", key)]]) == 1
    error = capsys.readouterr().err
    assert "no space left on the device" in error and "--resume continues from it" in error
    assert "Traceback" not in error and has_restart_files(out) and not out.exists()


def blowing_up_case():
    """ks_l22 at 4x its time step from large states: 9 of 16 members blow up."""
    return load_case(os.path.join(CASES, "ks_l22.toml"), overrides=[
        "initial_condition.members=16", "time.dt=1.0", "time.n_steps=40", "time.spinup_steps=0",
        "output.time_chunk=3", "initial_condition.amplitude=5.0", "initial_condition.n_modes=12"])


def test_blown_up_members_keep_their_batch_as_in_memory(tmp_path):
    """The rollout engine drops blown-up members once they are half the batch; the survivors' last
    bits then depended on which others blew up (1e-15, growing in a chaotic system), unlike in memory."""
    case = blowing_up_case()
    run_simulation(case, tmp_path / "streamed.nc", progress=False)
    with xr.open_dataset(tmp_path / "streamed.nc") as streamed:
        assert 8 <= int((streamed.status.values == 1).sum()) < 16  # half or more, not all
    assert_same_file(in_memory_file(case, tmp_path / "memory.nc"), tmp_path / "streamed.nc")


def file_case(tmp_path, *extra):
    """lorenz63 from the first states of another simulation, with a spin-up (its clock runs on)."""
    source = run_simulation(small_case("lorenz63", "initial_condition.seed=3"), tmp_path / "ic.nc", progress=False)
    return small_case("lorenz63", "initial_condition.distribution=\"file\"", f"initial_condition.file=\"{source}\"",
                      "time.spinup_steps=30", *extra), source


def test_a_finished_file_is_kept_on_resume_only_while_its_initial_conditions_hold_the_same_states(tmp_path, capsys):
    case, source = file_case(tmp_path)
    out = run_simulation(case, tmp_path / "truth.nc", progress=False)
    modified = out.stat().st_mtime_ns
    run_simulation(case, out, resume=True, progress=False)
    assert out.stat().st_mtime_ns == modified
    # other states in the same file name: the finished truth is not this case's any more
    run_simulation(small_case("lorenz63", "initial_condition.seed=4"), source, progress=False)
    run_simulation(case, out, resume=True, progress=False)
    assert out.stat().st_mtime_ns != modified
    assert_same_file(in_memory_file(case, tmp_path / "memory.nc"), out)
    # a stop after the rename, before the checkpoint went: the finished file is kept, the checkpoint removed
    checkpoint_path(out).write_bytes(b"left by a stop")
    modified = out.stat().st_mtime_ns
    run_simulation(case, out, resume=True, progress=False)
    assert out.stat().st_mtime_ns == modified and not checkpoint_path(out).exists()
    # a resume checks the initial-conditions file: without it, it says why it needs it
    with pytest.MonkeyPatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_simulation(case, tmp_path / "other.nc", progress=False, checkpoint_seconds=0.0)
    source.unlink()
    with pytest.raises(DataError, match="a resumed simulation checks that initial_condition.file still holds the "
                                        "states it started from; restore the file, or point initial_condition.file"):
        run_simulation(case, tmp_path / "other.nc", resume=True, progress=False)
    with pytest.raises(DataError, match="not a readable NetCDF file") as caught:  # nothing to resume: the plain error
        run_simulation(case, tmp_path / "third.nc", resume=True, progress=False)
    assert "resumed" not in str(caught.value)


def test_an_adaptive_simulation_holds_the_lock_and_replaces_a_stopped_fixed_step_ones_files_unless_resuming(tmp_path, monkeypatch):
    from hybridnde.io import DataError
    from hybridnde.output_lock import output_lock

    out = tmp_path / "truth.nc"
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_simulation(small_case("lorenz63"), out, progress=False, checkpoint_seconds=0.0)
    assert has_restart_files(out)
    adaptive = small_case("lorenz63", "time.integrator=\"dopri5\"")
    with output_lock(out), pytest.raises(DataError, match="is writing it; wait for that run to end"):
        simulation_job.simulate_to_file(adaptive, out, progress=False)
    with pytest.raises(ResumeRefused, match="made with a fixed-step integrator; time.integrator = 'dopri5' solves in "
                                             "memory and cannot continue it"):  # (they were deleted, rc 0)
        simulation_job.simulate_to_file(adaptive, out, resume=True, progress=False)
    assert has_restart_files(out) and not out.exists()
    simulation_job.simulate_to_file(adaptive, out, progress=False)
    assert out.is_file() and not has_restart_files(out) and not checkpoint_path(out).exists()


def test_a_resumed_file_records_the_case_that_finished_it(tmp_path):
    """A resume may change keys outside the simulation's sections; the file kept the first run's case_toml
    (vpt_threshold 0.5 where the finishing case said 0.3), which evaluate then read."""
    from hybridnde.config import parse_case_text

    out = tmp_path / "truth.nc"
    stopped_with_a_checkpoint(small_case("lorenz63"), out)
    run_simulation(small_case("lorenz63", "evaluate.vpt_threshold=0.3"), out, resume=True, progress=False)
    with xr.open_dataset(out) as data:
        assert parse_case_text(data.attrs["case_toml"]).evaluate.vpt_threshold == 0.3


def test_a_spin_up_checkpoint_resumes_though_its_partial_file_is_damaged(tmp_path, monkeypatch):
    """A SIGKILL while HDF5 writes can leave the partial file unreadable; before the first save it holds
    nothing the checkpoint needs, so the spin-up goes on in a new one."""
    case = small_case("ks_l22")
    whole = run_simulation(case, tmp_path / "whole.nc", progress=False)
    out = tmp_path / "truth.nc"
    stop_in_spin_up(monkeypatch, case, out, steps=3)
    assert torch.load(checkpoint_path(out), weights_only=True)["spinup_step"] == 2
    partial_path(out).write_bytes(partial_path(out).read_bytes()[:1000])  # truncated mid-write
    run_simulation(case, out, resume=True, progress=False)
    assert_same_file(whole, out)
    # or missing (a stop while the resume started its new one)
    out.unlink()  # (a finished file of the same case is kept: the resume would make the same)
    stop_in_spin_up(monkeypatch, case, out, steps=3)
    partial_path(out).unlink()
    first_steps = []
    real_spin_up = simulation_job.spin_up
    monkeypatch.setattr(simulation_job, "spin_up",
                        lambda *a, first=0, **k: first_steps.append(first) or real_spin_up(*a, first=first, **k))
    run_simulation(case, out, resume=True, progress=False)
    assert first_steps == [2]  # (not started again)
    assert_same_file(whole, out)


def test_a_partial_file_with_a_broken_chunk_index_is_rebuilt_and_resumes_to_the_same_file(tmp_path, caplog):
    """A kill while HDF5 split u's chunk index (tests/test_partial_repair.py replays every such moment):
    the chunks the checkpoint recorded are copied into a new partial file, and the resume goes on."""
    case = small_case("lorenz63")
    whole = run_simulation(case, tmp_path / "whole.nc", progress=False)
    out = tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out, chunks=3)
    recorded = torch.load(checkpoint_path(out), weights_only=True)["partial_file"]["journal_rows"]
    assert recorded == case.initial_condition.members * 3  # each member's 3 chunks
    assert break_chunk_index(partial_path(out))
    run_simulation(case, out, resume=True, progress=False)
    assert "partial file of the interrupted simulation is damaged (" in caplog.text
    assert f"rebuilt from the {recorded} chunk(s) its journal recorded" in caplog.text
    assert_same_file(whole, out)


def test_a_files_clock_survives_a_spin_up_resume(tmp_path, monkeypatch):
    case, _ = file_case(tmp_path)
    whole = run_simulation(case, tmp_path / "whole.nc", progress=False)
    out = tmp_path / "truth.nc"
    stop_in_spin_up(monkeypatch, case, out, steps=5)
    run_simulation(case, out, resume=True, progress=False)
    assert_same_file(whole, out)


def test_changed_initial_conditions_refuse_a_resume(tmp_path, monkeypatch):
    case, source = file_case(tmp_path, "time.spinup_steps=0")
    out = tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out)
    run_simulation(small_case("lorenz63", "initial_condition.seed=4"), source, progress=False)
    with pytest.raises(ResumeRefused, match="initial_condition.file, .* has changed since"):
        run_simulation(case, out, resume=True, progress=False)


def test_another_runs_partial_refuses_a_resume(tmp_path, monkeypatch):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out)
    edit_checkpoint(out, run_id="another")
    with pytest.raises(ResumeRefused, match="another run wrote into the same output"):
        run_simulation(case, out, resume=True, progress=False)


def test_threads_0_on_both_sides_resumes_with_a_warning(tmp_path, monkeypatch, caplog):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out, threads_setting=0)
    torch.set_num_threads(2)
    run_simulation(case, out, resume=True, progress=False, threads_setting=0)
    assert "a thread setting of 0 leaves the count to torch" in caplog.text
    assert out.is_file()


def test_a_fresh_run_stopped_early_leaves_no_stale_checkpoint(tmp_path, monkeypatch):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out)
    assert has_restart_files(out)
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            run_simulation(case, out, progress=False)  # afresh, stopped before its first checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_finished_run_leaves_no_restart_file(tmp_path):
    run_simulation(small_case("lorenz63"), tmp_path / "truth.nc", progress=False, checkpoint_seconds=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["truth.nc"]


def test_an_unreadable_out_is_made_again_on_resume(tmp_path):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    out.write_bytes(b"not netcdf")
    run_simulation(case, out, resume=True, progress=False)
    assert_same_file(in_memory_file(case, tmp_path / "memory.nc"), out)


def test_an_adaptive_simulation_without_resume_remakes_a_finished_file(tmp_path):
    case = small_case("lorenz63", "time.integrator=\"dopri5\"")
    out = simulation_job.simulate_to_file(case, tmp_path / "truth.nc", progress=False)
    modified = out.stat().st_mtime_ns
    simulation_job.simulate_to_file(case, out, progress=False)
    assert out.stat().st_mtime_ns != modified


def test_an_adaptive_simulation_is_written_in_chunks_as_xarray_would_write_it(tmp_path, monkeypatch):
    """xarray's to_netcdf held ~4x the trajectory again while encoding it (an adaptive solve's memory
    peak: 7.3x the trajectory, 2.7x written in chunks); the file is the same, with no chunk left over a
    stop during the write, and the in-memory check counts IN_MEMORY_COPIES trajectories."""
    from hybridnde import memory, simulate
    from hybridnde.netcdf_stream import TrajectoryStreamWriter
    from hybridnde.partial_repair import journal_path

    case = small_case("lorenz63", "time.integrator=\"dopri5\"")
    out = simulation_job.simulate_to_file(case, tmp_path / "truth.nc", progress=False)
    assert_same_file(in_memory_file(case, tmp_path / "memory.nc"), out)
    with xr.open_dataset(out) as written:
        assert written.attrs["nfe"] > 0 and "incomplete" not in written.attrs
    assert sorted(path.name for path in tmp_path.iterdir()) == ["memory.nc", "truth.nc"]
    written, write = [], TrajectoryStreamWriter.write

    def interrupted(self, member_start, time_start, values):  # (Ctrl-C in the main thread, which queues chunks)
        written.append((member_start, time_start, values.shape))
        if len(written) == 3:
            raise KeyboardInterrupt
        write(self, member_start, time_start, values)

    # over a stopped fixed-step simulation's restart files, which stay until the new file is complete
    stopped = tmp_path / "stopped.nc"
    stopped_with_a_checkpoint(small_case("lorenz63"), stopped)
    restart = {path: path.read_bytes() for path in (partial_path(stopped), checkpoint_path(stopped),
                                                    journal_path(stopped))}
    monkeypatch.setattr(TrajectoryStreamWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        simulation_job.simulate_to_file(case, stopped, progress=False)
    assert written == [(0, 0, (3, 2, 3)), (0, 2, (3, 2, 3)), (0, 4, (3, 2, 3))]  # output.time_chunk = 2
    assert {path: path.read_bytes() for path in restart} == restart and has_restart_files(stopped)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["memory.nc", "truth.nc", *(path.name for path in restart)])  # nothing of the stopped write
    size = simulate.trajectory_bytes(case)
    monkeypatch.setattr(memory, "available_memory", lambda: simulate.IN_MEMORY_COPIES * size - 1)
    with pytest.raises(Exception, match=rf"in memory: .* \({simulate.IN_MEMORY_COPIES}x its"):
        simulate_case(case, progress=False)
    simulate.check_fits_in_memory(case)  # one trajectory fits


def test_wall_seconds_add_up_over_runs_and_a_fresh_file_says_no_resume(tmp_path, monkeypatch):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    fresh = run_simulation(case, tmp_path / "fresh.nc", progress=False)
    with xr.open_dataset(fresh) as f:
        assert "resumed_runs" not in f.attrs and "resumed" not in f.attrs["history"]
    stopped_with_a_checkpoint(case, out)
    edit_checkpoint(out, elapsed_seconds=1000.0)
    run_simulation(case, out, resume=True, progress=False)
    with xr.open_dataset(out) as f:
        assert f.attrs["wall_seconds"] >= 1000.0


def test_checkpoints_are_spaced_in_wall_time(tmp_path, monkeypatch):
    clock = iter(np.arange(0.0, 1e6, 1.0))  # each perf_counter call: +1 s
    monkeypatch.setattr(simulation_job.wallclock, "perf_counter", lambda: next(clock))
    writes = []
    real = simulation_job.TrajectoryStreamWriter.checkpoint
    monkeypatch.setattr(simulation_job.TrajectoryStreamWriter, "checkpoint",
                        lambda self, *a: writes.append(1) or real(self, *a))
    run_simulation(small_case("lorenz63", "time.n_steps=400", "output.time_chunk=2"), tmp_path / "t.nc",
                   progress=False, checkpoint_seconds=5.0)
    assert 0 < len(writes) <= 8  # 20 chunks, ~2 clock reads per chunk: one checkpoint per >= 5 s


def test_run_does_not_advise_simulate_resume(tmp_path, monkeypatch, caplog):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    stop_after(monkeypatch, 2)
    from hybridnde.pipeline import stages
    monkeypatch.setattr(simulation_job, "CHECKPOINT_SECONDS", 0.0)
    with pytest.raises(KeyboardInterrupt):
        stages.simulate(case, out, progress=False)
    assert "--resume" not in caplog.text


def test_the_blowup_warning_counts_members(tmp_path, caplog):
    run_simulation(blowing_up_case(), tmp_path / "t.nc", progress=False)
    with xr.open_dataset(tmp_path / "t.nc") as truth:
        blew_up = int((truth.status.values == 1).sum())
    assert blew_up < 16 and f"{blew_up} of 16 reference members blew up" in caplog.text


def test_a_checkpoint_of_another_device_warns(tmp_path, monkeypatch, caplog):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out)
    edit_checkpoint(out, device_name="cuda: Some GPU")
    import hybridnde.rollout as rollout

    put_in_form, real = [], rollout.in_working_form
    monkeypatch.setattr(rollout, "in_working_form", lambda *a: put_in_form.append(1) or real(*a))
    run_simulation(case, out, resume=True, progress=False)
    assert "a simulation written on cuda: Some GPU" in caplog.text
    assert put_in_form  # its states are put in this device's working form


def test_the_memory_check_refuses_one_byte_over(monkeypatch):
    from hybridnde import memory, simulate
    case = small_case("lorenz63")
    monkeypatch.setattr(memory, "available_memory", lambda: simulate.trajectory_bytes(case) - 1)
    with pytest.raises(Exception, match="holds the whole trajectory in memory.*fixed-step time.integrator"):
        simulate.check_fits_in_memory(case)


def test_a_fresh_start_over_a_checkpoint_says_it_discards_it(tmp_path, monkeypatch, caplog):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    for hint in (True, False):  # (run, which continues by itself, gives no --resume hint)
        with monkeypatch.context() as patch:
            stop_after(patch, 2)
            with pytest.raises(KeyboardInterrupt):
                run_simulation(case, out, progress=False, checkpoint_seconds=0.0)
        caplog.clear()
        run_simulation(case, out, progress=False, resume_hint=hint)
        assert "checkpoint of an earlier interrupted simulation" in caplog.text and "is discarded" in caplog.text
        assert ("`hybridnde simulate ... --resume` continues one" in caplog.text) is hint


def test_a_damaged_partial_file_after_the_spin_up_is_refused_naming_the_simulation(tmp_path, monkeypatch):
    case, out = small_case("lorenz63"), tmp_path / "truth.nc"
    stopped_with_a_checkpoint(case, out, chunks=3)
    partial_path(out).write_bytes(partial_path(out).read_bytes()[:2000])
    with pytest.raises(ResumeRefused, match="partial file of the interrupted simulation (cannot be|is damaged)"):
        run_simulation(case, out, resume=True, progress=False)
    with pytest.raises(ResumeRefused, match=r"output.time_chunk, output.compression_level or compute.dtype changed"):
        stop_after(monkeypatch, 3)
        try:
            run_simulation(case, out, progress=False, checkpoint_seconds=0.0)
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        run_simulation(small_case("lorenz63", "output.time_chunk=3"), out, resume=True, progress=False)


def test_a_resume_on_a_short_disk_warns_without_refusing(tmp_path, monkeypatch, capsys):
    """A resume continues a file already (mostly) on the disk: the free space is no reason to refuse."""
    import collections
    import shutil

    case_file, out = os.path.join(CASES, "lorenz63.toml"), tmp_path / "truth.nc"
    sets = [argument for key in SMALL["lorenz63"] for argument in ("--set", key)]
    monkeypatch.setattr(simulation_job, "CHECKPOINT_SECONDS", 0.0)
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        assert main(["simulate", case_file, "--out", str(out), *sets]) == 130
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10, 10))
    capsys.readouterr()
    assert main(["simulate", case_file, "--out", str(out), *sets, "--resume"]) == 0
    assert "the simulation writes up to" in capsys.readouterr().err and out.is_file()
    assert main(["simulate", case_file, "--out", str(tmp_path / "new.nc"), *sets]) == 2  # not resuming: refused


def test_the_writer_names_the_kind_of_run_it_cannot_reopen(tmp_path):
    from hybridnde.netcdf_stream import TrajectoryStreamWriter

    out = tmp_path / "truth.nc"
    partial_path(out).write_bytes(b"not hdf5")
    for what in ("simulation", "rollout"):
        with pytest.raises(ResumeRefused, match=f"partial file of the interrupted {what} cannot be reopened"):
            TrajectoryStreamWriter(out, members=np.arange(2), times=np.arange(3.0), state_dim="component",
                                   state_coords=["x"], state_shape=(1,), dtype=np.dtype(np.float64), title="t",
                                   solver="s", closure_checksum="none", case_toml="", extra_attrs={},
                                   compression_level=0, time_chunk=2, resume=True, what=what)


def test_simulate_passes_its_thread_setting(tmp_path, monkeypatch):
    """--threads 0 (torch's default) lets a resume run on another count with a warning; 1, the default, refuses."""
    seen = []
    monkeypatch.setattr(simulation_job, "run_simulation", lambda case, out, **kwargs: seen.append(kwargs["threads_setting"]))
    for extra, expected in (([], 1), (["--threads", "0"], 0), (["--threads", "2"], 2)):
        assert main(["simulate", os.path.join(CASES, "lorenz63.toml"), "--out", str(tmp_path / "t.nc"), *extra]) == 0
        assert seen.pop() == expected


def test_a_chunk_buffer_that_cannot_be_allocated_leaves_no_file_and_no_writer_thread(tmp_path, monkeypatch):
    """The writer was started before the clean-up's ``try``: a failure building the batch (its buffer of
    one output chunk of every member) left the partial file, the chunk journal and the writer's thread."""
    import threading

    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(simulation_job, "BatchRunner", no_memory)
    out = tmp_path / "truth.nc"
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        run_simulation(small_case("ks_l22"), out, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    assert not any(thread.name == "netcdf-writer" for thread in threading.enumerate())


def test_a_chunk_buffer_larger_than_the_memory_is_refused_before_any_work(tmp_path, monkeypatch):
    """Linux lets the buffers be allocated and its OOM killer then ends the run, files left behind."""
    from hybridnde import memory
    from hybridnde.config import ConfigError

    case = small_case("ks_l22")  # 3 members x 4 saves a chunk x 64 points x 8 bytes = 6144 bytes, 3 times
    monkeypatch.setattr(memory, "available_memory", lambda: 3 * 6144 - 1)
    with pytest.raises(ConfigError, match=r"a batch of 3 members holds its chunk of 4 saves \(output.time_chunk\) 3 "
                                          r"times over while it streams: .*; lower output.time_chunk or "
                                          r"initial_condition.members"):
        run_simulation(case, tmp_path / "truth.nc", progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(memory, "available_memory", lambda: 3 * 6144)
    assert run_simulation(case, tmp_path / "truth.nc", progress=False).is_file()


def test_an_adaptive_simulation_marks_a_member_that_blows_up_and_solves_the_others(tmp_path):
    """A member at 1e150 underflows the step all members share: the whole simulation failed (rk4 marked the
    member and went on). Now the members are solved one by one: the others as alone, that one blown up at
    the first save it does not reach."""
    import xarray as xr

    from hybridnde.systems import build_solver

    states = np.array([[1.0, 1.0, 1.0], [1e150, 1.0, 1.0], [-2.0, 0.5, 3.0]])
    source = tmp_path / "ic.nc"
    xr.Dataset({"u": (("member", "component"), states)}, coords={"component": ["x", "y", "z"]}).to_netcdf(source)
    case = small_case("lorenz63", "time.integrator=\"dopri5\"", "initial_condition.distribution=\"file\"",
                      f"initial_condition.file=\"{source}\"")
    data = simulate_case(case, progress=False)
    assert data.status.values.tolist() == [0, 1, 0]
    assert data.blowup_time.values[1] == data.time.values[1] and np.isnan(data.u.values[1, 1:]).all()
    solver = build_solver(case.system, case.time, dtype=torch.float64)
    for member in (0, 2):
        alone, _ = solver.solve_adaptive(torch.tensor(states[member:member + 1]), data.time.values.tolist(), method="dopri5",
                                         rtol=case.time.rtol, atol=case.time.atol)
        np.testing.assert_array_equal(data.u.values[member], alone[0].numpy())


def test_a_truth_whose_solver_breaks_its_invariants_is_named(tmp_path, caplog):
    """rk4 at dt = 0.01 cannot resolve a pericentre at e = 0.96: bound orbits escaped (energy -0.5 to
    positive), every member marked ok, no word. Both the streamed file and the in-memory trajectory now
    warn, naming the invariant; the case's own orbits (e <= 0.7, drift ~1e-6) do not."""
    from hybridnde.simulate import TRUTH_DRIFT_WARNING

    common = ["time.n_steps=800", "time.save_every=100", "initial_condition.members=3", "time.spinup_steps=0"]
    for eccentricity, warned in (("[0.5, 0.7]", False), ("[0.95, 0.97]", True)):
        case = load_case(os.path.join(CASES, "two_body.toml"),
                         overrides=[*common, f"initial_condition.eccentricity={eccentricity}"])
        caplog.clear()
        with caplog.at_level("WARNING"):
            run_simulation(case, tmp_path / f"{eccentricity}.nc", progress=False)
            simulate_case(case, progress=False)
        said = [record.getMessage() for record in caplog.records if "conserves it" in record.getMessage()]
        assert len(said) == (4 if warned else 0), said  # energy and angular momentum, in each file
        said = [message for message in said if "energy" in message]
        with xr.open_dataset(tmp_path / f"{eccentricity}.nc") as truth:
            energy = build_solver(case.system, case.time).invariants(torch.as_tensor(truth["u"].values))["energy"]
            drift = (energy[:, -1] / energy[:, 0] - 1.0).abs().numpy()
            assert (truth["status"].values == 0).all()  # nothing else marks these members
        assert (drift.max() > TRUTH_DRIFT_WARNING) == warned
        if warned:
            assert all(message.startswith(f"the truth's energy changes by up to {drift.max():.2g}") and
                       message.endswith("lower time.dt or use an adaptive time.integrator") for message in said)
    # an adaptive truth's advice is its tolerances (its dt does not set the step)
    loose = load_case(os.path.join(CASES, "two_body.toml"), overrides=[
        *common, "initial_condition.eccentricity=[0.9, 0.95]", "time.integrator=\"dopri5\"", "time.rtol=1e-3",
        "time.atol=1e-4"])
    caplog.clear()
    with caplog.at_level("WARNING"):
        simulate_case(loose, progress=False)
    said = [record.getMessage() for record in caplog.records if "conserves it" in record.getMessage()]
    assert said and all(message.endswith("lower time.rtol and time.atol") for message in said)
