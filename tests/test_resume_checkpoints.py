"""What a resumed rollout or simulation must share with the run that wrote its checkpoint, and what it
takes from it (``rollout_resume``, ``simulation_resume``): the cases the identity checks let through and
those they refuse, where the main resume tests (test_rollout.py, test_simulation_job.py) leave them
unchecked."""
from __future__ import annotations

import h5py
import pytest
import torch

from hybridnde.io import DataError, ResumeRefused
from hybridnde.netcdf_stream import partial_path
from hybridnde.rollout import SaveSchedule
from hybridnde.rollout_job import run_rollout
from hybridnde.rollout_resume import JobRecord, resume_identity, rollout_checksum, same_rollout_case, \
    threads_changed, written_elsewhere
from hybridnde.simulation_job import run_simulation
from hybridnde.simulation_resume import finished_simulation
from test_rollout import interrupted_rollout, small_mlp, two_body_case
from test_simulation_job import file_case, small_case, stop_in_spin_up


@pytest.mark.parametrize("change", ["system.gravitational_parameter=1.1", "time.dt=0.02",
                                    "initial_condition.eccentricity=[0.4, 0.6]", "hybrid.substeps=2"])
def test_a_rollout_resume_is_refused_when_any_section_its_values_depend_on_changed(tmp_path, change):
    """The members are drawn from [initial_condition], the host runs [system] as [hybrid] changes it, in
    [time]'s steps: a resume with another value of any of them would mix two rollouts in one file."""
    common = ("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "r.nc"
    interrupted_rollout(two_body_case(*common), out, model, after=0.3)
    key = change.split("=")[0]
    with pytest.raises(DataError, match=rf"cannot resume: the case differs in {key} \("):
        run_rollout(two_body_case(*common, change), out, closure=model, resume=True, progress=False)


def test_a_rollout_case_change_that_cannot_be_named_is_still_refused(tmp_path):
    """A partial file without its case_toml (an earlier version's, or unreadable) leaves the changed keys
    unnamed; the checksum still says the case differs, and the resume is refused for it."""
    case = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5")
    model, out = small_mlp(), tmp_path / "r.nc"
    interrupted_rollout(case, out, model, after=0.3)
    with h5py.File(partial_path(out), "r+") as file:
        del file.attrs["case_toml"]
    other = two_body_case("rollout.batch_size=2", "rollout.steps=60", "output.time_chunk=5", "time.dt=0.02")
    with pytest.raises(DataError, match=r"cannot resume: the case differs; rerun with"):
        run_rollout(other, out, closure=model, resume=True, progress=False)
    assert same_rollout_case(other, rollout_checksum(case), None) == []  # differs, names unknown


def test_run_only_keys_do_not_make_a_batch_size_chosen_another_way_another_case():
    """A checkpoint recorded with the earlier checksum (batch-choice keys in it) and resumed with the
    batch size chosen automatically is the same rollout; changing run-only keys (threads,
    checkpoint_every) as well does not make it another case (the thread count has its own check)."""
    explicit = two_body_case("rollout.batch_size=6", "rollout.steps=60")
    automatic = two_body_case("rollout.batch_size=0", "rollout.memory_budget_mb=64", "rollout.steps=60",
                              "rollout.threads=0", "rollout.checkpoint_every=7")
    recorded = rollout_checksum(explicit, legacy=True)
    assert recorded not in (rollout_checksum(automatic), rollout_checksum(automatic, legacy=True))
    assert same_rollout_case(automatic, recorded, explicit.to_toml()) is None
    longer = two_body_case("rollout.batch_size=0", "rollout.steps=80", "rollout.threads=0")
    changed = same_rollout_case(longer, recorded, explicit.to_toml())
    assert "rollout.steps (60 -> 80)" in changed and not any("threads" in key for key in changed)


def test_a_thread_count_recorded_without_its_setting_was_chosen():
    """Checkpoints written before the setting was recorded recorded the count only when rollout.threads
    chose it (0 recorded nothing): such a count is held to, also by a run that leaves it to torch."""
    cpu = torch.device("cpu")
    identity = resume_identity(two_body_case("rollout.threads=0"), closure_checksum="none", batch_size=1, n_saves=1,
                               initial_conditions_checksum="draw", device=cpu)
    written = identity["threads"] + 1
    refusal = threads_changed({"threads": written}, identity)
    assert refusal and f"--set rollout.threads={written}" in refusal
    assert threads_changed({"threads": written, "threads_setting": 0}, identity) is None  # both left it to torch


def test_an_older_checkpoint_without_its_step_count_counts_each_batchs_own_members():
    """Checkpoints written before member_steps was recorded: the steps done are counted from the finished
    batches and the chunks of those in flight, each batch with its own members (3, 2 and 1 here)."""
    schedule = SaveSchedule(steps=60, save_every=2, time_chunk=5, dt=0.01)  # 31 saves, 60 steps a member
    checkpoint = {"done": [0, 3], "in_flight": {5: {"next_chunk": 3}}, "first_bad_save": torch.full((6,), -1)}
    record = JobRecord.restored(checkpoint, members=6, batches=[(0, 3), (3, 5), (5, 6)], schedule=schedule, ranks=1)
    after_three_chunks = (3 * 5 - 1) * 2  # saves 0..14 written: 14 intervals of 2 steps
    assert record.member_steps == (3 + 2) * 60 + 1 * after_three_chunks


def test_a_checkpoint_recording_no_device_was_written_here_on_any_device():
    """Checkpoints recording neither the device type nor its name count as this device's, a GPU's too."""
    for here in ({"device_type": "cpu", "device_name": "cpu"},
                 {"device_type": "cuda", "device_name": "cuda: NVIDIA H100 80GB HBM3"}):
        assert not written_elsewhere({}, here)


def test_a_case_change_is_named_as_such_though_a_spin_up_checkpoints_partial_file_is_damaged(tmp_path, monkeypatch):
    """A spin-up checkpoint needs nothing of its partial file, so a damaged one is no reason to refuse; a
    changed case is, and the refusal says so rather than blaming the partial file."""
    case, out = small_case("ks_l22"), tmp_path / "truth.nc"
    stop_in_spin_up(monkeypatch, case, out, steps=3)
    partial_path(out).write_bytes(partial_path(out).read_bytes()[:1000])
    with pytest.raises(ResumeRefused, match=r"cannot resume: the case differs; rerun with the same case"):
        run_simulation(small_case("ks_l22", "time.n_steps=40"), out, resume=True, progress=False)


def test_a_finished_simulation_whose_initial_conditions_file_is_gone_is_not_taken_as_finished(tmp_path):
    """Its states can no longer be compared with the file's: not this case's finished truth."""
    case, source = file_case(tmp_path)
    out = run_simulation(case, tmp_path / "truth.nc", progress=False)
    assert finished_simulation(out, case)
    source.unlink()
    assert not finished_simulation(out, case)


def test_a_ctrl_c_between_the_final_rename_and_the_clean_up_leaves_no_checkpoint(tmp_path, monkeypatch):
    """The rename and the removal of the restart files go together (as in ``simulate``): a Ctrl-C between
    them left a checkpoint and chunk journal beside the finished file, which every later ``--resume``
    kept. One left so by an earlier version goes once ``--resume`` finds the file finished."""
    import os
    import signal

    from hybridnde import rollout_job
    from hybridnde.netcdf_stream import checkpoint_path
    from hybridnde.partial_repair import journal_path

    case, model, out = two_body_case("rollout.batch_size=2", "rollout.steps=40", "output.time_chunk=5"), small_mlp(), \
        tmp_path / "r.nc"
    clean_up = rollout_job.remove_restart_files

    def interrupted_clean_up(path):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C just after the rename
        clean_up(path)
    monkeypatch.setattr(rollout_job, "remove_restart_files", interrupted_clean_up)
    with pytest.raises(KeyboardInterrupt):
        run_rollout(case, out, closure=model, progress=False)
    leftovers = [checkpoint_path(out), journal_path(out), partial_path(out)]
    assert out.is_file() and not any(path.exists() for path in leftovers)

    def earlier_versions_clean_up(path):
        raise KeyboardInterrupt
    monkeypatch.setattr(rollout_job, "remove_restart_files", earlier_versions_clean_up)
    with pytest.raises(KeyboardInterrupt):
        run_rollout(case, out, closure=model, progress=False)
    assert checkpoint_path(out).exists() and journal_path(out).exists()
    monkeypatch.setattr(rollout_job, "remove_restart_files", clean_up)
    summary = run_rollout(case, out, closure=model, resume=True, progress=False)
    assert not summary.resumed and out.is_file() and not any(path.exists() for path in leftovers)


def test_a_failing_clean_up_under_mpi_is_logged_so_that_the_abort_still_comes(tmp_path, caplog):
    """A full disk fails the writer's close too: raised under MPI, it skipped the abort after it and the
    other ranks waited for ever in their next collective."""
    from hybridnde.rollout_output import leave_only_what_resumes

    class FullDisk:
        def close(self):
            raise OSError(28, "No space left on device")

    with caplog.at_level("ERROR", logger="hybridnde"):
        leave_only_what_resumes(tmp_path / "r.nc", FullDisk(), other_rank=False, under_mpi=True)
    assert "cleaning up" in caplog.text and "OSError: [Errno 28] No space left on device" in caplog.text
    with pytest.raises(OSError, match="No space left"):  # one process: raised, as before
        leave_only_what_resumes(tmp_path / "r.nc", FullDisk(), other_rank=False)
