"""`hybridnde run` end to end on tiny cases: the files and their relations (the rollouts start where the
held-out truth starts), reuse of finished stages, retraining on a changed key, resume after a crash,
--compare, and bad input refused with exit 2 before anything is written."""
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from hybridnde.cli import main
from hybridnde.closure_file import load_closure
from hybridnde.config import ConfigError, load_case
from hybridnde.grids import restrict_to_grid
from hybridnde.pipeline import STAGE_SECTIONS, Variant, build_variants, reference_case
from hybridnde.pipeline.runner import check_variants
from hybridnde.pipeline.variants import parse_compare, split_values

# The closure learns -u u_x of Kuramoto-Sivashinsky on a coarse grid; [quick] cuts the epochs to 3.
KS = """
[case]
name = "ks_tiny"
description = "tiny Kuramoto-Sivashinsky for the pipeline tests"
[system]
name = "kuramoto_sivashinsky"
n_points = 32
[time]
dt = 0.25
n_steps = 40
spinup_steps = 80
[initial_condition]
members = 4
seed = 0
[evaluate]
lyapunov_exponent = 0.045
[hybrid]
system = {nonlinear_coefficient = 0.0}
[model]
width = 4
depth = 1
kernel_size = 3
[training]
epochs = 200
batch_size = 32
learning_rate = 3e-3
checkpoint_every = 1
[rollout]
members = 3
steps = 24
[quick]
"training.epochs" = 3
"""

# A neural ODE (no known physics: no bare-host baseline) with conserved quantities.
RIGID = """
[case]
name = "rigid_tiny"
[system]
name = "rigid_body"
[time]
dt = 0.05
n_steps = 30
[initial_condition]
members = 3
[hybrid]
setup = "neural_ode"
[model]
width = 8
depth = 1
[training]
epochs = 2
batch_size = 32
[rollout]
members = 2
steps = 30
"""


def write_case(tmp_path, text=KS, name="ks_tiny"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def run(case, out, *extra):
    return main(["run", str(case), "--out", str(out), "--no-progress", *extra])


def stage_actions(out):
    """The actions of the last run, per stage: ``{"./train": "ran", ...}`` from run.json."""
    return json.loads((out / "run.json").read_text())["runs"][-1]["stages"]


def mtimes(out, *names):
    return {name: (out / name).stat().st_mtime_ns for name in names}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One quick run of the KS case, shared by the tests that only read it."""
    folder = tmp_path_factory.mktemp("pipeline")
    case = write_case(folder)
    out = folder / "run"
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        assert run(case, out, "--quick") == 0
    return case, out


def test_the_verbs_one_by_one_train_the_closure_run_trains(finished_run, tmp_path):
    """`train` on run's truth file gives run's closure bit for bit (both on one thread by default)."""
    case, out = finished_run
    command = ["train", str(case), "--quick", "--data", str(out / "truth.nc"), "--no-progress"]
    torch.set_num_threads(2)  # "torch's default" here: 2 threads train another closure (checked here, not
                              # asserted: whether rounding differs depends on the machine)
    assert main([*command, "--out", str(tmp_path / "closure.pt")]) == 0
    assert load_closure(tmp_path / "closure.pt")[1]["checksum"] == load_closure(out / "closure.pt")[1]["checksum"]


def test_run_writes_every_file_and_the_rollouts_start_on_the_held_out_truth(finished_run):
    case, out = finished_run
    for name in ("truth.nc", "reference.nc", "closure.pt", "closure.log.jsonl", "rollout.nc", "baseline.nc",
                 "metrics.json", "report.md", "run.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    from hybridnde.commands.run import RUN_FILES  # what `run` checks is no folder before it starts

    assert {path.name for path in out.iterdir() if path.is_file()} <= set(RUN_FILES)
    config = load_case(case, quick=True)
    with xr.open_dataset(out / "truth.nc") as truth, xr.open_dataset(out / "reference.nc") as reference, \
            xr.open_dataset(out / "rollout.nc") as rollout, xr.open_dataset(out / "baseline.nc") as baseline:
        # the reference: rollout.members members, drawn with rollout.seed, over the rollout's horizon
        assert reference.sizes["member"] == config.rollout.members
        assert reference["time"].values[-1] == pytest.approx(config.rollout.steps * config.host_time.dt)
        assert not np.allclose(reference["u"].values[0, 0], truth["u"].values[0, 0])  # held out, not training data
        start = reference["u"].values[:, 0]
        for file in (rollout, baseline):
            np.testing.assert_allclose(file["u"].values[:, 0], restrict_to_grid(start, file.sizes["x"]), atol=1e-12)
            np.testing.assert_allclose(file["time"].values[[0, -1]], reference["time"].values[[0, -1]])
        closure_checksum = load_closure(out / "closure.pt")[1]["checksum"]
        assert rollout.attrs["closure_checksum"] == closure_checksum
        assert baseline.attrs["closure_checksum"] == "none"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["initial_error"]["median"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["members"] == config.rollout.members
    assert 0 < metrics["valid_prediction_time"]["median"] <= metrics["horizon"]
    assert metrics["valid_prediction_time_lyapunov"]["median"] == pytest.approx(
        0.045 * metrics["valid_prediction_time"]["median"])
    assert metrics["baseline"]["members"] == config.rollout.members
    assert metrics["members_from_training_states"] == 0  # looked up in truth.nc, up to rounding
    log = [json.loads(line) for line in (out / "closure.log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in log] == [1, 2, 3]  # --quick: 3 epochs, not 200


def test_report_states_the_measured_numbers_and_links_existing_figures(finished_run):
    _, out = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    vpt = metrics["valid_prediction_time"]
    assert f"{vpt['median']:.3g} [{vpt['p16']:.3g}, {vpt['p84']:.3g}]" in report
    assert f"{metrics['baseline']['valid_prediction_time']['median']:.3g}" in report
    assert f"{metrics['spectrum']['distance']:.3g}" in report
    for stage in ("simulate", "reference", "train", "rollout", "baseline", "evaluate"):
        assert f"| {stage} |" in report
    assert "| precision | float64 (simulations, training and rollouts) |" in report
    linked = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert {"figures/error_growth.png", "figures/space_time.png", "figures/spectrum.png",
            "figures/training_loss.png", "figures/error_growth_vs_bare_host.png"} <= set(linked)
    for name in linked:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name


def test_the_report_gives_the_bare_hosts_notes_too(finished_run, tmp_path):
    """Its spectrum and KL read "n/a" with no reason in report.md (the reason, fewer than half of its
    states finite, was only in metrics.json's baseline notes)."""
    from hybridnde.pipeline.report import write_report
    from hybridnde.pipeline.runner import VariantResult

    case, out = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["baseline"]["notes"] = ["spectrum and histogram statistics undefined: only 24.9% of the predicted states"]
    written = write_report(VariantResult(Variant(load_case(case, quick=True)), tmp_path, metrics=metrics))
    assert "Note (bare host solver): spectrum and histogram statistics undefined: only 24.9%" in written.read_text()


def test_a_drift_over_the_surviving_members_says_how_many_they_are(finished_run, tmp_path):
    """A median over 1 survivor of 16 read like the ensemble's (the drift of a blown-up member is undefined)."""
    from hybridnde.pipeline.report import write_report
    from hybridnde.pipeline.runner import VariantResult

    case, out = finished_run
    metrics = json.loads((out / "metrics.json").read_text())
    members = metrics["members"]
    metrics["mean_drift"]["rollout"]["count"] = 1
    text = write_report(VariantResult(Variant(load_case(case, quick=True)), tmp_path, metrics=metrics)).read_text()
    drift_row = next(line for line in text.splitlines() if line.startswith("| spatial mean drift"))
    assert f"(over 1 of {members} members)" in drift_row.split("|")[2]
    assert "members)" not in next(line for line in text.splitlines() if line.startswith("| valid prediction"))


def test_rerun_reuses_every_finished_stage(finished_run):
    case, out = finished_run
    names = ("truth.nc", "reference.nc", "closure.pt", "rollout.nc", "baseline.nc", "metrics.json")
    before = mtimes(out, *names)
    assert run(case, out, "--quick") == 0
    assert set(stage_actions(out).values()) == {"reused"}
    assert mtimes(out, *names) == before


def test_run_only_training_keys_leave_a_finished_closure_current(finished_run, tmp_path):
    """training.checkpoint_every and fd_warn_threshold change how training runs, not the closure: a
    finished run is reused whole (it was trained again), also with a closure that recorded the full
    [training] checksum, as closures did before those keys were left out."""
    from hybridnde.closure_file import save_closure
    from hybridnde.training import TRAINING_SECTIONS

    case, out = finished_run  # in place (the rollouts record the reference's path), restored at the end:
    backup = tmp_path / "backup"  # the other tests only read it
    shutil.copytree(out, backup)
    try:
        assert run(case, out, "--quick", "--set", "training.checkpoint_every=3",
                   "--set", "training.fd_warn_threshold=0.5") == 0
        assert set(stage_actions(out).values()) == {"reused"}
        model, payload = load_closure(out / "closure.pt")
        legacy = load_case(case, quick=True, overrides=["training.checkpoint_every=3"]).checksum(TRAINING_SECTIONS)
        save_closure(out / "closure.pt", model, case_toml=payload["case_toml"],
                     metadata={**payload["metadata"], "config_checksum": legacy})
        assert run(case, out, "--quick", "--set", "training.checkpoint_every=3") == 0
        assert set(stage_actions(out).values()) == {"reused"}
        # ... and one recorded so with other run-only values than the case's now (a case switching its
        # checkpoints on): its stored case tells, differing in run-only keys alone
        before = load_case(case, quick=True, overrides=["training.checkpoint_every=7"])
        save_closure(out / "closure.pt", model, case_toml=before.to_toml(),
                     metadata={**payload["metadata"], "config_checksum": before.checksum(TRAINING_SECTIONS)})
        assert run(case, out, "--quick", "--set", "training.checkpoint_every=3") == 0
        assert set(stage_actions(out).values()) == {"reused"}
        other = load_case(case, quick=True, overrides=["training.learning_rate=0.5"])  # another closure: not
        save_closure(out / "closure.pt", model, case_toml=other.to_toml(),
                     metadata={**payload["metadata"], "config_checksum": other.checksum(TRAINING_SECTIONS)})
        assert run(case, out, "--quick", "--set", "training.checkpoint_every=3") == 0
        assert stage_actions(out)["./train"] == "ran"
    finally:
        shutil.rmtree(out)
        shutil.copytree(backup, out)


def test_the_batch_size_a_rollout_resolved_to_is_the_same_rollout(finished_run, tmp_path):
    """batch_size = 0 and the size it resolves to compute the same rollout: `run` made it again; a file
    that recorded the checksum of before (batch keys included) is current too."""
    import netCDF4

    from hybridnde.pipeline.stages import rollout_case
    from hybridnde.rollout_resume import rollout_checksum

    case, out = finished_run
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)
    try:
        with xr.open_dataset(out / "rollout.nc") as rollout:
            resolved = int(rollout.attrs["batch_size"])
        explicit = f"rollout.batch_size={resolved}"
        assert run(case, out, "--quick", "--set", explicit) == 0
        assert set(stage_actions(out).values()) == {"reused"}
        legacy = rollout_checksum(rollout_case(load_case(case, quick=True, overrides=[explicit]),
                                               out / "reference.nc"), legacy=True)
        assert legacy != rollout_checksum(load_case(case, quick=True))
        for name in ("rollout.nc", "baseline.nc"):  # as written before, with an explicit batch size
            with netCDF4.Dataset(out / name, "r+") as dataset:
                dataset.setncattr("config_checksum", legacy)
        assert run(case, out, "--quick", "--set", explicit) == 0
        assert set(stage_actions(out).values()) == {"reused"}
        assert run(case, out, "--quick", "--set", f"rollout.batch_size={resolved - 1}") == 0  # another size
        assert stage_actions(out)["./rollout"] == "ran"
    finally:
        shutil.rmtree(out)
        shutil.copytree(backup, out)


def test_changed_training_key_retrains_but_reuses_the_data(tmp_path):
    case = write_case(tmp_path)
    out = tmp_path / "run"
    assert run(case, out, "--quick") == 0
    kept = mtimes(out, "truth.nc", "reference.nc", "baseline.nc")
    old_closure = load_closure(out / "closure.pt")[1]["checksum"]
    assert run(case, out, "--quick", "--set", "training.seed=7") == 0
    actions = stage_actions(out)
    assert actions == {"./simulate": "reused", "./reference": "reused", "./train": "ran", "./rollout": "ran",
                       "./baseline": "reused", "./evaluate": "ran"}
    assert mtimes(out, "truth.nc", "reference.nc", "baseline.nc") == kept
    assert load_closure(out / "closure.pt")[1]["checksum"] != old_closure
    with xr.open_dataset(out / "rollout.nc") as rollout:
        assert rollout.attrs["closure_checksum"] == load_closure(out / "closure.pt")[1]["checksum"]


def test_a_data_file_changed_under_its_outputs_remakes_them(finished_run, tmp_path, capsys):
    """Outputs are reused by the configuration they record -- and by the bytes of the file they were made
    from: truth.nc rewritten in place, attributes kept (so its own configuration checksum still fits),
    retrains the closure; reference.nc rewritten remakes the rollouts; both rescore."""
    import netCDF4

    case, out = finished_run
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)
    try:
        with netCDF4.Dataset(out / "truth.nc", "a") as truth:
            truth["u"][:] = 1.5 * truth["u"][:] + 0.3
        capsys.readouterr()
        assert run(case, out, "--quick") == 0
        assert stage_actions(out) == {"./simulate": "reused", "./reference": "reused", "./train": "ran",
                                      "./rollout": "ran", "./baseline": "reused", "./evaluate": "ran"}
        assert "truth.nc changed since" in capsys.readouterr().err
        with netCDF4.Dataset(out / "reference.nc", "a") as reference:
            reference["u"][:] = reference["u"][:] + 0.01
        assert run(case, out, "--quick") == 0
        assert stage_actions(out) == {"./simulate": "reused", "./reference": "reused", "./train": "reused",
                                      "./rollout": "ran", "./baseline": "ran", "./evaluate": "ran"}
        assert run(case, out, "--quick") == 0
        assert set(stage_actions(out).values()) == {"reused"}
    finally:
        shutil.rmtree(out)
        shutil.copytree(backup, out)


def test_data_simulated_again_with_the_same_numbers_keep_their_outputs(finished_run, tmp_path, monkeypatch):
    """truth.nc and reference.nc simulated again (another `history`, so other bytes; the same numbers)
    keep the closure, the rollouts and the metrics: outputs record their inputs' data, not their bytes.
    Outputs of earlier versions, which recorded the bytes, are recognised too."""
    from hybridnde import io
    from hybridnde.closure_file import save_closure
    from hybridnde.data import data_checksum, file_checksum
    import netCDF4

    case, out = finished_run
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)
    try:
        before = {name: (file_checksum(out / name), data_checksum(out / name)) for name in ("truth.nc", "reference.nc")}
        for name in before:
            (out / name).unlink()
        monkeypatch.setattr(io, "utc_now", lambda: "2031-01-01T00:00:00+00:00")
        assert run(case, out, "--quick") == 0
        assert stage_actions(out) == {"./simulate": "ran", "./reference": "ran", "./train": "reused",
                                      "./rollout": "reused", "./baseline": "reused", "./evaluate": "reused"}
        for name, (file_sum, data_sum) in before.items():
            assert file_checksum(out / name) != file_sum and data_checksum(out / name) == data_sum, name
        # as earlier versions recorded them: the truth's bytes in the closure, the reference's in the rollouts
        model, payload = load_closure(out / "closure.pt")
        data = {key: value for key, value in payload["metadata"]["data"].items() if key != "data_sha256"}
        save_closure(out / "closure.pt", model, case_toml=payload["case_toml"],
                     metadata={**payload["metadata"], "data": {**data, "sha256": file_checksum(out / "truth.nc")}})
        for name in ("rollout.nc", "baseline.nc"):
            with netCDF4.Dataset(out / name, "a") as rollout:
                rollout.setncattr("initial_conditions_sha256", file_checksum(out / "reference.nc"))
        assert run(case, out, "--quick") == 0
        assert set(stage_actions(out).values()) == {"reused"}
        with netCDF4.Dataset(out / "truth.nc", "a") as truth:  # other numbers: retrained
            truth["u"][0, 0, 0] = truth["u"][0, 0, 0] + 1e-9
        assert run(case, out, "--quick") == 0
        assert stage_actions(out)["./train"] == "ran"
    finally:
        shutil.rmtree(out)
        shutil.copytree(backup, out)


def test_the_report_says_what_its_numbers_rest_on(finished_run):
    """One training seed, the software that computed the numbers, the spectrum's compared modes, the
    spatial mean's drift, the KL divergence's bins and epsilon, and the share of finite states a blown-up
    bare host's statistics are over (a referee asked for each)."""
    _, out = finished_run
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"numbers by {metrics['software']}" in report
    assert "of one trained closure (`training.seed = 0`)" in report and "--compare training.seed=0,1,2" in report
    modes = metrics["spectrum"]["compared_modes"]
    assert modes and modes == sorted(modes) and f", modes {modes[0]}-{modes[-1]} |" in report
    assert metrics["mean_drift"]["reference"]["median"] < 1e-12 and "spatial mean drift" in report
    assert metrics["kl_divergence"]["bins"] == 50 and metrics["kl_divergence"]["epsilon"] == 1e-10
    assert metrics["baseline"]["statistics_finite_share"] == 1.0  # tiny case: cells bare (_over_finite tested alone)
    assert "finite states)" not in report


def test_figures_of_an_earlier_set_up_do_not_stay_beside_the_new_report(finished_run, tmp_path):
    """A rerun as a neural ODE has no bare host: the hybrid-vs-bare-host plot of the earlier run (another
    closure's curve) is removed, not left in figures/ beside a report that no longer shows it."""
    case, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stale = copy / "figures" / "error_growth_vs_bare_host.png"
    assert stale.is_file()
    (copy / "figures" / "notes.png").write_bytes(b"the user's")  # not a name the pipeline draws: kept
    assert run(case, copy, "--quick", "--set", "hybrid.setup='neural_ode'", "--set", "training.epochs=1") == 0
    assert not stale.exists() and (copy / "figures" / "notes.png").is_file()
    assert "error_growth_vs_bare_host" not in (copy / "report.md").read_text()


def run_stopped_in_training(case, out, monkeypatch, *extra, epoch: int = 2):
    """``run`` interrupted (Ctrl-C) in 0-based training epoch ``epoch`` (the third: after the checkpoint
    of the second)."""
    import hybridnde.training.trainer as trainer

    original = trainer.learning_rate_at

    def stop_at_epoch(at, config):
        if at == epoch:
            raise KeyboardInterrupt
        return original(at, config)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "learning_rate_at", stop_at_epoch)
        assert run(case, out, "--quick", "--set", "rollout.steps=4", *extra) == 130


def test_a_run_stopped_in_training_resumes_to_the_same_closure(tmp_path, monkeypatch, capsys):
    case = write_case(tmp_path)
    assert run(case, tmp_path / "straight", "--quick", "--set", "rollout.steps=4") == 0
    out = tmp_path / "stopped"
    run_stopped_in_training(case, out, monkeypatch)
    assert not (out / "closure.pt").exists() and (out / "closure.checkpoint.pt").is_file()
    capsys.readouterr()
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    assert any("train -> " in line and line.endswith("(resuming)") for line in capsys.readouterr().err.splitlines())
    assert stage_actions(out)["./simulate"] == "reused"
    straight, resumed = (load_closure(folder / "closure.pt")[1]["checksum"] for folder in (tmp_path / "straight", out))
    assert resumed == straight
    epochs = [json.loads(line)["epoch"] for line in (out / "closure.log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_rerun_stopped_while_remaking_a_stage_leaves_no_summary_of_the_earlier_results(tmp_path, monkeypatch):
    """A rerun with another training.seed stopped in training left the earlier report.md (and a sweep's
    compare.md) beside the new checkpoint, to be read as this run's; they go when a stage is remade."""
    case = write_case(tmp_path)
    out = tmp_path / "run"
    assert run(case, out, "--quick", "--set", "rollout.steps=4", "--set", "training.seed=5") == 0
    assert (out / "report.md").is_file()
    run_stopped_in_training(case, out, monkeypatch)
    assert not (out / "report.md").exists() and (out / "truth.nc").is_file()
    sweep = tmp_path / "sweep"
    assert run(case, sweep, "--quick", "--set", "rollout.steps=4", "--compare", "training.seed=5,6") == 0
    assert (sweep / "compare.md").is_file() and (sweep / "seed=6" / "report.md").is_file()
    run_stopped_in_training(case, sweep, monkeypatch, "--compare", "training.seed=5,7")
    assert (sweep / "seed=5" / "report.md").is_file()  # (reused: still this sweep's)
    assert not (sweep / "compare.md").exists() and not (sweep / "compare.json").exists()


def test_a_stage_without_checkpoints_is_not_said_to_resume(tmp_path, monkeypatch, capsys):
    """A simulation stopped by Ctrl-C before its first checkpoint starts again: the rerun said
    "(resuming)" and did not."""
    import hybridnde.simulation_job as simulation_job

    real = simulation_job.run_simulation

    def interrupted(case, out, **kwargs):
        raise KeyboardInterrupt

    case = write_case(tmp_path)
    out = tmp_path / "stopped"
    monkeypatch.setattr(simulation_job, "run_simulation", interrupted)
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 130
    monkeypatch.setattr(simulation_job, "run_simulation", real)
    capsys.readouterr()
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "simulate -> " in line]
    assert lines and not any("(resuming)" in line for line in lines)


def test_a_simulation_stopped_after_a_checkpoint_is_resumed_by_run(tmp_path, monkeypatch, capsys):
    """The truth streams with checkpoints (simulation_job): a stopped run continues it, and the truth is
    the one `hybridnde simulate` makes uninterrupted."""
    import hybridnde.simulation_job as simulation_job
    from hybridnde.netcdf_stream import has_restart_files
    from hybridnde.rollout import BatchRunner

    case, out = write_case(tmp_path), tmp_path / "stopped"
    sets = ["--quick", "--set", "rollout.steps=4", "--set", "output.time_chunk=2"]
    monkeypatch.setattr(simulation_job, "CHECKPOINT_SECONDS", 0.0)
    real, calls = BatchRunner.advance, []

    def advance(self, state):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, state)
    with monkeypatch.context() as patch:
        patch.setattr(BatchRunner, "advance", advance)
        assert run(case, out, *sets) == 130
    assert has_restart_files(out / "truth.nc") and not (out / "truth.nc").exists()
    capsys.readouterr()
    assert run(case, out, *sets) == 0
    assert any("simulate -> " in line and "(resuming)" in line for line in capsys.readouterr().err.splitlines())
    assert main(["simulate", str(case), "--quick", "--out", str(tmp_path / "whole.nc")]) == 0
    with xr.open_dataset(out / "truth.nc") as resumed, xr.open_dataset(tmp_path / "whole.nc") as whole:
        np.testing.assert_array_equal(resumed.u.values, whole.u.values)
        assert resumed.attrs["resumed_runs"] == 1


def test_a_reference_simulation_stopped_after_a_checkpoint_is_resumed_by_run(tmp_path, monkeypatch, capsys):
    import hybridnde.simulation_job as simulation_job
    from hybridnde.netcdf_stream import TrajectoryStreamWriter, has_restart_files

    case, out = write_case(tmp_path), tmp_path / "stopped"
    sets = ["--quick", "--set", "rollout.steps=4", "--set", "output.time_chunk=2"]
    monkeypatch.setattr(simulation_job, "CHECKPOINT_SECONDS", 0.0)
    real, writes = TrajectoryStreamWriter.write, []

    def write(self, *args):
        writes.append(self.path.name)
        if writes.count("reference.nc") == 2:  # after the first chunk's checkpoint
            raise KeyboardInterrupt
        return real(self, *args)
    with monkeypatch.context() as patch:
        patch.setattr(TrajectoryStreamWriter, "write", write)
        assert run(case, out, *sets) == 130
    assert (out / "truth.nc").is_file() and has_restart_files(out / "reference.nc")
    capsys.readouterr()
    assert run(case, out, *sets) == 0
    assert any("reference -> " in line and "(resuming)" in line for line in capsys.readouterr().err.splitlines())
    with xr.open_dataset(out / "reference.nc") as reference:
        assert reference.attrs["resumed_runs"] == 1


def test_run_passes_its_thread_setting_to_its_simulations(tmp_path, monkeypatch):
    """With --threads 0 a resumed simulation may run on another count (a warning); it was refused as if
    the count had been chosen, and the stage made afresh."""
    import hybridnde.simulation_job as simulation_job

    seen = []

    def spy(case, out, **kwargs):
        seen.append(kwargs["threads_setting"])
        raise RuntimeError("stop after the first stage")
    monkeypatch.setattr(simulation_job, "simulate_to_file", spy)
    for threads in ("0", "2"):
        assert run(write_case(tmp_path), tmp_path / f"run{threads}", "--quick", "--threads", threads) == 1
    assert seen == [0, 2]
    # the reference too (the truth made for real, then the spy again)
    monkeypatch.undo()
    real, seen = simulation_job.simulate_to_file, []

    def reference_spy(case, out, **kwargs):
        if Path(out).name == "truth.nc":
            return real(case, out, **kwargs)
        return spy(case, out, **kwargs)
    monkeypatch.setattr(simulation_job, "simulate_to_file", reference_spy)
    assert run(write_case(tmp_path), tmp_path / "reference_run", "--quick", "--threads", "0") == 1
    assert seen == [0]


BASELINE_CHECKPOINTS = ["--quick", "--set", "rollout.steps=24", "--set", "rollout.checkpoint_every=4", "--set",
                        "output.time_chunk=2"]


def run_stopped_in_a_rollout(case, out, monkeypatch, stage: str = "baseline.nc"):
    """``run`` stopped by a Ctrl-C in the middle of the rollout to ``stage`` (the bare host's
    ``baseline.nc`` or the closure's ``rollout.nc``), which keeps a checkpoint."""
    import hybridnde.rollout_job as rollout_job
    from hybridnde.netcdf_stream import checkpoint_path as rollout_checkpoint

    real_run, real_encode = rollout_job.run_rollout, rollout_job.encode_block
    encoded = []

    def stopping_encode(*arguments, **keywords):
        encoded.append(1)
        if len(encoded) == 6:
            raise KeyboardInterrupt
        return real_encode(*arguments, **keywords)

    def run_rollout(case, out, **keywords):
        if Path(out).name == stage:
            monkeypatch.setattr(rollout_job, "encode_block", stopping_encode)
        try:
            return real_run(case, out, **keywords)
        finally:
            monkeypatch.setattr(rollout_job, "encode_block", real_encode)

    with monkeypatch.context() as patch:
        patch.setattr(rollout_job, "run_rollout", run_rollout)
        assert run(case, out, *BASELINE_CHECKPOINTS) == 130
    assert rollout_checkpoint(out / stage).is_file() and not (out / stage).exists()
    return rollout_checkpoint(out / stage)


@pytest.mark.parametrize("stage", ["baseline", "rollout"])
def test_a_run_stopped_in_a_rollout_resumes_it_from_its_checkpoint(tmp_path, monkeypatch, capsys, stage):
    """The bare-host baseline checkpoints as the closure's rollout does; a rerun goes on from there, and
    neither stop names `hybridnde rollout --resume` (an option run lacks)."""
    case, out = write_case(tmp_path), tmp_path / "stopped"
    run_stopped_in_a_rollout(case, out, monkeypatch, stage=f"{stage}.nc")
    stopped = capsys.readouterr().err
    assert "the same command continues: finished stages are reused" in stopped
    assert "hybridnde rollout ... --resume" not in stopped  # (run has no --resume)
    assert run(case, out, *BASELINE_CHECKPOINTS) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if f"{stage} -> " in line]
    assert lines and lines[0].endswith("(resuming)"), lines


@pytest.mark.parametrize("damage", ["checkpoint bytes", "checkpoint format", "partial file", "another closure",
                                    "another run's partial file", "partial chunk index"])
def test_a_damaged_rollout_checkpoint_is_set_aside_without_the_rollout_commands_remedies(tmp_path, monkeypatch,
                                                                                           capsys, damage):
    """The baseline's checkpoint damaged after a stop: run makes the stage afresh, and its log said "delete
    it or rerun without --resume" and "`hybridnde rollout ... --resume` continues one", options of another
    command."""
    from hybridnde.netcdf_stream import partial_path

    case, out = write_case(tmp_path), tmp_path / "stopped"
    checkpoint = run_stopped_in_a_rollout(case, out, monkeypatch)
    if damage == "checkpoint bytes":
        checkpoint.write_bytes(b"damaged")
    elif damage == "checkpoint format":  # new
        torch.save({"format": "something else"}, checkpoint)
    elif damage == "partial file":  # new: the partial file cut short
        partial = partial_path(out / "baseline.nc")
        partial.write_bytes(partial.read_bytes()[: partial.stat().st_size // 3])
    elif damage == "another closure":  # new
        state = torch.load(checkpoint, weights_only=True)
        torch.save({**state, "closure_checksum": "of another closure"}, checkpoint)
    elif damage == "another run's partial file":  # new
        import h5py

        with h5py.File(partial_path(out / "baseline.nc"), "r+") as file:
            file.attrs["run_id"] = "another run"
    else:  # new: its chunk index points past the file's end (as Ctrl-C under mpiexec can leave it), and its
        # checkpoint, of an earlier version, has no record to rebuild it from (tests/test_partial_repair.py)
        import hybridnde.partial_repair as partial_repair

        real = partial_repair.check_chunk_index
        monkeypatch.setattr(partial_repair, "check_chunk_index", lambda dataset_id, size: real(dataset_id, 100))
        state = torch.load(checkpoint, weights_only=True)
        del state[partial_repair.RECORD_KEY]
        torch.save(state, checkpoint)
    capsys.readouterr()
    assert run(case, out, *BASELINE_CHECKPOINTS) == 0
    err = capsys.readouterr().err
    assert "baseline: not resuming (" in err and "is discarded" in err
    assert damage != "checkpoint bytes" or "not a readable rollout checkpoint" in err
    assert "--resume" not in err and "delete it" not in err, err
    assert (out / "baseline.nc").is_file()


def test_a_checkpoint_hybridnde_train_left_in_the_folder_is_resumed_by_run(tmp_path, monkeypatch, capsys):
    """`hybridnde train` stopped in the run's folder left a checkpoint of the same set-up; `run` knew
    nothing of it from its record, trained from the start and said to use --resume, which it lacks."""
    import hybridnde.training.trainer as trainer

    case, out = write_case(tmp_path), tmp_path / "run"
    assert main(["simulate", str(case), "--quick", "--out", str(out / "truth.nc")]) == 0
    original = trainer.learning_rate_at

    def stop_at_third_epoch(epoch, config):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(epoch, config)

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "learning_rate_at", stop_at_third_epoch)
        assert main(["train", str(case), "--quick", "--data", str(out / "truth.nc"), "--out", str(out / "closure.pt"),
                     "--no-progress"]) == 130
    assert (out / "closure.checkpoint.pt").is_file()
    capsys.readouterr()
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    err = capsys.readouterr().err
    assert any("train -> " in line and line.endswith("(resuming)") for line in err.splitlines()), err
    assert "starts afresh" not in err and stage_actions(out)["./simulate"] == "reused"
    epochs = [json.loads(line)["epoch"] for line in (out / "closure.log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("content", ["bytes", "another format", "another set-up"])
def test_an_unreadable_checkpoint_in_the_folder_is_set_aside_by_run(tmp_path, capsys, content):
    """Tried as a resume (a checkpoint the record knows nothing of), a damaged one stopped the run with
    "delete it or rerun without --resume", an option run lacks; the stage is made afresh instead."""
    case, out = write_case(tmp_path), tmp_path / "run"
    out.mkdir()
    if content == "bytes":
        (out / "closure.checkpoint.pt").write_bytes(b"not a checkpoint")
    elif content == "another format":  # new
        torch.save({"format": "something else"}, out / "closure.checkpoint.pt")
    else:  # new: as an older version wrote it (no identity: the change cannot be named)
        from hybridnde.training.checkpoint import FORMAT

        torch.save({"format": FORMAT, "fingerprint": "of another set-up"}, out / "closure.checkpoint.pt")
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    err = capsys.readouterr().err
    assert "train: not resuming (" in err and not (out / "closure.checkpoint.pt").exists()
    assert "--resume" not in err and "delete it" not in err, err  # remedies of the single commands


@pytest.mark.parametrize("leftover", [".rollout.nc.checkpoint", ".rollout.nc.partial", ".baseline.nc.checkpoint"])
def test_a_rollout_checkpoint_without_its_partial_file_is_not_said_to_resume(tmp_path, capsys, leftover):
    """A `.rollout.nc.checkpoint` alone in the folder was announced "rollout -> ... (resuming)", and the
    rollout then started from the beginning (nothing to continue without the partial file)."""
    case, out = write_case(tmp_path), tmp_path / "run"
    out.mkdir()
    (out / leftover).write_bytes(b"left alone")
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    stage = leftover.split(".")[1]
    lines = [line for line in capsys.readouterr().err.splitlines() if f"{stage} -> " in line]
    assert lines and not lines[0].endswith("(resuming)"), lines


def test_a_second_run_into_a_folder_being_run_is_refused_before_any_stage(tmp_path, capsys):
    """It re-simulated truth.nc under the first run and was refused only at the train stage; the first
    run then finished with a closure trained on a truth no longer in the folder."""
    from hybridnde.output_lock import output_lock

    case, out = write_case(tmp_path), tmp_path / "run"
    with output_lock(out / "run.json"):  # as the first run holds it
        assert run(case, out, "--quick", "--set", "rollout.steps=4") == 2
    assert "run.json: process " in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == []
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0 and not (out / ".run.json.lock").exists()


def test_a_training_stopped_before_its_first_checkpoint_is_not_said_to_resume(tmp_path, monkeypatch, capsys):
    case, out = write_case(tmp_path), tmp_path / "stopped"
    run_stopped_in_training(case, out, monkeypatch, epoch=0)
    assert not (out / "closure.checkpoint.pt").exists()
    capsys.readouterr()
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "train -> " in line]
    assert lines and not any("(resuming)" in line for line in lines), lines


def test_a_stage_whose_checkpoint_is_refused_is_made_afresh(tmp_path, monkeypatch, capsys):
    """`run` has no --resume to drop: a checkpoint that no longer fits (here: the training data's checksum
    tampered with) used to stop every rerun with exit 2; the stage now starts over, with a warning."""
    import torch

    case = write_case(tmp_path)
    out = tmp_path / "stopped"
    run_stopped_in_training(case, out, monkeypatch)
    checkpoint = out / "closure.checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["identity"]["data_checksum"] = state["fingerprint"] = "0" * 64  # as if written for other data
    torch.save(state, checkpoint)
    capsys.readouterr()
    assert run(case, out, "--quick", "--set", "rollout.steps=4") == 0
    err = capsys.readouterr().err
    assert "train: not resuming (" in err and "changed since the checkpoint: the training data" in err
    assert "--resume" not in err and (out / "closure.pt").is_file(), err  # the train command's remedies
    epochs = [json.loads(line)["epoch"] for line in (out / "closure.log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_compare_shares_the_data_and_writes_one_table(tmp_path, capsys):
    case = write_case(tmp_path)
    out = tmp_path / "sweep"
    assert run(case, out, "--quick", "--compare", "training.regularizer=none,fd") == 0
    log = capsys.readouterr().err  # a shared stage is not labelled as the first variant's
    assert f"(1/2) simulate -> {out / 'truth.nc'}" in log and f"(1/2) baseline -> {out / 'baseline.nc'}" in log
    assert "(1/2) [regularizer=none] train -> " in log and "(2/2) [regularizer=fd] train -> " in log
    labels = ["regularizer=none", "regularizer=fd"]
    for label in labels:
        assert not (out / label / "truth.nc").exists() and (out / label / "closure.pt").is_file()
    assert (out / "truth.nc").is_file() and (out / "reference.nc").is_file() and (out / "baseline.nc").is_file()
    table = json.loads((out / "compare.json").read_text())
    assert [row["label"] for row in table["variants"]] == labels
    assert [row["settings"] for row in table["variants"]] == [{"training.regularizer": "none"},
                                                              {"training.regularizer": "fd"}]
    assert [row["label"] for row in table["baselines"]] == ["bare host"]
    for row in table["variants"]:
        metrics = json.loads((out / row["label"] / "metrics.json").read_text())
        assert row["valid_prediction_time"]["median"] == metrics["valid_prediction_time"]["median"]
        assert row["stable_fraction"] == metrics["stable_fraction"]
    checksums = {load_closure(out / label / "closure.pt")[1]["checksum"] for label in labels}
    assert len(checksums) == 2  # same seed, different loss: different weights
    markdown = (out / "compare.md").read_text()
    assert all(f"| {label} |" in markdown for label in labels) and "| bare host |" in markdown
    assert "over 6 time units, error threshold 0.5." in markdown  # (the case's values as set: not 6.00, 0.500)
    assert (out / "figures" / "compare_error_growth.png").stat().st_size > 5000
    # one value is still a comparison (against the bare host): its table is written, the variant reused
    assert run(case, out, "--quick", "--compare", "training.regularizer=fd") == 0
    assert [row["label"] for row in json.loads((out / "compare.json").read_text())["variants"]] == ["regularizer=fd"]
    assert "| regularizer=fd |" in (out / "compare.md").read_text()


def test_reports_give_the_cases_own_values_as_set_and_measured_ones_to_3_digits(finished_run):
    """A measured 2.0 printed as "2" read as a round count; a dt of 0.01 printed as "0.0100" as a
    measurement (both in reports before)."""
    from hybridnde.pipeline.formatting import given, number
    from hybridnde.pipeline.report import verdict

    assert [number(v) for v in (2.0, 123.0, 0.1, 12345.0, 1e-5, None, float("nan"), 7)] == \
        ["2.00", "123", "0.100", "1.23e+04", "1.00e-05", "n/a", "n/a", "7"]
    assert [given(v) for v in (0.01, 8.0, 3e-3, None)] == ["0.01", "8", "0.003", "n/a"]
    metrics = {"valid_prediction_time": {"median": 2.0}, "members": 4, "stable_members": 4, "horizon": 8.0,
               "baseline": {"valid_prediction_time": {"median": 1.0}, "members": 4, "stable_members": 4}}
    text = verdict(metrics)
    assert "for 2.00 time units" in text and "2.00x the bare host solver's 1.00" in text and "horizon of 8" in text
    _, out = finished_run
    report = (out / "report.md").read_text()
    assert report.count("dt = 0.25 |") == 2 and "lr 0.003 " in report and "horizon of 6" in report
    assert "over 6 time units" in report and "exceeds 0.5." in report and "6.00" not in report


def test_report_cells_for_blown_up_models_gapped_spectra_and_drifting_truths():
    """A share of finite states just under 1 is not printed as 100%; a spectrum compared over modes with
    gaps says how many; an invariant the truth's own integrator drifts is not blamed on the model; the
    spatial mean's drift of a member that blew up counts until it did (it was left out: 'median 0')."""
    from hybridnde.metrics import mean_drift
    from hybridnde.pipeline.report import _over_finite, _spectrum_cell, verdict

    assert _over_finite({"statistics_finite_share": 0.9996}, "2.28") == "2.28 (over its 99.9% finite states)"
    assert _over_finite({"statistics_finite_share": 1.0}, "2.28") == "2.28"
    assert _spectrum_cell({"distance": 0.1, "compared_modes": [1, 2, 3]}) == "0.100, modes 1-3"
    assert _spectrum_cell({"distance": 0.1, "compared_modes": [1, 2, 5]}) == "0.100, 3 modes in 1-5"
    assert _spectrum_cell({"distance": None, "compared_modes": []}) == "n/a"
    assert _spectrum_cell({"distance": 0.1, "compared_modes": [3]}) == "0.100, mode 3"
    metrics = {"valid_prediction_time": {"median": 8.15}, "members": 4, "stable_members": 4, "horizon": 100.0}
    own = {"energy": {"rollout": {"median": 0.3}, "reference": {"median": 0.05}}}
    assert "drift" not in verdict({**metrics, "invariant_drift": own})
    assert "its energy drifts by 0.300 (median" in verdict({**metrics, "invariant_drift": {"energy": {**own["energy"],
                                                                                      "reference": {"median": 1e-8}}}})
    # above 1 the states are not the system's, whatever its integrator loses
    unphysical = {"energy": {"rollout": {"median": 1.5}, "reference": {"median": 0.2}}}
    assert "energy drifts by 1.50 (median over members of the largest relative drift): its states are not the " \
        "system's" in verdict({**metrics, "invariant_drift": unphysical})
    u = np.zeros((3, 6, 4))
    u[0] = (np.arange(6) * 0.5)[:, None]  # drifts by 2.5 ...
    u[0, 5] = np.inf                      # ... and blows up at the last save: 2.0 until then
    u[1, :, 0] = 1.0                      # a constant mean
    u[2, 0, 0] = np.nan                   # no finite start
    np.testing.assert_array_equal(mean_drift(u, 1.0), [2.0, 0.0, np.nan])


def test_the_report_says_when_training_stopped_while_still_improving():
    """The full default case's best epoch was its last, its validation loss 5% lower than 10 epochs
    before: the report gave the best epoch alone, which does not tell a converged closure from one
    limited by training.epochs."""
    from hybridnde.pipeline.report import _still_improving

    def log(losses):
        return [{"epoch": epoch, "val_loss": loss} for epoch, loss in enumerate(losses, start=1)]

    falling = [1.0 / epoch for epoch in range(1, 21)]  # over the last 2 of 20 epochs: 1/18 -> 1/20, 10% lower
    assert _still_improving(log(falling)) == ("; still improving: the validation loss fell 10% over the last 2 "
                                              "epoch(s), so more epochs (`training.epochs`) may train a better closure")
    flat = [*falling[:18], falling[17] * 0.998, falling[17] * 0.996]  # 0.4%: as good as converged
    assert _still_improving(log(flat)) == ""
    assert _still_improving(log([*falling[:-1], 1.0])) == ""  # the last epoch is not the best
    assert _still_improving(log([1.0])) == "" and _still_improving(log([2.0, None])) == ""


def test_the_comparison_figure_takes_many_variants_and_several_bare_hosts(tmp_path, monkeypatch):
    """The 11th variant raised StopIteration (ten colours, no wrap) and lost the sweep's table."""
    from hybridnde.pipeline.plots import error_growth_comparison_figure

    def curve(vpt: float) -> dict:
        times = np.linspace(0.0, 10.0, 11)
        return {"error_growth": {"time": times, "p16": 0.01 * np.exp(times), "median": 0.02 * np.exp(times),
                                 "p84": 0.03 * np.exp(times)}, "threshold": 0.5, "spread_percentiles": [16.0, 84.0],
                "start_time": 0.0, "valid_prediction_time": {"median": vpt}}

    from matplotlib.axes import Axes

    drawn = []
    plot = Axes.plot

    def recording(self, *args, **kwargs):
        if args and len(args[0]):  # the curves, not the legend's empty proxies
            drawn.append((kwargs.get("label", ""), kwargs.get("color")))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording)
    curves = [(f"seed={k}", curve(3.0)) for k in range(11)]
    several = curves + [("bare host (seed=0)", curve(1.0)), ("bare host (seed=1)", curve(1.5))]
    assert error_growth_comparison_figure(several, tmp_path / "compare.png").stat().st_size > 5000
    colours = dict(drawn)
    assert "C7" not in colours.values() and "0.45" not in colours.values()  # no grey variant, two hosts apart
    assert colours["seed=9 (VPT 3)"] == "C0"  # nine colours without grey: the tenth variant wraps
    assert colours["bare host (seed=0) (VPT 1)"] != colours["bare host (seed=1) (VPT 1.5)"]
    drawn.clear()
    error_growth_comparison_figure(curves[:2] + [("bare host", curve(1.0))], tmp_path / "one.png")
    assert dict(drawn) == {"seed=0 (VPT 3)": "C0", "seed=1 (VPT 3)": "C1", "bare host (VPT 1)": "0.45"}


def test_a_groups_mean_says_what_it_is_over():
    """Grouped means dropped undefined and infinite values (a failing variant's spectrum distance) without
    a word, and a single value printed '+- 0'."""
    from hybridnde.pipeline.comparison import _group_cell, _mean_std

    assert _group_cell(_mean_std([1.0, 3.0]), fraction=False, variants=2) == "2.00 +- 1.41"
    assert _group_cell(_mean_std([1.0, float("inf"), None]), fraction=False, variants=3) == \
        "1.00 (over 1 of 3: the others n/a or inf)"
    assert _group_cell(_mean_std([0.5, 1.0, None]), fraction=True, variants=3) == \
        "75% +- 35% (over 2 of 3: the others n/a or inf)"
    assert _group_cell(_mean_std([None]), fraction=False, variants=1) == "n/a"
    # shares round down, as `hybridnde evaluate` says them: 998 stable of 1000 read "100% +- 0%"
    assert _group_cell(_mean_std([0.998, 0.998]), fraction=True, variants=2) == "99.8% +- 0%"


def test_the_reports_shares_of_members_round_down_as_evaluates_do():
    from hybridnde.pipeline.formatting import percent

    assert (percent(0.999), percent(0.004), percent(0.0004), percent(1.0, 10, 10)) == ("99.9%", "0.4%", "<0.1%",
                                                                                        "100% (10/10)")


def test_a_compared_variant_that_fails_leaves_the_others_and_a_new_table(tmp_path, capsys):
    """A learning rate whose training goes non-finite aborted the sweep with a traceback: the variants
    after it never ran, and compare.md stayed the previous sweep's table."""
    case = write_case(tmp_path)
    out = tmp_path / "sweep"
    assert run(case, out, "--quick", "--compare", "training.seed=0,1") == 0
    capsys.readouterr()
    assert run(case, out, "--quick", "--set", "training.epochs=2",
               "--compare", "training.learning_rate=1e-3,1e300,3e-3") == 1
    assert "1 of 3 variants failed: learning_rate=1e300 (FloatingPointError" in capsys.readouterr().err
    table = json.loads((out / "compare.json").read_text())
    assert [row["label"] for row in table["variants"]] == ["learning_rate=1e-3", "learning_rate=3e-3"]
    assert [row["label"] for row in table["failed"]] == ["learning_rate=1e300"]
    markdown = (out / "compare.md").read_text()
    assert "learning_rate compared" in markdown and "**Failed**" in markdown and "seed" not in markdown.split("\n")[0]
    assert (out / "learning_rate=3e-3" / "metrics.json").is_file()


def test_compared_evaluate_keys_score_the_shared_bare_host_each_their_way(tmp_path):
    """One baseline.nc serves both variants, but a compared [evaluate] key scores it differently: a row
    each (the table showed one, the first variant's, beside both)."""
    case = write_case(tmp_path)
    out = tmp_path / "sweep"
    assert run(case, out, "--quick", "--compare", "evaluate.vpt_threshold=0.05,2.0") == 0
    table = json.loads((out / "compare.json").read_text())
    assert len({row["file"] for row in table["baselines"]}) == 1
    assert [row["label"] for row in table["baselines"]] == ["bare host (vpt_threshold=0.05)",
                                                            "bare host (vpt_threshold=2.0)"]
    for row, variant in zip(table["baselines"], table["variants"]):
        metrics = json.loads(Path(variant["metrics"]).read_text())["baseline"]
        assert row["valid_prediction_time"]["median"] == metrics["valid_prediction_time"]["median"]
    assert table["baselines"][0]["valid_prediction_time"]["median"] < table["baselines"][1]["valid_prediction_time"]["median"]
    assert "held-out initial states" in (out / "compare.md").read_text()


def test_neural_ode_case_has_no_baseline_and_reports_invariant_drift(tmp_path):
    case = write_case(tmp_path, RIGID, "rigid_tiny")
    out = tmp_path / "rigid"
    assert run(case, out) == 0
    assert not (out / "baseline.nc").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert "baseline" not in metrics and set(metrics["invariant_drift"]) >= {"energy"}
    assert (out / "figures" / "phase_portrait.png").is_file() and (out / "figures" / "invariant_drift.png").is_file()
    assert "energy drift" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra", [
    ["--set", "training.epochs=0"],                                  # a bad value
    ["--compare", "training.regularizer=none,bogus"],               # a bad value in one variant only
    ["--set", "time.n_steps=1", "--set", "training.rollout_steps=2"],  # too short for one training window
    ["--set", "rollout.initial_conditions=missing.nc"],             # a file that is not there
    ["--compare", "training.regularizer"],                          # no values
    ["--set", "training.seed=1", "--compare", "training.seed=1,2"],  # one key twice
    ["--threads", "100000"],                                        # crashed torch (segfault), run.json left
    ["--set", "rollout.threads=100000"],                            # the same, in the rollout stage
    # files read as the stages read them (checked for existence only, stages ran first, before)
    ["--set", "rollout.initial_conditions='{two_body}'"],           # states of another system
    ["--set", "rollout.initial_conditions='{one_member}'"],         # too few members
    ["--set", "rollout.initial_conditions='{junk}'"],               # not NetCDF
    ["--set", "rollout.initial_conditions='{no_time}'"],            # no saved state
    ["--set", "rollout.initial_conditions='{text}'"],               # not numbers
    ["--set", "initial_condition.distribution='file'", "--set", "initial_condition.file='{junk}'"],
    # the reference the rollouts are scored against, of another system: refused by evaluate, at the end
    ["--set", "rollout.initial_conditions='{other_physics}'"],
])
def test_bad_input_exits_2_before_anything_is_written(tmp_path, capsys, extra):
    from hybridnde.io import trajectory_dataset, write_netcdf

    case = write_case(tmp_path)
    files = {name: tmp_path / f"{name}.nc" for name in ("two_body", "one_member", "junk", "no_time", "text",
                                                         "other_physics")}
    write_netcdf(trajectory_dataset(np.ones((3, 1, 4)), [0.0], state_dim="component",
                                    state_coords=["x", "y", "vx", "vy"]), files["two_body"])
    x = np.arange(32) * 22.0 / 32
    write_netcdf(trajectory_dataset(np.cos(x)[None, None], [0.0], state_dim="x", state_coords=x), files["one_member"])
    files["junk"].write_text("not a NetCDF file")
    dims = ("member", "time", "x")
    xr.Dataset({"u": (dims, np.zeros((3, 0, 32)))}, coords={"time": np.zeros(0)}).to_netcdf(files["no_time"])
    xr.Dataset({"u": (dims, np.full((3, 1, 32), "a"))}, coords={"time": [0.0]}).to_netcdf(files["text"])
    other = load_case(case, overrides=["system.nonlinear_coefficient=0.5"]).to_toml()
    write_netcdf(trajectory_dataset(np.cos(x)[None, None].repeat(3, 0), [0.0], state_dim="x", state_coords=x,
                                    case_toml=other), files["other_physics"])
    out = tmp_path / "never"
    assert run(case, out, "--quick", *(word.format(**files) for word in extra)) == 2
    assert not out.exists()
    assert "error" in capsys.readouterr().err


SHIPPED = sorted((Path(__file__).parents[1] / "cases").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_every_shipped_case_passes_runs_checks(path, quick, tmp_path):
    """`hybridnde run` accepts every shipped case (ks_fd could only simulate: its default host, the
    truth's scheme stepped once a sample, was 170x beyond its stability limit)."""
    check_variants(build_variants(path, quick=quick), tmp_path / "run")


def test_a_failure_at_run_time_exits_1_and_leaves_no_output(tmp_path, monkeypatch):
    import hybridnde.simulation_job as simulation_job

    def broken(case, out, **kwargs):
        raise RuntimeError("solver failure")

    monkeypatch.setattr(simulation_job, "run_simulation", broken)
    out = tmp_path / "failed"
    assert run(write_case(tmp_path), out, "--quick") == 1
    assert not (out / "truth.nc").exists()
    assert json.loads((out / "run.json").read_text())["stages"]["truth.nc"]["started"]  # known as unfinished


def test_a_read_only_folder_of_an_earlier_run_is_refused_before_any_stage(tmp_path, monkeypatch, capsys):
    """It failed with a traceback once the stages had run, writing the figures (root ignores modes, so
    the denial is simulated)."""
    import os

    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path).name != "figures" and real_access(path, mode))
    assert run(write_case(tmp_path), out, "--quick") == 2
    assert f"cannot write in {out / 'figures'}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["figures"]


@pytest.mark.parametrize("name, compare", [("figures", []), ("epochs=2", ["--compare", "training.epochs=2,3"])])
def test_a_file_where_the_run_makes_a_folder_is_refused_before_any_stage(tmp_path, capsys, name, compare):
    """figures/ as a file failed with a traceback once every stage had run; a variant's folder as a file
    was refused once the shared simulations had run."""
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("a file")
    assert run(write_case(tmp_path), out, "--quick", *compare) == 2
    assert f"{out / name} is a file where this run makes a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize("name", ["report.md", "regularizer=fd/closure.log.jsonl"])
def test_a_folder_where_the_run_writes_a_file_is_refused_before_any_stage(tmp_path, capsys, name):
    """A folder named report.md failed the run with a traceback once every stage had run."""
    out = tmp_path / "run"
    (out / name).mkdir(parents=True)
    assert run(write_case(tmp_path), out, "--quick", "--compare", "training.regularizer=none,fd") == 2
    assert f"{out / name} is a folder where this command writes a file; move it away" in capsys.readouterr().err
    assert not (out / "truth.nc").exists()


def test_a_variant_folder_name_too_long_for_the_file_system_is_refused_before_any_stage(tmp_path, capsys):
    """A long --compare value made a folder name over 255 characters: that variant failed with Errno 36
    after the simulation, and a rerun into the same --out crashed with a traceback."""
    out = tmp_path / "run"
    long_value = "0.001" + "0" * 300 + "1"
    for attempt in range(2):
        assert run(write_case(tmp_path), out, "--quick", "--compare", f"training.learning_rate={long_value},0.002") == 2
        error = capsys.readouterr().err
        assert "--compare: the variant folder learning_rate=0.00100" in error and "more than the 255" in error
        assert "compare fewer keys at once, or values written shorter" in error and "Traceback" not in error
        assert not (out / "truth.nc").exists()


def test_compare_values_split_outside_brackets_and_quotes():
    assert split_values("none,jvp,fd") == ["none", "jvp", "fd"]
    assert split_values('[1, 2],[3, 4]') == ["[1, 2]", "[3, 4]"]
    assert split_values('"a,b",c') == ['"a,b"', "c"]
    key, values = parse_compare("training.regularizer_weight=1e-4, 1e-3")
    assert key == "training.regularizer_weight" and [v for _, v in values] == [1e-4, 1e-3]
    with pytest.raises(ConfigError, match="repeated"):
        parse_compare("training.seed=1,1")


def test_a_misspelt_compared_key_is_named_as_compared(tmp_path):
    """The error named a --set the user never typed: "--set training.epoch=3: unknown key"."""
    case = write_case(tmp_path)
    with pytest.raises(ConfigError, match=r"^variant epoch=3: --compare training.epoch=3: unknown key training.epoch; "
                                          r"did you mean training.epochs\?"):
        build_variants(case, compare=["training.epoch=3,4"])


def test_compared_values_that_read_the_same_run_once_and_many_variants_are_warned_about(tmp_path, caplog):
    """7 and 7.0 for an integer key passed the repeated-value check and ran twice (a factorial sweep may
    hold such variants: a penalty field where the penalty is off); 3600 variants started without a word."""
    case = write_case(tmp_path)
    assert [v.label for v in build_variants(case, compare=["training.epochs=7,7.0"])] == ["epochs=7"]
    assert "variant epochs=7.0 is the same run as epochs=7 (their values read the same); it is left out" in caplog.text
    sweep = build_variants(case, compare=["training.jacobian_penalty=none,frobenius",
                                          "training.jacobian_penalty_field=closure,rhs"])
    assert len(sweep) == 3  # the field means nothing without a penalty
    assert len(build_variants(case, compare=["training.jacobian_penalty=frobenius",  # auto means closure here
                                             "training.jacobian_penalty_field=auto,closure"])) == 1
    seeds = ",".join(str(seed) for seed in range(9))
    assert len(build_variants(case, compare=[f"training.seed={seeds}", "rollout.seed=1,2,3,4,5,6,7,8"])) == 72
    assert "--compare: 72 variants, each trained and rolled out in turn" in caplog.text


def test_stages_share_folders_unless_the_compared_key_changes_them(tmp_path):
    case = write_case(tmp_path)
    seeds = build_variants(case, quick=True, compare=["training.seed=0,1"])
    members = build_variants(case, quick=True, compare=["rollout.members=2,3"])
    root = tmp_path / "out"
    for variant in seeds:
        assert variant.directory(root, STAGE_SECTIONS["simulate"]) == root
        assert variant.directory(root, STAGE_SECTIONS["reference"]) == root
        assert variant.directory(root, STAGE_SECTIONS["baseline"]) == root
        assert variant.directory(root, STAGE_SECTIONS["train"]) == root / variant.label
    for variant in members:
        assert variant.directory(root, STAGE_SECTIONS["simulate"]) == root
        assert variant.directory(root, STAGE_SECTIONS["train"]) == root
        assert variant.directory(root, STAGE_SECTIONS["reference"]) == root / variant.label
    two_keys = build_variants(case, compare=["training.regularizer=none,fd", "training.seed=0,1,2"])
    assert [v.label for v in two_keys][:2] == ["regularizer=none_seed=0", "regularizer=none_seed=1"]
    assert len(two_keys) == 6


def test_reference_covers_the_rollout_horizon_in_data_samples(tmp_path):
    case = load_case(write_case(tmp_path), overrides=["time.save_every=2", "hybrid.substeps=4", "rollout.steps=10",
                                                        "rollout.save_every=4", "rollout.seed=5"])
    reference = reference_case(case)
    horizon = case.rollout.steps * case.host_time.dt
    samples = reference.time.n_steps // reference.time.save_every
    assert samples * case.time.sample_interval >= horizon > (samples - 1) * case.time.sample_interval
    assert math.isclose(case.host_time.dt * case.hybrid.substeps, case.time.sample_interval)
    assert (reference.initial_condition.members, reference.initial_condition.seed) == (3, 5)
    check_variants([Variant(case)], tmp_path / "out")  # saves at host steps 4, 8: step 8 is a sample
    bad = load_case(write_case(tmp_path), overrides=["hybrid.substeps=4", "rollout.steps=10", "rollout.save_every=3"])
    with pytest.raises(ConfigError, match="rollout.save_every"):
        check_variants([Variant(bad)], tmp_path / "out")


def test_training_states_are_found_in_the_training_data_up_to_rounding(finished_run, tmp_path):
    """members_from_training_states: the truth's own members (any time, a float32 copy, a copy 1e-11
    off as a differently batched spin-up ends) are found; the drawn reference's are not, nor states
    1e-4 off; files on other grids cannot be compared (None)."""
    from hybridnde.pipeline.held_out import members_from_training_states

    _, out = finished_run
    truth = out / "truth.nc"
    with xr.open_dataset(truth) as data:
        members = data.sizes["member"]
        later = data.isel(time=slice(3, None), member=[1, 0, 1]).load()
        single = data.astype("float32").load()
        other_grid = data.isel(x=slice(0, 16)).load()
    later.to_netcdf(tmp_path / "later.nc")  # mid-trajectory starts are training states too
    single.to_netcdf(tmp_path / "single.nc")
    other_grid.to_netcdf(tmp_path / "other_grid.nc")
    assert members_from_training_states(truth, truth) == members
    assert members_from_training_states(tmp_path / "later.nc", truth) == 3
    assert members_from_training_states(out / "reference.nc", truth) == 0
    assert members_from_training_states(tmp_path / "other_grid.nc", truth) is None  # cannot tell
    # float32 copies are the same states, rounded
    assert members_from_training_states(tmp_path / "single.nc", tmp_path / "single.nc") == members
    assert members_from_training_states(tmp_path / "single.nc", truth) == members
    with xr.open_dataset(truth) as data:
        first = data.isel(time=slice(0, 1)).load()
    scale = float(np.abs(first.u).max())
    noise = np.random.default_rng(0).standard_normal(first.u.shape)
    for offset, found in ((1e-11, members), (1e-4, 0)):
        nudged = first.copy(deep=True)
        nudged["u"] = first.u + offset * scale * noise
        nudged.to_netcdf(tmp_path / f"nudged_{offset}.nc")
        assert members_from_training_states(tmp_path / f"nudged_{offset}.nc", truth) == found


def test_a_run_scored_against_its_training_data_says_so(finished_run, tmp_path):
    """rollout.initial_conditions naming the training truth: the report said "median over 8 held-out
    members ... from states the closure never saw"."""
    case, out = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert run(case, copy, "--quick", "--set", f"rollout.initial_conditions='{copy / 'truth.nc'}'") == 0
    metrics = json.loads((copy / "metrics.json").read_text())
    members = metrics["members"]
    assert metrics["members_from_training_states"] == members > 0
    report = (copy / "report.md").read_text()
    assert "held-out" not in report and "never saw" not in report
    assert f"median over {members} members, all of them from states in the training data (not held out)" in report
    assert "**not held out**" in report


def test_a_point_start_is_not_scored_as_a_held_out_ensemble():
    """With ``initial_condition.distribution = "point"`` every drawn member is the training trajectory's
    own start: the reference and the rollouts use one member (64 copies of one deterministic trajectory
    gave "median over 64 held-out members", [11, 11]), and the verdict says nothing is held out."""
    from hybridnde.pipeline.report import verdict
    from hybridnde.pipeline.stages import rollout_case

    case = load_case(Path(__file__).resolve().parent.parent / "cases" / "lorenz63.toml")
    assert case.rollout.members == 64
    assert reference_case(case).initial_condition.members == 1
    assert rollout_case(case, Path("reference.nc")).rollout.members == 1
    given = case.replace(rollout=dataclasses.replace(case.rollout, initial_conditions="ics.nc"))
    assert rollout_case(given, Path("ics.nc")).rollout.members == 64  # a file of the user's: its members
    drawn = load_case(Path(__file__).resolve().parent.parent / "cases" / "lorenz63.toml",
                      overrides=["initial_condition.distribution='gaussian'", "initial_condition.std=[0.1]"])
    assert reference_case(drawn).initial_condition.members == 64
    metrics = {"valid_prediction_time": {"median": 11.0}, "members": 1, "stable_members": 1, "horizon": 100.0}
    assert "nothing held out" in verdict(metrics, held_out=False)
    assert "held-out members" in verdict(metrics)
    from hybridnde.pipeline.report import _members_split  # the one member also validates: said once, not twice

    assert _members_split({"train_members": [0], "validation_members": [0]}) == \
        "1 training member(s), also used for validation (none held out)"
    assert _members_split({"train_members": [0, 2], "validation_members": [1]}) == "2 training + 1 validation members"
    assert "2 of them from states in the training data" in verdict({**metrics, "members": 3,
                                                                     "members_from_training_states": 2})
    unchecked = verdict({**metrics, "members_from_training_states": None})
    assert "not checked against the training data" in unchecked and "held-out" not in unchecked
    # a long valid time beside far-off statistics (Lorenz-63's quick model: VPT 8.15, KL 16 nats) says both
    assert "distributed unlike" not in verdict({**metrics, "kl_divergence": {"value": 0.0097}})
    assert "distributed unlike the truth's over the horizon (KL divergence 16.0 nats" in \
        verdict({**metrics, "kl_divergence": {"value": 16.0}})



def test_a_median_valid_to_the_horizon_is_said_to_be_a_lower_bound():
    """75% of members valid to the horizon: the verdict said "for 100 time units ... 70.4x the bare
    host's", where both are lower bounds; and "100 s time units" where the files give units."""
    from hybridnde.pipeline.report import verdict

    metrics = {"valid_prediction_time": {"median": 100.0}, "members": 4, "stable_members": 4, "horizon": 100.0,
               "reached_horizon_fraction": 0.75,
               "baseline": {"valid_prediction_time": {"median": 1.42}, "stable_members": 0, "members": 4}}
    text = verdict(metrics)
    assert "for at least 100 time units (3 of 4 members are valid to the horizon)" in text
    assert "at least 70.4x the bare host solver's 1.42" in text
    half = verdict({**metrics, "reached_horizon_fraction": 0.5, "valid_prediction_time": {"median": 60.0}})
    assert "for at least 60.0 time units (2 of 4 members are valid to the horizon)" in half  # a median of 2 values
    both = verdict({**metrics, "baseline": {**metrics["baseline"], "valid_prediction_time": {"median": 100.0},
                                            "reached_horizon_fraction": 1.0}})
    assert "no ratio" in both and "1x" not in both
    short = verdict({**metrics, "reached_horizon_fraction": 0.25, "valid_prediction_time": {"median": 18.3},
                     "time_units": "s"})
    assert "for 18.3 s, median" in short and "at least" not in short and "time units" not in short


def test_a_model_at_rest_is_said_first_and_without_lyapunov_times():
    """Lorenz-63's quick model settles on a fixed point from t ~ 2 (spread 1e-13) while the truth
    circles it slowly: 8.15 time units "valid", reported as 7.38 Lyapunov times of skill. Only a model
    at rest before its valid time ends loses the skill reading; one that tracked and then stopped is
    said to come to rest."""
    from hybridnde.pipeline.report import verdict

    metrics = {"valid_prediction_time": {"median": 8.15}, "valid_prediction_time_lyapunov": {"median": 7.38},
               "members": 1, "stable_members": 1, "horizon": 100.0, "kl_divergence": {"value": 16.0}}
    lingering = verdict({**metrics, "resting_members": 1, "resting_while_valid": 1}, held_out=False)
    assert lingering.startswith("The hybrid model is at rest in 1 of 1 members while the truth keeps moving, before "
                                "its valid time ends")
    assert "Lyapunov" not in lingering and "; and its states are distributed unlike" in lingering
    tracked = verdict({**metrics, "resting_members": 1, "resting_while_valid": 0}, held_out=False)
    assert "7.38 Lyapunov times" in tracked and "1 of 1 members come to rest by the horizon" in tracked
    assert "7.38 Lyapunov times" in verdict(metrics, held_out=False)
    drifting = verdict({**metrics, "invariant_drift": {"energy": {"rollout": {"median": 34.7}},
                                                       "casimir": {"rollout": {"median": 2.0}}}})
    assert ("; but its energy drifts by 34.7 and casimir drifts by 2.00 (median over members of the largest relative drift): "
            "its states are not the system's, and its states are distributed unlike") in drifting
    assert drifting.count("; but ") == 1
    # a drift above 10% is said (two-body quick: energy 0.485 passed without a word), not as unphysical
    mild = verdict({**metrics, "invariant_drift": {"energy": {"rollout": {"median": 0.49}}}})
    assert "; but its energy drifts by 0.490 (median over members of the largest relative drift), and" in mild
    assert "not the system's" not in mild
    assert "drift" not in verdict({**metrics, "invariant_drift": {"energy": {"rollout": {"median": 0.09}}}})
    # a field whose spatial mean the truth conserves and the model does not (ks_l22 quick: 0.17 of the rms)
    mean = {"rollout": {"median": 0.172}, "reference": {"median": 4.5e-17}}
    assert "its spatial mean drifts by 0.172 of the field's rms (median over members; the truth conserves it)" in \
        verdict({**metrics, "mean_drift": mean})
    assert "spatial mean" not in verdict({**metrics, "mean_drift": {**mean, "reference": {"median": 0.05}}})
    # the table: no Lyapunov times for a model at rest, no spread for one member
    from hybridnde.pipeline.report import _metric_rows

    rows = {name: hybrid for name, hybrid, _ in _metric_rows({**metrics, "resting_while_valid": 1, "threshold": 0.5,
                                                               "lyapunov_exponent": 0.9})}
    assert rows["valid prediction time"] == "8.15" and not any("Lyapunov" in name for name in rows)
    rows = {name: hybrid for name, hybrid, _ in _metric_rows({**metrics, "lyapunov_exponent": 0.9})}
    assert rows["  in Lyapunov times (lambda_1 = 0.9, from the case)"] == "7.38"
    estimates = {"model": {"exponent": 0.95, "standard_error": 0.02, "members": 4, "duration": 22.0},
                 "truth": {"exponent": 0.81, "standard_error": math.nan, "members": 1, "duration": 22.0}}
    rows = {name: hybrid for name, hybrid, _ in _metric_rows({**metrics, "lyapunov_exponent": 0.9,
                                                               "lyapunov": estimates})}
    assert rows["leading Lyapunov exponent (truth: 0.81 (1 member x 22 time units; one member: no error bar))"] == \
        "0.95 +- 0.02 (4 members x 22 time units)"
    baseline = {"valid_prediction_time": {"median": 0.245}, "stable_members": 1, "members": 1}
    assert "(a bare second-order host has no forces" in verdict({**metrics, "baseline": baseline}, setup="second_order")
    assert "no forces" not in verdict({**metrics, "baseline": baseline}, setup="residual")
    frozen = {**baseline, "valid_prediction_time": {"median": 0.0}}  # no ratio: no note hanging off nothing
    assert "no forces" not in verdict({**metrics, "baseline": frozen}, setup="second_order")
    # ks_fd quick: 19.4 [14, 23.8] against the coarse host's 12.6 [10.9, 18.8] is "1.54x", within the spread
    spread = {**metrics, "valid_prediction_time": {"median": 19.4, "p16": 14.0, "p84": 23.8},
              "baseline": {**baseline, "valid_prediction_time": {"median": 12.6, "p16": 10.9, "p84": 18.8}}}
    assert "1.54x the bare host solver's 12.6 (their p16-p84 spreads over members overlap)" in verdict(spread)
    both = verdict(spread, setup="second_order")
    assert "(their p16-p84 spreads over members overlap; a bare second-order host" in both
    apart = {**spread, "baseline": {**baseline, "valid_prediction_time": {"median": 1.42, "p16": 1.27, "p84": 2.1}}}
    assert "overlap" not in verdict(apart)


def test_an_unavailable_device_is_refused_before_the_first_stage(tmp_path, capsys):
    """It was refused only after the simulation had run and run.json recorded a started stage."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "never"
    assert run(write_case(tmp_path), out, "--quick", "--set", "compute.device='cuda'") == 2
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()


def test_an_output_folder_holding_another_cases_run_is_refused(finished_run, tmp_path, capsys):
    """Its outputs would be replaced stage by stage, and those this case does not make (a baseline)
    would stay beside them, listed in run.json."""
    _, out = finished_run
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    before = sorted(path.name for path in foreign.iterdir())
    assert run(write_case(tmp_path, RIGID, "rigid_tiny"), foreign, "--quick") == 2
    error = capsys.readouterr().err
    assert "holds the run of another case" in error and "'ks_tiny'" in error and "'rigid_tiny'" in error
    assert sorted(path.name for path in foreign.iterdir()) == before


def test_a_truth_or_reference_beyond_the_memory_available_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Simulations hold their trajectory in memory: a truth far beyond it was a MemoryError after the
    spin-up (or minutes of swapping). The reference is checked only where one is simulated."""
    from hybridnde import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 2**20)  # 1 MiB: deterministic on any machine
    case, out = write_case(tmp_path), tmp_path / "never"
    assert run(case, out, "--quick", "--set", "initial_condition.members=1000") == 2
    assert "lower initial_condition.members" in capsys.readouterr().err and not out.exists()
    assert run(case, out, "--quick", "--set", "rollout.members=1000") == 2
    assert "the held-out reference" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # where the system does not say: no check
    variants = build_variants(case, overrides=["rollout.members=1000"], quick=True)
    check_variants(variants, out)


def test_only_the_runs_own_folders_are_searched_for_another_cases_truth(finished_run, tmp_path):
    """A project folder with runs/<other>/truth.nc below it is not another case's run folder; and a case
    name holding ':' (the title's separator) still recognises its own folder."""
    _, out = finished_run
    project = tmp_path / "project"
    shutil.copytree(out, project / "runs" / "ks_tiny")
    rigid = build_variants(write_case(tmp_path, RIGID, "rigid_tiny"), quick=True)
    check_variants(rigid, project)  # two levels below: not this run's
    with pytest.raises(ConfigError, match="holds the run of another case"):
        check_variants(rigid, project / "runs")  # a variant folder's truth: checked
    colon = build_variants(write_case(tmp_path, KS.replace('name = "ks_tiny"', 'name = "ks:tiny"'), "colon"),
                           quick=True)
    assert run(write_case(tmp_path, KS.replace('name = "ks_tiny"', 'name = "ks:tiny"'), "colon"),
               tmp_path / "colon", "--quick") == 0
    check_variants(colon, tmp_path / "colon")  # its own folder, rerun


def test_a_file_changed_in_place_within_a_run_is_hashed_again(tmp_path):
    """Same size, other numbers (written in place): the cached checksum must not be reused."""
    import os

    from hybridnde.pipeline.runner import _Run

    def build(dataset):
        dataset.createDimension("member", 4)
        dataset.createVariable("u", "f8", ("member",))[:] = [1.0, 2.0, 3.0, 4.0]

    import netCDF4

    path = tmp_path / "truth.nc"
    with netCDF4.Dataset(path, "w") as dataset:
        build(dataset)
    run = _Run(tmp_path, progress=False, lyapunov=False, command="test")
    before, size, stat = run.checksum(path), path.stat().st_size, path.stat()
    with netCDF4.Dataset(path, "a") as dataset:
        dataset["u"][0] = 5.0
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a clock that ticks coarsely: still later
    assert path.stat().st_size == size
    assert run.checksum(path) != before


def test_a_stage_failing_without_a_checkpoint_is_not_made_again(tmp_path, monkeypatch, capsys):
    """Only a resume is retried afresh: a stage that fails from the start fails once, not twice with
    'not resuming' said of a stage that never resumed."""
    import hybridnde.simulation_job as simulation_job
    from hybridnde.io import DataError

    calls = []

    def failing(case, out, **kwargs):
        calls.append(1)
        raise DataError("the truth cannot be made")

    monkeypatch.setattr(simulation_job, "run_simulation", failing)
    assert run(write_case(tmp_path), tmp_path / "run", "--quick", "--set", "rollout.steps=4") != 0
    err = capsys.readouterr().err
    assert calls == [1] and "not resuming" not in err and "the truth cannot be made" in err


def test_a_rerun_stopped_while_drawing_leaves_the_earlier_evaluation_whole(finished_run, tmp_path, monkeypatch):
    import hybridnde.pipeline.runner as runner

    case, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for figure in (copy / "figures").iterdir():  # marked: any figure drawn into place changes them
        figure.write_bytes(b"earlier " + figure.name.encode())
    earlier = {path.name: path.read_bytes() for path in [copy / "metrics.json", *(copy / "figures").iterdir()]}

    def stopped(*args, **kwargs):  # the last figure run draws: the others are drawn by then
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "error_growth_comparison_figure", stopped)
    assert run(case, copy, "--quick", "--set", "evaluate.vpt_threshold=0.4") == 130  # only evaluate is remade
    assert {path.name: path.read_bytes() for path in [copy / "metrics.json", *(copy / "figures").iterdir()]} == earlier


def test_a_training_loss_figure_not_drawn_again_does_not_stay(finished_run, tmp_path):
    case, out = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert (copy / "figures" / "training_loss.png").is_file()
    (copy / "closure.log.jsonl").unlink()  # nothing to draw the curves from
    assert run(case, copy, "--quick", "--set", "evaluate.vpt_threshold=0.4") == 0
    assert not (copy / "figures" / "training_loss.png").exists()


def test_an_initial_conditions_file_changed_under_the_truth_remakes_every_stage(tmp_path, capsys):
    """The truth and reference record the configuration and the checksum of initial_condition.file, but
    only the configuration was compared: the file given new states at the same path left the old truth,
    and with it the closure, rollouts and scores, all reused."""
    initial = tmp_path / "initial.nc"

    def write_initial(angles, tilt):
        states = [[np.cos(angle), tilt, np.sin(angle)] for angle in angles]
        xr.Dataset({"u": (("member", "component"), np.array(states))},
                   coords={"member": [0, 1, 2], "component": ["m1", "m2", "m3"]}).to_netcdf(initial)
    write_initial([0.6, 1.0, 1.4], 0.0)
    case = tmp_path / "case.toml"
    case.write_text(f'[case]\nname = "rigid"\n[system]\nname = "rigid_body"\n[time]\ndt = 0.05\nn_steps = 30\n'
                    f'[initial_condition]\ndistribution = "file"\nfile = "{initial}"\nmembers = 3\n[hybrid]\n'
                    'setup = "neural_ode"\n[model]\nwidth = 8\ndepth = 1\n[training]\nepochs = 2\nbatch_size = 32\n'
                    '[rollout]\nmembers = 2\nsteps = 30\n')
    out = tmp_path / "run"
    assert run(case, out) == 0
    with xr.open_dataset(out / "truth.nc") as truth:
        before = truth.u.values[:, 0].copy()
    assert run(case, out) == 0 and set(stage_actions(out).values()) == {"reused"}
    write_initial([0.7, 1.1, 1.3], 0.1)
    capsys.readouterr()
    assert run(case, out) == 0
    assert set(stage_actions(out).values()) == {"ran"}
    assert f"simulate: {initial} changed since" in capsys.readouterr().err
    with xr.open_dataset(out / "truth.nc") as truth:
        assert not np.allclose(truth.u.values[:, 0], before) and truth.u.values[0, 0, 1] == pytest.approx(0.1)


def test_compare_md_says_initial_states_were_not_checked_where_they_were_not():
    """A reference on another grid than the truth's is not checked against the training data (None): the
    table said "held-out initial states", where each variant's report says it was not checked."""
    import types

    from hybridnde.pipeline.comparison import _starts_phrase

    case = load_case(Path(__file__).resolve().parent.parent / "cases" / "ks_l22.toml")

    def outcome(*counts):
        return types.SimpleNamespace(variants=[types.SimpleNamespace(case=case, metrics={} if count == "absent" else
                                                                     {"members_from_training_states": count})
                                               for count in counts])
    assert _starts_phrase(outcome(0, 0)) == _starts_phrase(outcome("absent")) == "held-out initial states"
    assert _starts_phrase(outcome(0, None)) == "initial states not checked against the training data (another grid)"
    assert "**not held out** (2 member(s)" in _starts_phrase(outcome(None, 2))


def test_the_comparison_figure_draws_each_variants_threshold(tmp_path, monkeypatch):
    """With --compare evaluate.vpt_threshold=... only the first variant's threshold was drawn."""
    from matplotlib.axes import Axes

    from hybridnde.pipeline.plots import error_growth_comparison_figure

    def curve(threshold: float) -> dict:
        times = np.linspace(0.0, 10.0, 11)
        return {"error_growth": {"time": times, "p16": 0.01 * np.exp(times), "median": 0.02 * np.exp(times),
                                 "p84": 0.03 * np.exp(times)}, "threshold": threshold,
                "spread_percentiles": [16.0, 84.0], "start_time": 0.0, "valid_prediction_time": {"median": 3.0}}
    lines, horizontal = [], Axes.axhline
    monkeypatch.setattr(Axes, "axhline", lambda self, y, **kwargs: (lines.append(y), horizontal(self, y, **kwargs))[1])
    error_growth_comparison_figure([("a", curve(0.05)), ("b", curve(2.0)), ("c", curve(2.0))], tmp_path / "c.png")
    assert lines == [0.05, 2.0]
