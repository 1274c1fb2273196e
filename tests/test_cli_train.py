"""`hybridnde train`: a closure file that rebuilds the model, a log beside it; bad input exits 2 and
leaves no file."""
import json

import pytest
import torch

from hybridnde.cli import main
from hybridnde.closure_file import load_closure
from hybridnde.config import load_case
from hybridnde.training import TRAINING_SECTIONS

TWO_BODY = """
[case]
name = "toy"
[system]
name = "two_body"
[time]
dt = 0.02
n_steps = 30
[initial_condition]
members = 4
[hybrid]
setup = "neural_ode"
[model]
width = 12
[training]
epochs = 3
batch_size = 32
regularizer = "fd"
regularizer_weight = 1e-3
[compute]
device = "cpu"
"""

LORENZ = """
[system]
name = "lorenz63"
[time]
dt = 0.02
n_steps = 30
[initial_condition]
distribution = "point"
value = [1.0, 1.0, 1.0]
members = 2
"""

KS = """
[system]
name = "kuramoto_sivashinsky"
n_points = 16
[time]
dt = 0.25
n_steps = 12
[initial_condition]
members = 2
[hybrid]
system = {nonlinear_coefficient = 0.0}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_train")
    paths = {}
    for name, text in (("two_body", TWO_BODY), ("lorenz", LORENZ), ("ks", KS)):
        case = folder / f"{name}.toml"
        case.write_text(text)
        truth = folder / f"{name}.nc"
        assert main(["simulate", str(case), "--out", str(truth)]) == 0
        paths[name] = (case, truth)
    return paths


def test_train_writes_a_closure_that_rebuilds_the_model(tmp_path, files, capsys):
    case, truth = files["two_body"]
    out = tmp_path / "closure.pt"
    assert main(["train", str(case), "--data", str(truth), "--out", str(out), "--set", "training.epochs=2"]) == 0
    assert "2 epochs" in capsys.readouterr().out
    model, payload = load_closure(out)
    metadata = payload["metadata"]
    expected = load_case(case, overrides=["training.epochs=2"]).checksum(TRAINING_SECTIONS)
    assert metadata["config_checksum"] == expected and metadata["epochs_run"] == 2
    from hybridnde.data import data_checksum, file_checksum

    assert metadata["data"]["sha256"] == file_checksum(truth) and metadata["data"]["train_members"] == [0, 1, 2]
    assert metadata["data"]["data_sha256"] == data_checksum(truth)  # what `run` reuses the closure by
    assert set(metadata["final"]) >= {"loss", "val_loss", "loss/rollout", "loss/fd", "lr"}
    assert "two_body" in payload["case_toml"]
    records = [json.loads(line) for line in (tmp_path / "closure.log.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2]
    assert not (tmp_path / "closure.checkpoint.pt").exists()
    u = torch.randn(5, 4, dtype=torch.float64)
    assert model(torch.zeros(()), u).shape == (5, 4)


@pytest.mark.parametrize("which, arguments, message", [
    ("two_body", ["--data", "{missing}"], "no such file"),
    ("two_body", ["--data", "{lorenz}"], "component"),
    ("two_body", ["--set", "training.regularizer=jvpp"], "training.regularizer"),
    ("two_body", ["--set", "time.dt=0.05"], "time.dt"),
    ("two_body", ["--set", "system.gravitational_parameter=2.0"], "gravitational_parameter"),
    ("two_body", ["--out", "{folder}/closure.nc"], ".pt"),
    ("two_body", ["--out", "{case}/closure.pt"], "is a file, not a folder"),
    ("two_body", ["--threads", "-1"], "--threads = -1"),
    ("ks", ["--set", "training.integration=\"odeint\""], "training.integration"),
    ("ks", ["--set", "system.method=\"finite_difference\"", "--set", "time.dt=0.001", "--set", "time.save_every=250",
            "--set", "time.n_steps=3000", "--set", "time.integrator=\"rk4\"", "--set", "system.n_points=64"],
     "hybrid.substeps"),
])
def test_bad_input_exits_2_and_leaves_no_file(tmp_path, files, which, arguments, message, capsys):
    case, truth = files[which]
    values = {"missing": str(tmp_path / "missing.nc"), "lorenz": str(files["lorenz"][1]), "folder": str(tmp_path), "case": str(case)}
    arguments = [argument.format(**values) for argument in arguments]
    command = ["train", str(case), "--data", str(truth), "--out", str(tmp_path / "closure.pt"), *arguments]
    assert main(command) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no closure, log, checkpoint or temporary file


@pytest.mark.parametrize("every, hint", [(1, "holds the last checkpoint (after epoch 1 of 3): the same command with "
                                              "--resume continues from it"), (0, "a rerun starts afresh")])
def test_an_interrupted_training_says_what_a_rerun_can_do(tmp_path, files, monkeypatch, capsys, every, hint):
    """Ctrl-C said only "interrupted"; a rerun without --resume replaced the checkpoint without a word."""
    from hybridnde.training import trainer as trainer_module

    real = trainer_module.Trainer._epoch

    def stop_in_the_second_epoch(self, windows, sample_interval, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, windows, sample_interval, epoch)

    case, truth = files["two_body"]
    command = ["train", str(case), "--data", str(truth), "--out", str(tmp_path / "closure.pt"), "--set",
               f"training.checkpoint_every={every}"]
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "_epoch", stop_in_the_second_epoch)
        assert main(command) == 130
    assert hint in capsys.readouterr().err
    if every:
        # a fresh run of another configuration stopped before its own first checkpoint: the earlier run's was
        # kept, and the stop advised --resume, which then refused it (another learning rate)
        def stop_in_the_first_epoch(self, windows, sample_interval, epoch):
            raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(trainer_module.Trainer, "_epoch", stop_in_the_first_epoch)
            assert main([*command, "--set", "training.learning_rate=0.01"]) == 130
        err = capsys.readouterr().err
        assert "an interrupted run's checkpoint is there; this run starts afresh (no --resume) and removes it" in err
        assert "no checkpoint was written" in err and "--resume continues" not in err
        assert not (tmp_path / "closure.checkpoint.pt").exists()
        assert main(command) == 0


def test_a_folder_where_training_writes_its_log_is_refused_before_training(tmp_path, files, capsys):
    """It trained, saved closure.pt, then failed renaming the log onto the folder (a traceback)."""
    case, truth = files["two_body"]
    (tmp_path / "closure.log.jsonl").mkdir()
    assert main(["train", str(case), "--data", str(truth), "--out", str(tmp_path / "closure.pt")]) == 2
    assert "closure.log.jsonl is a folder where this command writes a file" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["closure.log.jsonl"]


def test_a_diverging_training_says_why_without_a_traceback_and_leaves_no_log(tmp_path, files, capsys):
    """A learning rate of 1e30: the loss goes non-finite. The message was right but came as a traceback,
    and the partial log stayed though no checkpoint could resume it. (An adaptive solve whose step
    underflows is the same error: tests/test_training.py.)"""
    case, truth = files["lorenz"]
    command = ["train", str(case), "--data", str(truth), "--out", str(tmp_path / "closure.pt"), "--set",
               "training.learning_rate=1e30", "--set", "training.epochs=2", "--set", "training.checkpoint_every=0"]
    assert main(command) == 1
    err = capsys.readouterr().err
    # epochs count from 1, as in the log: its epoch 1 skipped the batches after the first step, epoch 2 had none
    # left (the message said "epoch 1", the log's second)
    assert "hybridnde train: error: epoch 2: every batch gave a non-finite loss" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_the_verbs_work_on_the_threads_asked_for_one_by_default_and_restore_them(tmp_path, files, monkeypatch):
    """One thread by default, as `run` trains (the same closure bit for bit; many threads on busy cores
    are orders of magnitude slower), `--threads N` / 0 (torch's default) otherwise, in every verb that
    runs torch outside a rollout."""
    import hybridnde.evaluate  # (the verbs import their work when they run: spy on it there)
    import hybridnde.simulate
    import hybridnde.training

    seen = []

    def spying(module, name):
        original = getattr(module, name)

        def spy(*args, **kwargs):
            seen.append((name, torch.get_num_threads()))
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, spy)

    import hybridnde.simulation_job

    for module, name in ((hybridnde.training, "train_case"), (hybridnde.simulation_job, "run_simulation"),
                         (hybridnde.evaluate, "evaluate_files")):
        spying(module, name)
    case, truth = files["two_body"]
    torch.set_num_threads(2)  # "torch's default" here; the fixture resets it after the test
    for extra, expected in (([], 1), (["--threads", "3"], 3), (["--threads", "0"], 2)):
        seen.clear()
        assert main(["train", str(case), "--data", str(truth), "--out", str(tmp_path / "closure.pt"), *extra]) == 0
        assert main(["simulate", str(case), "--out", str(tmp_path / "truth.nc"), *extra]) == 0
        assert main(["evaluate", str(tmp_path / "truth.nc"), "--reference", str(truth), *extra]) == 0
        assert seen == [("train_case", expected), ("run_simulation", expected), ("evaluate_files", expected)]
        assert torch.get_num_threads() == 2  # given back


def test_ks_residual_closure_trains_through_the_spectral_host(tmp_path, files):
    case, truth = files["ks"]
    out = tmp_path / "closure.pt"
    assert main(["train", str(case), "--data", str(truth), "--out", str(out), "--set", "training.epochs=1",
                 "--set", "training.regularizer=\"jvp\"", "--set", "model.width=4"]) == 0
    model, payload = load_closure(out)
    assert payload["spec"]["kind"] == "periodic_cnn"


def test_omp_num_threads_that_the_setting_overrides_is_named_once(monkeypatch, caplog):
    """A job script's OMP_NUM_THREADS=4 is overridden by the verbs' own thread setting (1 by default):
    said once, not silently; 0 (torch's own choice) follows the environment and says nothing."""
    from hybridnde import threads

    monkeypatch.setattr(threads, "_TOLD", set())
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    for _ in range(2):
        with threads.torch_threads(1, "rollout.threads"):
            assert torch.get_num_threads() == 1
    assert caplog.text.count("OMP_NUM_THREADS=4 is set, but rollout.threads = 1 decides") == 1
    caplog.clear()
    with threads.torch_threads(0, "rollout.threads"):
        pass
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with threads.torch_threads(1, "rollout.threads"):
        pass
    assert "OMP_NUM_THREADS" not in caplog.text


def test_thread_counts_beyond_the_machine_are_refused_or_warned_about(monkeypatch, caplog, tmp_path, files, capsys):
    """100 000 threads crashed torch (segfault), 4 000 stalled it for minutes; above the CPU count
    the cores are oversubscribed (a warning: a job may share them knowingly)."""
    import os

    from hybridnde import threads
    from hybridnde.config import ConfigError

    assert 1 <= threads.available_cpus() <= (os.cpu_count() or 1)  # the affinity, within the machine
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(threads, "_TOLD", set())
    with pytest.raises(ConfigError, match=r"rollout.threads = 100000: far more threads than the 2 CPUs this process"):
        threads.check_thread_count(100000, "rollout.threads")
    assert threads.thread_limit() == 64
    with threads.torch_threads(3, "--threads"):
        assert torch.get_num_threads() == 3
    assert "--threads = 3 is more than the 2 CPUs this process may use" in caplog.text
    case, truth = files["two_body"]
    assert main(["train", str(case), "--data", str(truth), "--out", str(tmp_path / "c.pt"), "--threads", "4000"]) == 2
    assert "--threads = 4000" in capsys.readouterr().err and not (tmp_path / "c.pt").exists()


def test_a_validation_split_without_a_finite_window_is_named_as_such(tmp_path, capsys):
    """The training members were fine, the one validation member blew up early: the refusal spoke of
    "no finite windows ... to train on" and gave no fix (helper-114's review)."""
    from pathlib import Path

    import numpy as np
    import xarray as xr

    case = Path(__file__).resolve().parents[1] / "cases" / "lorenz63.toml"
    sets = [argument for setting in ('initial_condition.distribution="gaussian"', "initial_condition.std=[1.0]",
                                     "initial_condition.members=3", "training.validation_fraction=0.34",
                                     "training.rollout_steps=5", "training.validation_rollout_steps=5",
                                     "training.epochs=1", 'training.method="vanilla"', "time.n_steps=400")
            for argument in ("--set", setting)]
    assert main(["simulate", str(case), "--out", str(tmp_path / "truth.nc"), *sets]) == 0
    with xr.load_dataset(tmp_path / "truth.nc") as truth:
        truth["u"][2, 3:] = np.nan  # the validation member (the last) blows up at its fourth sample
        truth["status"][2] = 1
        truth.to_netcdf(tmp_path / "blown.nc")
    capsys.readouterr()
    assert main(["train", str(case), "--data", str(tmp_path / "blown.nc"), "--out", str(tmp_path / "c.pt"), *sets]) == 2
    assert ("blown.nc: the validation members [2] hold no finite window of 6 samples (they blow up or end first); "
            "lower training.validation_rollout_steps, or change training.validation_fraction") in capsys.readouterr().err


def test_a_rollout_file_is_refused_as_training_data_naming_what_made_it(tmp_path, files, capsys):
    """A bare-host rollout trained silently (its case_toml names the true [system], so the system check
    passed): for ks_l22's host without the nonlinear term the closure learnt ~0 and nothing said why."""
    case, truth = files["two_body"]
    rollout = tmp_path / "rollout.nc"
    assert main(["rollout", str(case), "--out", str(rollout), "--no-progress", "--set", "rollout.members=2",
                 "--set", "rollout.steps=20"]) == 0
    capsys.readouterr()
    assert main(["train", str(case), "--data", str(rollout), "--out", str(tmp_path / "closure.pt")]) == 2
    assert (f"{rollout} is a rollout (of the bare host solver), not the true system's trajectories; train on a truth "
            "written by `hybridnde simulate CASE.toml`") in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rollout.nc"]
