"""The trainer: both loss terms go down, a resumed run equals an uninterrupted one bit for bit,
early stopping keeps the best weights, schedules, adaptive integration with NFE counts, warnings."""
import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hybridnde.closure_file import load_closure
from hybridnde.config import TrainingConfig, parse_case
from hybridnde.data import WindowSet
from hybridnde.io import DataError, write_netcdf
from hybridnde.models import MLPClosure
from hybridnde.output_lock import lock_path, output_lock
from hybridnde.simulate import simulate_case
from hybridnde.training import (RolloutLoss, Trainer, checkpoint_path, learning_rate_at, log_path, train_case)
from hybridnde.training import trainer as trainer_module
from hybridnde.training.checkpoint import partial_log_path
from solvers import ClosureOnly, ExplicitSolver

TRAINING = {"epochs": 6, "batch_size": 32, "rollout_steps": 2, "learning_rate": 3e-3, "lr_schedule": "constant",
            "checkpoint_every": 2, "seed": 3}


def toy_case(training=None, **sections):
    """A small neural-ODE two-body case: 5 members (4 train, 1 validate) x 41 samples."""
    raw = {"case": {"name": "toy"}, "system": {"name": "two_body"}, "time": {"dt": 0.02, "n_steps": 40},
           "initial_condition": {"members": 5}, "hybrid": {"setup": "neural_ode"},
           "model": {"width": 16}, "training": {**TRAINING, **(training or {})}, "compute": {"device": "cpu"}}
    for name, table in sections.items():
        raw.setdefault(name, {}).update(table)
    return parse_case(raw)


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("truth") / "truth.nc"
    write_netcdf(simulate_case(toy_case(), progress=False), path)
    return path


def interrupted_in_epoch(epoch_index: int):
    """A ``Trainer._epoch`` that raises ``KeyboardInterrupt`` (Ctrl-C) at 0-based epoch ``epoch_index``."""
    original_epoch = trainer_module.Trainer._epoch

    def epoch_or_interrupt(self, windows, sample_interval, epoch):
        if epoch == epoch_index:
            raise KeyboardInterrupt
        return original_epoch(self, windows, sample_interval, epoch)

    return epoch_or_interrupt


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("regularizer, weight", [("jvp", 1e-4), ("fd", 1e-2)])
def test_training_reduces_the_rollout_loss_and_the_regularizer(tmp_path, truth_file, regularizer, weight):
    case = toy_case({"epochs": 25, "regularizer": regularizer, "regularizer_weight": weight, "probes": 4,
                     "checkpoint_every": 0})
    out = tmp_path / "closure.pt"
    train_case(case, truth_file, out, progress=False)
    history = read_log(log_path(out))
    assert [record["epoch"] for record in history] == list(range(1, 26))
    first, last = history[0], history[-1]
    for key in ("loss", "val_loss", "lr", "seconds", "loss/rollout", f"loss/{regularizer}"):
        assert key in first
    assert last["loss/rollout"] < 0.5 * first["loss/rollout"]
    assert last[f"loss/{regularizer}"] < 0.5 * first[f"loss/{regularizer}"]
    assert last["loss"] == pytest.approx(last["loss/rollout"] + weight * last[f"loss/{regularizer}"], rel=1e-9)
    model, payload = load_closure(out)
    assert payload["metadata"]["epochs_run"] == 25 and payload["metadata"]["training"]["regularizer"] == regularizer
    # what made the weights (their last bits depend on it): the code, torch, the device, the threads
    assert payload["metadata"]["software"].startswith("hybridnde ")
    assert payload["metadata"]["platform"].startswith(f"torch {torch.__version__} on cpu")


@pytest.mark.parametrize("penalty", [{}, {"jacobian_penalty": "frobenius", "probes": 2},
                                     {"jacobian_penalty": "spectral", "jacobian_penalty_weight": 1e-2}])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, truth_file, monkeypatch, penalty):
    """Also with the penalties' random state: Hutchinson probes (Frobenius, 2 probes for n = 4) and the
    power iteration's warm-start vectors (spectral), which the checkpoint must carry."""
    case = toy_case({"regularizer": "jvp", "regularizer_weight": 1e-4, "patience": 4, **penalty})
    straight = tmp_path / "straight" / "closure.pt"
    train_case(case, truth_file, straight, progress=False)
    assert not checkpoint_path(straight).exists()  # removed once the closure is saved

    interrupted = tmp_path / "interrupted" / "closure.pt"
    original_epoch = trainer_module.Trainer._epoch
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))  # in epoch four
    with pytest.raises(KeyboardInterrupt):
        train_case(case, truth_file, interrupted, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original_epoch)
    assert not interrupted.exists() and checkpoint_path(interrupted).exists()
    # epochs 1-3 ran (the checkpoint holds 1-2), logged beside the final name until the closure is saved
    assert len(read_log(partial_log_path(interrupted))) == 3 and not log_path(interrupted).exists()

    _, result = train_case(case, truth_file, interrupted, resume=True, progress=False)
    assert result.resumed_from == 2
    a, payload_a = load_closure(straight)
    b, payload_b = load_closure(interrupted)
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    assert payload_a["checksum"] == payload_b["checksum"]

    def without_time(records):
        return [{key: value for key, value in record.items() if key != "seconds"} for record in records]

    assert without_time(read_log(log_path(straight))) == without_time(read_log(log_path(interrupted)))
    assert not partial_log_path(interrupted).exists()


@pytest.mark.parametrize("method", [{"method": "homotopy", "homotopy_stages": 3},
                                    {"method": "multiple_shooting", "shooting_segments": 2}])
def test_homotopy_and_multiple_shooting_resume_to_the_same_closure(tmp_path, truth_file, monkeypatch, method):
    """Their terms carry state (the homotopy's stage, the segments' trainable corrections) that the
    checkpoint must hold; the Ko et al. cases ship with checkpoints on that rely on it."""
    case = toy_case({"integration": "odeint", "epochs": 6, "checkpoint_every": 1, "rollout_steps": 4, **method})
    straight = tmp_path / "straight" / "closure.pt"
    train_case(case, truth_file, straight, progress=False)
    interrupted = tmp_path / "interrupted" / "closure.pt"
    original_epoch = trainer_module.Trainer._epoch
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
    with pytest.raises(KeyboardInterrupt):
        train_case(case, truth_file, interrupted, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original_epoch)
    _, result = train_case(case, truth_file, interrupted, resume=True, progress=False)
    assert result.resumed_from == 3
    assert load_closure(straight)[1]["checksum"] == load_closure(interrupted)[1]["checksum"]


def test_an_interrupted_run_leaves_the_finished_closures_log_alone(tmp_path, truth_file, monkeypatch):
    """The log of a run grows under another name until its closure is saved: stopping a second run
    into the same --out no longer replaced the first closure's log with the second's few epochs."""
    out = tmp_path / "closure.pt"
    train_case(toy_case(), truth_file, out, progress=False)
    finished = log_path(out).read_text()
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(1))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case({"learning_rate": 1e-2}), truth_file, out, progress=False)
    assert log_path(out).read_text() == finished and len(read_log(partial_log_path(out))) == 1
    assert not lock_path(out).exists()  # released on the way out


def test_a_second_run_into_the_same_closure_file_is_refused_while_the_first_runs(tmp_path, truth_file):
    out = tmp_path / "closure.pt"
    with output_lock(out), pytest.raises(DataError, match=r"process \d+ on .* is writing it"):  # as a running train
        train_case(toy_case(), truth_file, out, progress=False)
    assert not out.exists() and not checkpoint_path(out).exists()


def test_resume_after_the_run_finished_does_nothing_unless_the_case_or_data_changed(tmp_path, truth_file,
                                                                                    monkeypatch, caplog):
    """The same ``train --resume`` line again after it finished: the closure is this case's, from this
    data -- nothing to resume, the file untouched, the result its metadata records. A changed case
    trains afresh, as without a checkpoint."""
    out = tmp_path / "closure.pt"
    _, first = train_case(toy_case(), truth_file, out, progress=False)
    saved = out.read_bytes()
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda *a, **k: pytest.fail("trained again"))
    _, again = train_case(toy_case(), truth_file, out, resume=True, progress=False)
    assert out.read_bytes() == saved and "nothing to resume" in caplog.text
    assert (again.epochs_run, again.best_epoch, again.best_val_loss, again.final) == \
        (first.epochs_run, first.best_epoch, first.best_val_loss, first.final)
    assert [record["epoch"] for record in again.history] == [record["epoch"] for record in first.history]
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        train_case(toy_case({"seed": 4}), truth_file, out, resume=True, progress=False)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, truth_file, monkeypatch):
    from hybridnde.config import ConfigError

    out = tmp_path / "closure.pt"
    original_epoch = trainer_module.Trainer._epoch
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(2))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth_file, out, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original_epoch)
    # the refusal names the key that changed (it said "another configuration or data file")
    with pytest.raises(ConfigError, match=r"cannot resume, changed since the checkpoint: training.learning_rate \(0.003 -> 0.02\);"):
        train_case(toy_case({"learning_rate": 2e-2}), truth_file, out, resume=True, progress=False)
    # a checkpoint without an identity (older files) still meets the fingerprint check
    state = torch.load(checkpoint_path(out), weights_only=True)
    del state["identity"]
    torch.save(state, checkpoint_path(out))
    with pytest.raises(ConfigError, match="another configuration"):
        train_case(toy_case({"learning_rate": 2e-2}), truth_file, out, resume=True, progress=False)


def test_run_only_keys_may_change_on_resume_and_give_the_same_closure(tmp_path, truth_file, monkeypatch):
    """checkpoint_every and fd_warn_threshold do not change the closure: a resume may change them (it
    was refused naming them), and the closure's config_checksum leaves them out -- equal, for cases at
    their defaults, to the full checksum recorded before."""
    from hybridnde.config import load_case
    from hybridnde.training import TRAINING_SECTIONS, training_checksum

    out, straight = tmp_path / "closure.pt", tmp_path / "straight.pt"
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth_file, out, progress=False)
    monkeypatch.undo()
    _, result = train_case(toy_case({"checkpoint_every": 3, "fd_warn_threshold": 0.5}), truth_file, out,
                           resume=True, progress=False)
    assert result.resumed_from == 2
    # a checkpoint as earlier versions fingerprinted it (the full [training] table) resumes the same case
    def interrupted(out: Path) -> dict:
        """The checkpoint of a training stopped in its third epoch."""
        monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
        with pytest.raises(KeyboardInterrupt):
            train_case(toy_case(), truth_file, out, progress=False)
        monkeypatch.undo()
        return torch.load(checkpoint_path(out), weights_only=True)

    legacy_out = tmp_path / "legacy.pt"
    state = interrupted(legacy_out)
    legacy = hashlib.sha256(f"{toy_case().checksum(TRAINING_SECTIONS)}:{state['identity']['data_checksum']}"
                            .encode()).hexdigest()
    assert state["fingerprint"] != legacy  # checkpoint_every = 2 is not the default: the two differ
    torch.save({**state, "fingerprint": legacy}, checkpoint_path(legacy_out))
    assert train_case(toy_case(), truth_file, legacy_out, resume=True, progress=False)[1].resumed_from == 2
    # ... and one that fingerprinted the data file's bytes, not its data (before data checksums)
    from hybridnde.data import file_checksum

    bytes_out = tmp_path / "bytes.pt"
    state = interrupted(bytes_out)
    old = file_checksum(truth_file)
    assert state["identity"]["data_checksum"] != old
    torch.save({**state, "identity": {**state["identity"], "data_checksum": old},
                "fingerprint": hashlib.sha256(f"{training_checksum(toy_case())}:{old}".encode()).hexdigest()},
               checkpoint_path(bytes_out))
    assert train_case(toy_case(), truth_file, bytes_out, resume=True, progress=False)[1].resumed_from == 2
    train_case(toy_case(), truth_file, straight, progress=False)
    (_, payload_a), (_, payload_b) = load_closure(straight), load_closure(out)
    assert payload_a["checksum"] == payload_b["checksum"]
    assert payload_a["metadata"]["config_checksum"] == payload_b["metadata"]["config_checksum"]
    assert training_checksum(toy_case({"learning_rate": 2e-2})) != training_checksum(toy_case())
    ks = load_case(Path(__file__).resolve().parent.parent / "cases" / "ks_l22.toml")
    assert training_checksum(ks) == ks.checksum(TRAINING_SECTIONS)


def test_early_stopping_keeps_the_best_weights(tmp_path):
    torch.manual_seed(0)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    trajectories = torch.randn(3, 12, 2, dtype=torch.float64)
    windows = WindowSet.build(trajectories, 3)
    scores = iter([5.0, 3.0, 1.0, 2.0, 4.0, 6.0, 7.0, 8.0])
    snapshots = []

    def validation(model, solver, windows, sample_interval):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    config = TrainingConfig(epochs=8, batch_size=8, patience=3, checkpoint_every=0, lr_schedule="constant")
    trainer = Trainer(model, solver, [RolloutLoss(steps=2)], validation, config, log_file=tmp_path / "log.jsonl")
    result = trainer.fit(windows, windows, 0.1)
    assert result.stopped_early and result.epochs_run == 6 and result.best_epoch == 3
    assert result.best_val_loss == 1.0
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[2][name])
    assert [record["val_loss"] for record in read_log(tmp_path / "log.jsonl")] == [5.0, 3.0, 1.0, 2.0, 4.0, 6.0]


def test_a_tie_in_validation_is_not_an_improvement():
    """Equal scores keep the first best epoch and run out the patience (a tie counted as better moved the
    best epoch on and reset it)."""
    torch.manual_seed(0)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    windows = WindowSet.build(torch.randn(3, 12, 2, dtype=torch.float64), 3)
    config = TrainingConfig(epochs=6, batch_size=8, patience=2, checkpoint_every=0, lr_schedule="constant")
    result = Trainer(model, solver, [RolloutLoss(steps=2)], lambda *_: 1.0, config).fit(windows, windows, 0.1)
    assert result.best_epoch == 1 and result.stopped_early and result.epochs_run == 3


def test_early_stopping_waits_for_a_terms_earliest_stop():
    """Homotopy's terms must reach their lam = 0 stage before patience may end training: the same
    scores that stop the run above after 6 epochs run to 7 when a term asks for 7."""
    from hybridnde.training.homotopy import HomotopyLoss, HomotopySchedule

    torch.manual_seed(0)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    windows = WindowSet.build(torch.randn(3, 12, 2, dtype=torch.float64), 3)
    scores = iter([5.0, 3.0, 1.0, 2.0, 4.0, 6.0, 7.0, 8.0])
    term = RolloutLoss(steps=2)
    term.earliest_stop = 7
    config = TrainingConfig(epochs=8, batch_size=8, patience=3, checkpoint_every=0, lr_schedule="constant")
    result = Trainer(model, solver, [term], lambda *_: next(scores), config).fit(windows, windows, 0.1)
    assert result.stopped_early and result.epochs_run == 7 and result.best_epoch == 3
    homotopy = HomotopyLoss(steps=2, schedule=HomotopySchedule(n_stages=5, epochs_per_stage=4), coupling=6.0)
    assert homotopy.earliest_stop == 17  # the first epoch of the last stage (lam = 0), 1-based
    assert HomotopySchedule(n_stages=5, epochs_per_stage=4)(homotopy.earliest_stop - 1) == 0.0


def test_learning_rate_schedules():
    cosine = TrainingConfig(epochs=11, learning_rate=1e-2, min_learning_rate=1e-4, lr_schedule="cosine")
    rates = [learning_rate_at(epoch, cosine) for epoch in range(11)]
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-4)
    assert rates[5] == pytest.approx(0.5 * (1e-2 + 1e-4)) and all(a > b for a, b in zip(rates, rates[1:]))
    step = TrainingConfig(epochs=10, learning_rate=1.0, lr_schedule="step", lr_step_epochs=3, lr_gamma=0.5)
    assert [learning_rate_at(epoch, step) for epoch in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert learning_rate_at(9, TrainingConfig(lr_schedule="constant", learning_rate=0.3)) == 0.3


@pytest.mark.parametrize("integration", ["odeint", "odeint_adjoint"])
def test_adaptive_integration_logs_function_evaluations(tmp_path, truth_file, integration):
    case = toy_case({"epochs": 2, "integration": integration, "checkpoint_every": 0}, time={"rtol": 1e-5, "atol": 1e-7})
    out = tmp_path / "closure.pt"
    train_case(case, truth_file, out, progress=False)
    for record in read_log(log_path(out)):
        assert record["nfe_forward"] > 0
        # plain odeint backpropagates through its stored steps; the adjoint integrates backwards
        assert (record["nfe_backward"] > 0) == (integration == "odeint_adjoint")


def test_float32_training_runs(tmp_path, truth_file):
    case = toy_case({"epochs": 2, "checkpoint_every": 0, "regularizer": "jvp"}, compute={"dtype": "float32"})
    model, result = train_case(case, truth_file, tmp_path / "closure.pt", progress=False)
    assert next(model.parameters()).dtype == torch.float32
    assert all(math.isfinite(record["loss"]) for record in result.history)
    # it computes what float64 does, to float32's precision: the same seed gives the same weights (the
    # fd regularizer draws no probes, whose float32 and float64 draws differ)
    runs = {}
    for dtype in ("float32", "float64"):
        case = toy_case({"epochs": 2, "checkpoint_every": 0, "regularizer": "fd"}, compute={"dtype": dtype})
        runs[dtype] = train_case(case, truth_file, tmp_path / f"closure_{dtype}.pt", progress=False)[1].history
    for single, double in zip(runs["float32"], runs["float64"], strict=True):
        assert single["loss"] == pytest.approx(double["loss"], rel=1e-3)


def test_coarse_sampling_warns_for_the_finite_difference_regularizer(tmp_path, caplog):
    coarse = toy_case({"epochs": 1, "regularizer": "fd", "checkpoint_every": 0},
                      time={"dt": 0.01, "n_steps": 1600, "save_every": 40})
    path = tmp_path / "coarse.nc"
    write_netcdf(simulate_case(coarse, progress=False), path)
    with caplog.at_level(logging.WARNING, logger="hybridnde.training"):
        train_case(coarse, path, tmp_path / "closure.pt", progress=False)
    assert "truncation error" in caplog.text


def test_regularization_experiment_runs_end_to_end():
    """benchmarks/experiments/jacobian_regularization.py --tiny: trains none/jvp/fd closures through
    train_case, scores them and prints its table (no figure is asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "experiments" / "jacobian_regularization.py"
    result = subprocess.run([sys.executable, str(script), "--tiny", "--cases", "two_body", "--seeds", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert sorted({row["regularizer"] for row in rows}) == ["fd", "jvp", "none"] and len(rows) == 7
    for row in rows:
        assert 0 <= row["bounded"] <= 1 and row["vpt_median"] >= 0 and row["jac"] > 0
    assert "VPT median" in result.stdout


class ForcedOscillator(ClosureOnly):
    """x'' = -x + cos(2t), the forcing known; ``u = (x, v)``: a host whose field depends on t."""

    autonomous = False

    def __init__(self, **options):
        super().__init__(state_shape=(2,), dt=0.01, **options)

    def known_rhs(self, t, u):
        return torch.stack([torch.zeros_like(u[:, 0]), torch.cos(2 * t) + torch.zeros_like(u[:, 0])], dim=-1)


def test_windows_of_a_non_autonomous_host_start_at_their_own_times(caplog):
    """A forced host sees the forcing's phase at each window's start: with the exact missing term
    (dx/dt = v, dv/dt = -x) as the closure the rollout loss is ~0 only when every window is integrated
    from its own start time (it was integrated from t = 0: 4.5e-3 for a forced Duffing oscillator).
    Terms that evaluate fields at t = 0 only are refused for such a host, before any work."""
    from hybridnde.regularizers import ProbeSampler
    from hybridnde.training.assembly import RolloutValidation
    from hybridnde.training.terms import AdaptiveRolloutLoss, Batch, DirectionalDerivativeTerm

    exact = lambda t, u: torch.stack([u[:, 1], -u[:, 0]], dim=-1)
    truth = ForcedOscillator(closure=exact)
    u0 = torch.tensor([[1.0, 0.0], [0.0, 0.5], [-0.3, 0.2]], dtype=torch.float64)
    trajectories = truth.rollout(u0, 400, save_every=10, t0=2.0)  # (3, 41, 2), samples 0.1 apart from t = 2
    windows = WindowSet.build(trajectories, 4, start_time=2.0)
    batch = Batch(windows.gather(), 0.1, windows.starts, start_time=2.0)
    loss = RolloutLoss(steps=3, substeps=10)
    assert float(loss(None, truth, batch, 0)["rollout"].value) < 1e-28
    adaptive = AdaptiveRolloutLoss(steps=3, rtol=1e-10, atol=1e-12)  # training.integration = "odeint" as well
    assert float(adaptive(None, truth, batch, 0)["rollout"].value) < 1e-14
    from_zero = loss.predict(truth, batch.windows, 0.1)  # every window from t = 0: the old behaviour
    assert float((from_zero[:, 1:] - batch.windows[:, 1:]).pow(2).mean()) > 1e-4
    validation = RolloutValidation(loss, steps=3, batch_size=7)
    assert validation(None, truth, windows, 0.1) < 1e-28
    # an autonomous set-up keeps the one-batch path: the same numbers as from t = 0
    free = ClosureOnly(state_shape=(2,), dt=0.01, closure=exact)
    torch.testing.assert_close(loss.predict(free, batch.windows, 0.1, start_times=batch.window_times()),
                               loss.predict(free, batch.windows, 0.1), rtol=0, atol=0)

    model = torch.nn.Linear(2, 2, dtype=torch.float64)
    host = ForcedOscillator(closure=lambda t, u: model(u))
    config = TrainingConfig()
    with pytest.raises(ValueError, match="not the closure in the solver's hook"):
        Trainer(model, host, [loss], validation, config)
    host = ForcedOscillator(closure=model)
    probes = ProbeSampler(count=2)
    jvp_term = DirectionalDerivativeTerm(weight=1.0, reference_jvp=truth.jvp, known_jvp=host.jvp, probes=probes)
    with pytest.raises(ValueError, match="'jvp' term evaluates the field at t = 0"):
        Trainer(model, host, [loss, jvp_term], validation, config)
    Trainer(model, host, [loss], validation, config)  # the rollout loss alone is fine
    with pytest.raises(ValueError, match="the training windows hold 4 samples, the rollout loss compares 6"):
        Trainer(model, host, [RolloutLoss(steps=5)], validation, config).fit(windows, windows, 0.1)
    # a TrainingConfig built in Python meets the checks a case file's does; one naming a regularizer no
    # term provides is warned about (the Trainer takes the terms it is given)
    from hybridnde.config import ConfigError

    with pytest.raises(ConfigError, match="training.batch_size = 0 must be positive"):
        Trainer(model, host, [loss], validation, TrainingConfig(batch_size=0))
    with pytest.raises(ConfigError, match="training.regularizer = 'jvpp' is not one of"):
        Trainer(model, host, [loss], validation, TrainingConfig(regularizer="jvpp"))
    free_model = torch.nn.Linear(2, 2, dtype=torch.float64)
    free = ClosureOnly(state_shape=(2,), dt=0.01, closure=free_model)
    Trainer(free_model, free, [loss], validation, TrainingConfig(regularizer="jvp"))
    assert "config.regularizer = 'jvp', but no term of that name was given (terms: rollout)" in caplog.text
    # a host class that declares nothing (solvers.base's default) is taken as autonomous, with a warning

    class Undeclared(ExplicitSolver):
        state_shape = (2,)

        def known_rhs(self, t, u):
            return torch.zeros_like(u)

    from hybridnde.training.terms import time_matters

    assert not time_matters(Undeclared(dt=0.1, closure=free_model))
    assert "Undeclared does not declare `autonomous`" in caplog.text
    assert time_matters(ForcedOscillator(closure=free_model)) and not time_matters(free)


# -- the optimiser's settings take effect (a mutation audit found them untested) ----------------------------------------
def _tiny_trainer(**config):
    torch.manual_seed(0)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    windows = WindowSet.build(torch.randn(3, 12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), 3)
    settings = TrainingConfig(batch_size=8, checkpoint_every=0, patience=0, **config)
    return Trainer(model, solver, [RolloutLoss(steps=2)], lambda *_: 1.0, settings), windows


def test_the_optimiser_steps_at_the_scheduled_learning_rate():
    trainer, windows = _tiny_trainer(epochs=5, lr_schedule="cosine", learning_rate=1e-2, min_learning_rate=1e-4)
    seen, step = [], trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (seen.append(trainer.optimizer.param_groups[0]["lr"]), step(*a, **k))[1]
    trainer.fit(windows, windows, 0.1)
    assert sorted(set(seen), reverse=True) == pytest.approx([learning_rate_at(e, trainer.config) for e in range(5)])


def test_gradients_are_clipped_to_the_configured_norm():
    trainer, windows = _tiny_trainer(epochs=2, gradient_clip=1e-3, lr_schedule="constant")
    norms, step = [], trainer.optimizer.step

    def spy(*args, **kwargs):
        norms.append(float(torch.sqrt(sum(p.grad.pow(2).sum() for p in trainer.parameters if p.grad is not None))))
        return step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.fit(windows, windows, 0.1)
    assert norms and max(norms) <= 1e-3 * (1 + 1e-6)


def test_a_warmup_ramp_starts_at_one_step_of_its_weight():
    """docs/training.md: epoch 0 gets weight / warmup, full weight from epoch warmup - 1 on."""
    from hybridnde.training import ramp

    assert [ramp(2.0, epoch, 4) for epoch in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_the_trainer_names_non_finite_weights_and_empty_window_sets_before_training():
    """NaN weights were blamed on the learning rate after the first epoch; a window set left empty by
    NaN data said only "no training windows"."""
    trainer, windows = _tiny_trainer(epochs=1)
    empty = WindowSet.build(torch.full((2, 12, 2), float("nan"), dtype=torch.float64), 3)
    with pytest.raises(ValueError, match="no validation windows.*non-finite value"):
        trainer.fit(windows, empty, 0.1)
    model = trainer.model
    with torch.no_grad():
        model.net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weights net.0.weight hold NaN or inf before training"):
        Trainer(model, trainer.solver, trainer.terms, lambda *_: 1.0, trainer.config)


def test_an_epoch_of_non_finite_batches_names_the_terms_that_were_not_finite():
    """A condition-number penalty on a closure whose Jacobian is zero is inf in every batch; the error
    said only "lower the learning rate", now it names the term."""
    from hybridnde.regularizers.jacobian_norms import ConditionNumber
    from hybridnde.training.jacobian_terms import JacobianPenaltyTerm

    trainer, windows = _tiny_trainer(epochs=1)
    with torch.no_grad():
        trainer.model.net[-1].weight.zero_()  # the closure is constant: J = 0
    trainer.terms.append(JacobianPenaltyTerm(ConditionNumber(method="exact"), weight=1.0, field="closure"))
    with pytest.raises(FloatingPointError, match=r"non-finite terms: condition\);.*condition-number penalty is"):
        trainer.fit(windows, windows, 0.1)
    # finite terms whose weighted sum overflows: said so, and no word of a penalty that is not there
    class Overweighted(RolloutLoss):  # a finite loss under a weight that overflows the sum
        def __call__(self, *arguments):
            return {f"{name}_{copy}": (value, 1e308 / float(value.detach())) for name, (value, _)
                    in super().__call__(*arguments).items() for copy in range(2)}  # 1e308 each: 2e308 = inf

    trainer, windows = _tiny_trainer(epochs=1)
    trainer.terms = [Overweighted(steps=2)]
    with pytest.raises(FloatingPointError, match=r"each term finite, their weighted sum overflowed\); lower [^(]*$"):
        trainer.fit(windows, windows, 0.1)


def test_an_adaptive_solve_whose_step_underflows_is_a_non_finite_batch():
    """du/dt = u^2 from 1 blows up at t = 1: torchdiffeq's step underflows with a bare AssertionError,
    which ended training with a traceback. It is a FloatingPointError, a training batch it hits is
    skipped (the term named) and a validation batch scores inf."""
    from hybridnde.training.assembly import RolloutValidation
    from solvers.integrators import odeint_adaptive

    u0 = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"dopri5 step size underflowed after \d+ evaluations"):
        odeint_adaptive(lambda t, u: u * u, u0, [0.0, 2.0])
    u, _ = odeint_adaptive(lambda t, u: u * u, u0, [0.0, 0.5])  # before the blow-up: 1 / (1 - t)
    assert abs(float(u[0, -1, 0]) - 2.0) < 1e-6

    class Underflowing(RolloutLoss):
        def __call__(self, *arguments):
            raise FloatingPointError("the adaptive dopri5 step size underflowed")

        def predict(self, *arguments, **keywords):
            raise FloatingPointError("the adaptive dopri5 step size underflowed")

    trainer, windows = _tiny_trainer(epochs=1)
    trainer.terms = [Underflowing(steps=2)]
    with pytest.raises(FloatingPointError, match=r"every batch gave a non-finite loss \(non-finite terms: rollout\)"):
        trainer.fit(windows, windows, 0.1)
    validation = RolloutValidation(Underflowing(steps=2), steps=2, batch_size=8)
    assert validation(trainer.model, trainer.solver, windows, 0.1) == math.inf


def _failing_in_backward(message: str, *, failing_calls: float = 1) -> RolloutLoss:
    """A rollout loss whose first ``failing_calls`` backward() calls raise ``AssertionError(message)``
    (as torchdiffeq's adjoint solve does when its step underflows), the others pass."""
    calls = []

    class Failing(torch.autograd.Function):
        @staticmethod
        def forward(context, value):
            return value.clone()

        @staticmethod
        def backward(context, gradient):
            calls.append(1)
            if len(calls) <= failing_calls:
                raise AssertionError(message)
            return gradient

    class Loss(RolloutLoss):
        def __call__(self, *arguments):
            return {name: (Failing.apply(value), weight)
                    for name, (value, weight) in super().__call__(*arguments).items()}

    return Loss(steps=2)


def test_an_adjoint_solve_whose_step_underflows_in_backward_is_a_non_finite_batch():
    """With odeint_adjoint the backward solve runs inside backward(): close to the blow-up of
    du/dt = k u^2 the forward solve succeeds and the adjoint's step underflows (a bare AssertionError,
    a traceback that ended training)."""
    from solvers.integrators import is_step_underflow, odeint_adaptive

    rate = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    u, _ = odeint_adaptive(lambda t, u: rate * u * u, torch.ones(1, 1, dtype=torch.float64), [0.0, 0.99999999],
                           adjoint=True, adjoint_params=[rate])
    with pytest.raises(AssertionError) as caught:
        u[:, -1].sum().backward()
    assert is_step_underflow(caught.value)

    trainer, windows = _tiny_trainer(epochs=1)
    trainer.terms = [_failing_in_backward("underflow in dt 0.0", failing_calls=math.inf)]
    before = [parameter.detach().clone() for parameter in trainer.model.parameters()]
    with pytest.raises(FloatingPointError, match=r"non-finite terms: adjoint backward"):
        trainer.fit(windows, windows, 0.1)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # no step taken


def test_a_run_failing_after_a_checkpoint_keeps_its_partial_log_for_the_resume(tmp_path, truth_file, monkeypatch):
    """A failed run's partial log goes only when no checkpoint can resume it; here one can, and the
    resumed log is the uninterrupted run's."""
    case = toy_case()
    straight = tmp_path / "straight" / "closure.pt"
    train_case(case, truth_file, straight, progress=False)
    out, original = tmp_path / "failed" / "closure.pt", trainer_module.Trainer._epoch

    def fail_in_fourth_epoch(self, windows, sample_interval, epoch):
        if epoch == 3:
            raise RuntimeError("the disk went away")
        return original(self, windows, sample_interval, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "_epoch", fail_in_fourth_epoch)
    with pytest.raises(RuntimeError, match="the disk went away"):
        train_case(case, truth_file, out, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original)
    assert checkpoint_path(out).is_file() and len(read_log(partial_log_path(out))) == 3
    assert train_case(case, truth_file, out, resume=True, progress=False)[1].resumed_from == 2
    assert [r["epoch"] for r in read_log(log_path(out))] == [r["epoch"] for r in read_log(log_path(straight))]


def test_resume_finds_a_finished_closure_recorded_with_other_run_only_keys(tmp_path, truth_file, monkeypatch, caplog):
    """`train --resume` on a closure finished with another checkpoint_every (a run-only key) and the
    full-table checksum earlier versions recorded: nothing to resume, as `hybridnde run` reuses it; a
    checksum its stored case does not give is not taken on trust."""
    from hybridnde.closure_file import save_closure
    from hybridnde.training import TRAINING_SECTIONS
    from hybridnde.training.build import trained_for

    out = tmp_path / "closure.pt"
    train_case(toy_case(), truth_file, out, progress=False)
    model, payload = load_closure(out)
    before = toy_case({"checkpoint_every": 7})
    save_closure(out, model, case_toml=before.to_toml(),
                 metadata={**payload["metadata"], "config_checksum": before.checksum(TRAINING_SECTIONS)})
    saved = out.read_bytes()
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda *a, **k: pytest.fail("trained again"))
    caplog.set_level("INFO")
    train_case(toy_case(), truth_file, out, resume=True, progress=False)
    assert out.read_bytes() == saved and "nothing to resume" in caplog.text
    assert not trained_for(toy_case(), "0" * 64, toy_case().to_toml())


def test_without_a_terminal_training_logs_its_progress_and_its_last_checkpoint(tmp_path, truth_file, monkeypatch,
                                                                              caplog):
    """A batch job's log said nothing for the whole of a long training (rollouts log a line a minute):
    now a line every PROGRESS_LOG_SECONDS with the epoch, the losses and the last checkpoint, counted on
    from the checkpoint when resuming; with --no-progress (progress=False) none."""
    monkeypatch.setattr(trainer_module, "PROGRESS_LOG_SECONDS", 0.0)
    import hybridnde.progress

    monkeypatch.setattr(hybridnde.progress, "progress_enabled", lambda enabled: False)  # stderr is not a terminal
    caplog.set_level("INFO", logger="hybridnde.progress")
    out, original = tmp_path / "closure.pt", trainer_module.Trainer._epoch
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth_file, out)
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("train: ")]
    assert [line.split(" (")[1].split(")")[0] for line in lines] == ["1 of 6 epochs", "2 of 6 epochs", "3 of 6 epochs"]
    assert "checkpoint after epoch" not in lines[0] and lines[2].endswith(", checkpoint after epoch 2")
    assert "; loss " in lines[0] and ", validation " in lines[0] and "(best " in lines[0]
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original)
    caplog.clear()  # (resumed without further checkpoints: the one it started from is the last)
    train_case(toy_case({"checkpoint_every": 0}), truth_file, out, resume=True)
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("train: ")]
    assert [line.split(" (")[1].split(")")[0] for line in lines] == ["3 of 6 epochs", "4 of 6 epochs", "5 of 6 epochs",
                                                                     "6 of 6 epochs"]
    assert all(line.endswith(", checkpoint after epoch 2") for line in lines)
    caplog.clear()
    train_case(toy_case(), truth_file, tmp_path / "quiet.pt", progress=False)
    assert not any(record.getMessage().startswith("train: ") for record in caplog.records)


def test_a_resumed_trainings_wall_time_counts_the_earlier_runs_epochs(tmp_path, truth_file, monkeypatch):
    """closure.pt's wall_seconds (report.md's and compare.md's training time) was the last run's only."""
    import time

    out, original = tmp_path / "closure.pt", trainer_module.Trainer._epoch

    def slow_then_interrupted(self, windows, sample_interval, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        time.sleep(0.3)
        return original(self, windows, sample_interval, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "_epoch", slow_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth_file, out, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original)
    started = time.perf_counter()
    train_case(toy_case(), truth_file, out, resume=True, progress=False)
    this_run = time.perf_counter() - started
    epochs = [record["seconds"] for record in read_log(log_path(out))]
    wall = load_closure(out)[1]["metadata"]["wall_seconds"]
    assert sum(epochs[:2]) >= 0.6 and sum(epochs) <= wall <= this_run + sum(epochs[:2])


def test_a_ctrl_c_while_the_closure_is_saved_waits_for_its_log_and_checkpoint(tmp_path, truth_file, monkeypatch):
    """Interrupted between writing closure.pt and renaming its log, a run left the finished closure
    beside a .partial log and a checkpoint. The signal is held: all three are done, then it is raised."""
    import os
    import signal

    from hybridnde.training import build as build_module

    out, save = tmp_path / "closure.pt", build_module.save_closure

    def save_then_interrupted(*args, **kwargs):
        save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(build_module, "save_closure", save_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth_file, out, progress=False)
    assert out.is_file() and log_path(out).is_file()
    assert not partial_log_path(out).exists() and not checkpoint_path(out).exists()


def test_a_resume_is_not_told_that_it_starts_afresh(tmp_path, truth_file, monkeypatch, caplog):
    out, original = tmp_path / "closure.pt", trainer_module.Trainer._epoch
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth_file, out, progress=False)
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", original)
    caplog.clear()
    assert train_case(toy_case(), truth_file, out, resume=True, progress=False)[1].resumed_from == 2
    assert "starts afresh" not in caplog.text


def test_only_the_step_underflow_is_a_non_finite_batch_and_it_is_counted():
    """Only torchdiffeq's "underflow in dt" assertion is a blow-up: any other AssertionError (a bug) must
    surface as itself, not as a skipped batch or an "underflowed" message; a skipped batch is counted."""
    from solvers.integrators import is_step_underflow, odeint_adaptive

    assert is_step_underflow(AssertionError("underflow in dt 1e-300"))
    assert not is_step_underflow(AssertionError("a bug")) and not is_step_underflow(RuntimeError("underflow in dt"))

    def broken(t, u):
        raise AssertionError("a bug in the vector field")

    with pytest.raises(AssertionError, match="a bug in the vector field"):
        odeint_adaptive(broken, torch.ones(1, 1, dtype=torch.float64), [0.0, 1.0])
    trainer, windows = _tiny_trainer(epochs=1)
    trainer.terms = [_failing_in_backward("a bug in backward")]
    with pytest.raises(AssertionError, match="a bug in backward"):
        trainer.fit(windows, windows, 0.1)
    trainer, windows = _tiny_trainer(epochs=1)
    trainer.terms = [_failing_in_backward("underflow in dt 0.0")]
    assert trainer.fit(windows, windows, 0.1).history[0]["skipped_batches"] == 1


def test_a_damaged_checkpoint_is_named_in_a_few_words(tmp_path):
    """torch's paragraph for a foreign pickle ("Re-running torch.load with weights_only set to False will
    likely succeed...") came with the message: the fix is deleting the file, not trusting it."""
    from hybridnde.netcdf_stream import checkpoint_path as rollout_checkpoint_path
    from hybridnde.netcdf_stream import partial_path, read_checkpoint
    from hybridnde.training.checkpoint import load_checkpoint

    foreign = tmp_path / "closure.checkpoint.pt"
    torch.save({"state": SimpleNamespace(epoch=3)}, foreign)  # not loadable with weights_only
    with pytest.raises(DataError) as caught:
        load_checkpoint(foreign, fingerprint="x")
    assert str(caught.value) == \
        f"{foreign}: not a readable training checkpoint (UnpicklingError); delete it to start afresh"
    out = tmp_path / "r.nc"
    partial_path(out).write_bytes(b"")
    rollout_checkpoint_path(out).write_bytes(foreign.read_bytes())
    with pytest.raises(DataError, match=r"not a readable rollout checkpoint \(UnpicklingError\); delete it") as caught:
        read_checkpoint(out)
    assert "weights_only" not in str(caught.value)


def test_a_training_whose_validation_is_never_finite_saves_nothing():
    """nan < inf is False: no epoch became the best, the last weights stayed, and train_case saved them
    as "best validation loss inf (epoch -1)"."""
    trainer, windows = _tiny_trainer(epochs=3)
    trainer.validation = lambda *_: float("nan")
    with pytest.raises(FloatingPointError, match="no epoch of 3 had a finite validation loss"):
        trainer.fit(windows, windows, 0.1)
    trainer, windows = _tiny_trainer(epochs=6)
    trainer.config = dataclasses.replace(trainer.config, patience=2)  # stopped early by the non-finite losses
    trainer.validation = lambda *_: float("nan")
    with pytest.raises(FloatingPointError, match="no epoch of 2 had a finite validation loss"):
        trainer.fit(windows, windows, 0.1)


def test_the_training_log_is_strict_json_with_null_for_a_blown_up_validation(tmp_path):
    """Python's json wrote NaN/Infinity, which jq and JavaScript refuse: the log has null there, the
    in-memory history keeps the float, and the epoch that blew up is not the kept one."""
    trainer, windows = _tiny_trainer(epochs=3)
    losses = iter([2.0, math.inf, 1.0])
    trainer.validation = lambda *_: next(losses)
    trainer.log_file = tmp_path / "closure.log.jsonl"

    def strict(constant):
        raise ValueError(f"not strict JSON: {constant}")

    result = trainer.fit(windows, windows, 0.1)
    records = [json.loads(line, parse_constant=strict) for line in trainer.log_file.read_text().splitlines()]
    assert [record["val_loss"] for record in records] == [2.0, None, 1.0]
    assert result.history[1]["val_loss"] == math.inf and result.best_epoch == 3


def test_the_names_training_build_exported_before_its_split_still_import():
    from hybridnde.training import assembly
    from hybridnde.training import build as build_module

    for name in ("build_terms", "reference_solver", "RolloutValidation", "window_lengths", "check_training_config",
                 "homotopy_schedule", "jacobian_penalty_field"):
        assert getattr(build_module, name) is getattr(assembly, name)


def _toy_case(**training):
    from hybridnde.config import parse_case

    return parse_case({"case": {"name": "toy"}, "system": {"name": "two_body"}, "time": {"dt": 0.02, "n_steps": 20},
                       "initial_condition": {"members": 3}, "hybrid": {"setup": "neural_ode"}, "model": {"width": 8},
                       "training": {"epochs": 1, "batch_size": 16, "rollout_steps": 2, "lr_schedule": "constant",
                                    **training},
                       "compute": {"device": "cpu"}})


def _data(checksum, also=()):
    return SimpleNamespace(checksum=checksum, made_from=lambda recorded: recorded in (checksum, *also))


def test_a_refused_resume_names_the_data_only_when_they_changed():
    from hybridnde.training.build import _changes_since

    case = _toy_case()
    other = _toy_case(learning_rate=0.5)
    changed = _changes_since({"case_toml": case.to_toml(), "data_checksum": "b" * 64}, case, _data("a" * 64))
    assert changed and changed[0].startswith("the training data (SHA-256 bbbbbbbbbbbb..., now aaaaaaaaaaaa...)")
    # a checkpoint that recorded the file's bytes (made_from accepts them): only the case key is named
    changed = _changes_since({"case_toml": case.to_toml(), "data_checksum": "f" * 64}, other,
                             _data("a" * 64, also=("f" * 64,)))
    assert changed and not any("training data" in item for item in changed)


def test_a_finished_closure_of_other_data_is_trained_again(tmp_path):
    from hybridnde.io import write_netcdf
    from hybridnde.simulate import simulate_case
    from hybridnde.training import train_case
    from hybridnde.training.build import _finished_closure

    case, truth, out = _toy_case(), tmp_path / "truth.nc", tmp_path / "closure.pt"
    write_netcdf(simulate_case(case, progress=False), truth)
    train_case(case, truth, out, progress=False)
    kwargs = dict(device=torch.device("cpu"), dtype=torch.float64)
    assert _finished_closure(case, out, SimpleNamespace(made_from=lambda recorded: True), **kwargs) is not None
    assert _finished_closure(case, out, SimpleNamespace(made_from=lambda recorded: False), **kwargs) is None


def stopped_in_the_third_epoch(tmp_path, truth_file, monkeypatch) -> Path:
    """``closure.pt`` of ``toy_case`` stopped by a Ctrl-C in its third epoch (checkpoint after the second)."""
    out, original = tmp_path / "closure.pt", trainer_module.Trainer._epoch
    with monkeypatch.context() as patch:
        patch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
        with pytest.raises(KeyboardInterrupt):
            train_case(toy_case(), truth_file, out, progress=False)
    assert trainer_module.Trainer._epoch is original
    return out


def test_a_resumed_trainings_bar_starts_at_the_checkpoints_epoch_of_all_epochs(tmp_path, truth_file, monkeypatch):
    """A train bar resumed after epoch 12 of 20 read 0/8."""
    out = stopped_in_the_third_epoch(tmp_path, truth_file, monkeypatch)
    bars, real = [], trainer_module.progress_bar
    monkeypatch.setattr(trainer_module, "progress_bar", lambda *a, **k: bars.append(real(*a, **k)) or bars[-1])
    train_case(toy_case(), truth_file, out, resume=True, progress=False)
    assert [(bar.total, bar.n) for bar in bars] == [(6, 2)]  # starts at 2/6, not 0/4 (disabled: n stays initial)


def test_the_progress_line_names_the_best_validation_loss_so_far(tmp_path, truth_file, monkeypatch, caplog):
    """After a worse epoch the line still names the best loss so far and its epoch."""
    import hybridnde.progress

    monkeypatch.setattr(trainer_module, "PROGRESS_LOG_SECONDS", 0.0)
    monkeypatch.setattr(hybridnde.progress, "progress_enabled", lambda enabled: False)  # no terminal
    original = trainer_module.Trainer._epoch

    def spoiled_in_the_second_epoch(self, windows, sample_interval, epoch):
        result = original(self, windows, sample_interval, epoch)
        if epoch == 1:  # a worse closure: its validation loss is not the best
            with torch.no_grad():
                for parameter in self.model.parameters():
                    parameter.mul_(50.0)
        return result

    monkeypatch.setattr(trainer_module.Trainer, "_epoch", spoiled_in_the_second_epoch)
    caplog.set_level("INFO", logger="hybridnde.progress")
    out = tmp_path / "closure.pt"
    train_case(toy_case({"epochs": 3, "patience": 0}), truth_file, out)
    history = read_log(log_path(out))
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("train: ")]
    assert len(lines) == 3 and history[1]["val_loss"] > history[0]["val_loss"]
    for count, line in enumerate(lines, start=1):
        best = min(history[:count], key=lambda record: record["val_loss"])
        assert f"(best {best['val_loss']:.4g}, epoch {best['epoch']})" in line, line


def test_the_epoch_of_an_unreadable_checkpoint_is_not_made_up(tmp_path):
    """An interrupted train names the checkpoint's epoch; a damaged one must not turn the message into
    a traceback (nor into 'after epoch 0')."""
    from hybridnde.training.checkpoint import checkpoint_epoch

    damaged = tmp_path / "closure.checkpoint.pt"
    damaged.write_bytes(b"not a checkpoint")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    assert checkpoint_epoch(damaged) is None and checkpoint_epoch(tmp_path / "other.pt") is None
    assert checkpoint_epoch(tmp_path / "missing.pt") is None


def test_a_resumed_trainings_wall_time_adds_exactly_the_checkpointed_epochs(tmp_path, truth_file, monkeypatch):
    """The earlier run's epochs up to the checkpoint count once each (none of the resumed ones twice)."""
    import hybridnde.training.build as build

    out = stopped_in_the_third_epoch(tmp_path, truth_file, monkeypatch)
    state = torch.load(checkpoint_path(out), weights_only=True)
    assert [record["epoch"] for record in state["history"]] == [1, 2]
    for record, seconds in zip(state["history"], (100.0, 200.0)):  # the earlier run's epochs, as recorded
        record["seconds"] = seconds
    torch.save(state, checkpoint_path(out))
    clock = iter([1000.0, 1010.0])  # this run: 10 s
    monkeypatch.setattr(build, "wallclock", SimpleNamespace(perf_counter=lambda: next(clock)))
    train_case(toy_case(), truth_file, out, resume=True, progress=False)
    assert load_closure(out)[1]["metadata"]["wall_seconds"] == 310.0
