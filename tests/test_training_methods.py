"""The trainer's trajectory-loss methods (vanilla, homotopy, multiple shooting) and Jacobian
penalties, end to end through ``train_case`` on a small noisy Lotka-Volterra case."""
from __future__ import annotations

import json

import pytest
import torch

from hybridnde.config import ConfigError, parse_case
from hybridnde.io import write_netcdf
from hybridnde.simulate import simulate_case
from hybridnde.training import checkpoint_path, log_path, train_case
from hybridnde.training.assembly import homotopy_schedule

TRAINING = {"epochs": 6, "rollout_steps": 20, "validation_rollout_steps": 20, "window_stride": 1000,
            "validation_fraction": 0.0, "batch_size": 1, "learning_rate": 0.01, "lr_schedule": "constant",
            "gradient_clip": 0.0, "integration": "odeint", "homotopy_stages": 3, "checkpoint_every": 0,
            "observation_noise": 0.05, "observation_noise_scale": "mean", "seed": 1}


def lv_case(**training):
    raw = {"case": {"name": "lv"}, "system": {"name": "lotka_volterra"},
           "time": {"dt": 0.01, "n_steps": 300, "save_every": 10, "rtol": 1e-6, "atol": 1e-8},
           "initial_condition": {"distribution": "point", "value": [0.4425, 4.628], "members": 1},
           "hybrid": {"setup": "neural_ode"}, "model": {"width": 16, "depth": 1, "activation": "gelu"},
           "training": {**TRAINING, **training}, "compute": {"device": "cpu"}}
    return parse_case(raw)


@pytest.fixture(scope="module")
def truth_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("truth") / "truth.nc"
    write_netcdf(simulate_case(lv_case(), progress=False), path)
    return path


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_homotopy_logs_its_schedule_and_nfe(tmp_path, truth_file):
    case = lv_case(method="homotopy", coupling=6.0, smoothing=1e-3)
    out = tmp_path / "closure.pt"
    train_case(case, truth_file, out, progress=False)
    history = read_log(log_path(out))
    schedule = homotopy_schedule(case.training)
    assert [record["lam"] for record in history] == [schedule(epoch) for epoch in range(6)]
    assert history[0]["lam"] == 1.0 and history[-1]["lam"] == 0.0
    for record in history:
        assert record["nfe_forward"] > 0 and record["nfe_backward"] == 0  # odeint: backprop, no adjoint solves
        assert record["loss"] == pytest.approx(record["loss/homotopy"])
    # coupled to the data, the first epochs' loss is far below the uncoupled model's error (val_loss)
    assert history[0]["loss/homotopy"] < 0.2 * history[0]["val_loss"]


def test_adjoint_solves_count_backward_evaluations(tmp_path, truth_file):
    out = tmp_path / "closure.pt"
    train_case(lv_case(method="homotopy", integration="odeint_adjoint", epochs=2, homotopy_stages=2), truth_file, out,
               progress=False)
    assert all(record["nfe_backward"] > 0 for record in read_log(log_path(out)))


def test_multiple_shooting_optimises_its_segment_starts_and_saves_them_with_checkpoints(tmp_path, truth_file):
    case = lv_case(method="multiple_shooting", shooting_segments=4, continuity_weight=2.0, checkpoint_every=3)
    out = tmp_path / "closure.pt"
    from hybridnde.training import build as build_module

    seen = {}
    original = build_module.Trainer

    class Spy(original):
        def fit(self, *args, **kwargs):
            seen["terms"] = self.terms
            seen["optimised"] = sum(p.numel() for p in self.parameters)
            return super().fit(*args, **kwargs)

    build_module.Trainer = Spy
    try:
        model, _ = train_case(case, truth_file, out, progress=False)
    finally:
        build_module.Trainer = original
    history = read_log(log_path(out))
    last = history[-1]
    assert last["loss"] == pytest.approx(last["loss/multiple_shooting"] + 2.0 * last["loss/continuity"])
    shooting = seen["terms"][0]
    assert shooting.corrections.abs().max() > 0  # the free starts moved
    assert seen["optimised"] == sum(p.numel() for p in model.parameters()) + shooting.corrections.numel()
    state = shooting.state_dict()
    with torch.no_grad():
        shooting.corrections.zero_()
    shooting.load_state_dict(state)
    torch.testing.assert_close(shooting.corrections.detach(), state["corrections"])


@pytest.mark.parametrize("penalty", ["frobenius", "kinetic", "rnode", "spectral", "condition"])
def test_jacobian_penalties_join_the_loss_and_combine_with_the_directional_regularizer(tmp_path, truth_file, penalty):
    case = lv_case(method="vanilla", epochs=3, jacobian_penalty=penalty, jacobian_penalty_weight=1e-3,
                   regularizer="jvp", regularizer_weight=1e-4)
    out = tmp_path / "closure.pt"
    train_case(case, truth_file, out, progress=False)
    last = read_log(log_path(out))[-1]
    assert last[f"loss/{penalty}"] > 0
    assert last["loss"] == pytest.approx(last["loss/rollout"] + 1e-4 * last["loss/jvp"] + 1e-3 * last[f"loss/{penalty}"])


def test_a_strong_frobenius_penalty_shrinks_the_jacobian(tmp_path, truth_file):
    logs = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"closure{weight}.pt"
        train_case(lv_case(method="vanilla", epochs=8, learning_rate=0.02, jacobian_penalty="frobenius",
                           jacobian_penalty_weight=weight), truth_file, out, progress=False)
        logs[weight] = read_log(log_path(out))[-1]["loss/frobenius"]
    assert logs[1.0] < 0.5 * logs[0.0]


def test_method_rules_are_checked_before_training(tmp_path, truth_file):
    with pytest.raises(ConfigError, match="training.integration"):
        train_case(lv_case(method="homotopy", integration="step"), truth_file, tmp_path / "c.pt", progress=False)
    with pytest.raises(ConfigError, match="homotopy_stages"):
        train_case(lv_case(method="homotopy", epochs=2, homotopy_stages=3), truth_file, tmp_path / "c.pt",
                   progress=False)
    # 4 epochs of 2-epoch stages: lam went 1, 1, 0.54, 0.54 and never reached 0 (the coupled model was saved)
    with pytest.raises(ConfigError, match=r"training.epochs = 4 ends before the last homotopy stage \(lam = 0\) "
                                          r"starts at epoch 9"):
        train_case(lv_case(method="homotopy", epochs=4, homotopy_stages=5, homotopy_epochs_per_stage=2), truth_file,
                   tmp_path / "c.pt", progress=False)
    with pytest.raises(ConfigError, match="shooting_segments"):
        train_case(lv_case(method="multiple_shooting", shooting_segments=30), truth_file, tmp_path / "c.pt",
                   progress=False)
    with pytest.raises(ConfigError, match="training.method"):
        lv_case(method="shooting")
    assert not checkpoint_path(tmp_path / "c.pt").exists()


def test_the_shipped_homotopy_cases_load():
    from pathlib import Path

    from hybridnde.config import load_case

    cases = Path(__file__).resolve().parents[1] / "cases"
    for name, method in (("lotka_volterra", "homotopy"), ("lorenz63", "homotopy"), ("double_pendulum", "homotopy")):
        case = load_case(cases / f"{name}.toml")
        assert case.training.method == method and case.training.integration == "odeint"
    assert load_case(cases / "double_pendulum.toml").hybrid.setup == "second_order"


def test_adaptive_training_with_substeps_refines_only_the_rollouts():
    """hybrid.substeps was refused with training.integration = 'odeint'; the adaptive training does not
    use the host's step, so substeps now refine the rollouts (RK4 at 0.1 is coarse for Lorenz-63)."""
    from pathlib import Path as _Path

    from hybridnde.config import load_case
    from hybridnde.systems import build_host_solver
    from hybridnde.training.assembly import build_terms, check_training_config
    from hybridnde.training.terms import AdaptiveRolloutLoss

    case = load_case(_Path(__file__).resolve().parent.parent / "cases" / "lotka_volterra.toml",
                     overrides=["hybrid.substeps=4"])
    check_training_config(case)
    host = build_host_solver(case)
    assert host.dt == pytest.approx(case.time.sample_interval / 4)
    trajectory = build_terms(case, host, device=torch.device("cpu"), dtype=torch.float64)[0]
    assert isinstance(trajectory, AdaptiveRolloutLoss)  # training integrates adaptively, whatever the host's dt
