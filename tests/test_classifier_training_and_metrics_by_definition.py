"""The two-moons classifier's training loop, seeds and reported metrics, each checked against its definition
(an independent computation) rather than against a trend: the history's sample-weighted means, what the
model seed does and does not change, the penalty's weight and its detached states, the Jacobian metrics
at the test states, the noise-level keys and the integration time."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import hybridnde.classifier as classifier
from hybridnde.classifier import (NeuralODEClassifier, load_classifier_case, make_moons, parse_classifier_case,
                                  run_classifier, summarize)
from hybridnde.config import ConfigError


def _case(**sections):
    raw = {"data": {"train_samples": 100, "test_samples": 60, "noise": 0.1, "input_noise_levels": [0.3]},
           "model": {"width": 8, "depth": 1},
           "training": {"epochs": 1, "batch_size": 64, "learning_rate": 0.02, "penalty_times": 3, "seeds": [0]}}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_classifier_case(raw)


_TRAJECTORY = NeuralODEClassifier.trajectory


class _Spy:
    """Records every ``NeuralODEClassifier.trajectory`` call: (input, times, counter); a new spy replaces
    the last one."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = _TRAJECTORY

        def spy(model, x, **kwargs):
            states, counter = real(model, x, **kwargs)
            self.calls.append((x.detach().clone(), kwargs.get("times"), counter))
            return states, counter

        monkeypatch.setattr(NeuralODEClassifier, "trajectory", spy)


def _jacobians(net: nn.Module, states: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.autograd.functional.jacobian(net, h) for h in states])


def test_the_history_gives_sample_weighted_means_of_the_loss_and_penalty_and_the_mean_nfe_per_step(monkeypatch):
    """With a learning rate too small to move the weights, the first epoch's loss and penalty are those of
    the initial model over the whole training set (100 points in batches of 64 and 36: a mean per sample,
    the partial batch included, at every penalty time), and nfe_forward is the mean per optimiser step."""
    case = _case(training={"learning_rate": 1e-12, "jacobian_penalty": "frobenius", "probes": 2,
                           "penalty_weight": 0.5, "rtol": 1e-10, "atol": 1e-12})
    spy = _Spy(monkeypatch)
    result = run_classifier(case, seed=3)
    train_calls = [call for call in spy.calls if call[1] == 3 and len(call[0]) != case.data.test_samples]
    assert [len(x) for x, _, _ in train_calls] == [64, 36]

    torch.manual_seed(3)
    model = NeuralODEClassifier(width=8, depth=1).double()
    x, labels = make_moons(100, noise=0.1, seed=0)
    with torch.no_grad():
        states, _ = model.trajectory(x, times=3, rtol=1e-10, atol=1e-12)
        loss = nn.functional.binary_cross_entropy_with_logits(model.readout_logits(states[:, -1]), labels)
    frobenius = _jacobians(model.net, states.reshape(-1, 2)).pow(2).sum(dim=(-2, -1)).mean()
    first = result["history"][0]
    assert first["epoch"] == 1
    assert first["loss"] == pytest.approx(float(loss), rel=1e-7)
    assert first["penalty"] == pytest.approx(float(frobenius), rel=1e-7)
    assert first["nfe_forward"] == pytest.approx(np.mean([counter.nfe for _, _, counter in train_calls]))
    assert result["nfe_train"] == first["nfe_forward"] >= 6  # one dopri5 step takes six evaluations


def test_nfe_train_is_the_last_epochs_mean(monkeypatch):
    case = _case(training={"epochs": 3, "learning_rate": 0.1, "batch_size": 50, "rtol": 1e-7, "atol": 1e-9})
    spy = _Spy(monkeypatch)
    result = run_classifier(case, seed=0)
    train_nfe = [counter.nfe for x, times, counter in spy.calls if times == 3 and len(x) == 50]
    assert len(train_nfe) == 6
    per_epoch = [np.mean(train_nfe[2 * epoch: 2 * epoch + 2]) for epoch in range(3)]
    assert [entry["nfe_forward"] for entry in result["history"]] == pytest.approx(per_epoch)
    assert result["nfe_train"] == pytest.approx(per_epoch[-1])
    assert len(set(per_epoch)) > 1, "the epochs' NFE should differ here, or this test checks nothing"


def test_a_zero_penalty_weight_trains_exactly_the_unpenalised_model():
    """The penalty enters the loss scaled by penalty_weight: at weight 0 it is computed and reported but
    trains the very model no penalty trains (its probes come from their own generator)."""
    plain = run_classifier(_case(training={"epochs": 2}), seed=1)
    zero = run_classifier(_case(training={"epochs": 2, "jacobian_penalty": "frobenius", "penalty_weight": 0.0}), seed=1)
    assert zero["history"][-1]["penalty"] > 0
    assert [h["loss"] for h in zero["history"]] == [h["loss"] for h in plain["history"]]
    assert zero["accuracy"] == plain["accuracy"] and zero["frobenius"] == plain["frobenius"]
    weighted = run_classifier(_case(training={"epochs": 2, "jacobian_penalty": "frobenius", "penalty_weight": 5.0}),
                              seed=1)
    assert weighted["history"][-1]["loss"] != plain["history"][-1]["loss"]


def test_the_penalty_is_taken_at_detached_solver_states(monkeypatch):
    """A penalty on the vector field where it is used, not a path back through the ODE solution."""
    from hybridnde.regularizers.jacobian_norms import FrobeniusNorm

    seen = []
    real = FrobeniusNorm.__call__

    def spy(self, vector_field, t, u):
        seen.append((u.requires_grad, u.grad_fn, u.shape))
        return real(self, vector_field, t, u)

    monkeypatch.setattr(FrobeniusNorm, "__call__", spy)
    run_classifier(_case(training={"jacobian_penalty": "frobenius"}), seed=0)
    assert [shape for _, _, shape in seen] == [(64 * 3, 2), (36 * 3, 2)]
    assert all(not requires_grad and grad_fn is None for requires_grad, grad_fn, _ in seen)


def test_the_model_seed_sets_weights_batches_and_probes_but_not_the_data_or_the_test_noise(monkeypatch):
    seeds_of_probes = []
    real_build = classifier.build_jacobian_penalty

    def build(name, **kwargs):
        seeds_of_probes.append(kwargs["generator"].initial_seed())
        return real_build(name, **kwargs)

    monkeypatch.setattr(classifier, "build_jacobian_penalty", build)
    runs = {}
    case = _case(data={"noise": 0.0}, training={"jacobian_penalty": "frobenius"})  # noiseless: a point drawn
    for seed in (0, 1, 0):                                                        # twice is equal
        spy = _Spy(monkeypatch)
        result = run_classifier(case, seed=seed)
        runs.setdefault(seed, []).append((result, spy.calls))
    (first, calls_a), (again, calls_b) = runs[0]
    other, calls_other = runs[1][0]
    assert len(calls_a) == len(calls_b) == len(calls_other) == 4  # two batches, the test set, one noise level
    # same seed: the same run, bit for bit
    assert first["history"] == again["history"] and first["accuracy"] == again["accuracy"]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(calls_a, calls_b))
    # another seed: other batches (the first batch's points), other weights, other probes
    assert not torch.equal(calls_a[0][0], calls_other[0][0])
    assert sorted(calls_a[0][0].tolist()) != sorted(calls_other[0][0].tolist())
    assert first["history"] != other["history"]
    assert seeds_of_probes[0] != seeds_of_probes[1] and seeds_of_probes[0] == seeds_of_probes[2]
    # the test set and its noisy copies are the same for every model seed, and not the training points
    evaluation_a, evaluation_other = calls_a[-2:], calls_other[-2:]
    for (x, _, _), (y, _, _) in zip(evaluation_a, evaluation_other):
        assert len(x) == 60 and torch.equal(x, y)
    clean, noisy = evaluation_a[0][0], evaluation_a[1][0]
    train, _ = make_moons(100, noise=0.0, seed=0)
    assert torch.cdist(clean, train).min() > 0  # no test point is a training point
    assert float((noisy - clean).std()) == pytest.approx(0.3, rel=0.2)


def test_the_jacobian_metrics_are_those_of_the_jacobians_at_the_test_states(monkeypatch):
    """frobenius = mean ||J||_F^2, spectral = mean sigma_max, condition_number (mean) and its median of
    sigma_max / sigma_min, over the test states at every penalty time (an independent SVD)."""
    captured = []
    real = classifier.dense_jacobian

    def spy(vector_field, t, u, **kwargs):
        jacobian = real(vector_field, t, u, **kwargs)
        captured.append((u.detach().clone(), jacobian.detach().clone(), vector_field))
        return jacobian

    monkeypatch.setattr(classifier, "dense_jacobian", spy)
    result = run_classifier(_case(data={"test_samples": 61}, training={"epochs": 2}), seed=0)
    (states, jacobian, field), = captured
    assert states.shape == (61 * 3, 2)
    independent = _jacobians(field.__self__.net, states).numpy()
    np.testing.assert_allclose(jacobian.numpy(), independent, rtol=1e-10, atol=1e-12)
    singular = np.linalg.svd(independent, compute_uv=False)
    kappa = singular[:, 0] / singular[:, -1]
    assert result["frobenius"] == pytest.approx(float((independent ** 2).sum(axis=(1, 2)).mean()), rel=1e-9)
    assert result["spectral"] == pytest.approx(float(singular[:, 0].mean()), rel=1e-9)
    assert result["condition_number"] == pytest.approx(float(kappa.mean()), rel=1e-6)
    assert result["condition_number_median"] == pytest.approx(float(np.sort(kappa)[(len(kappa) - 1) // 2]), rel=1e-6)
    assert result["condition_number"] != pytest.approx(result["condition_number_median"], rel=1e-3)


def test_the_noise_levels_name_their_keys_as_validation_does_and_noise_zero_is_the_clean_accuracy():
    result = run_classifier(_case(data={"input_noise_levels": [0.0, 1.0, 2.5e-5]}), seed=0)
    assert {key for key in result if key.startswith("accuracy_noise_")} == \
        {"accuracy_noise_0", "accuracy_noise_1", "accuracy_noise_2.5e-05"}
    assert result["accuracy_noise_0"] == result["accuracy"]
    with pytest.raises(ConfigError, match=r"input_noise_levels gives 1 more than once"):
        _case(data={"input_noise_levels": [1.0, 1]})


def test_the_read_out_sees_the_state_at_end_time():
    """h(2T) of a model with end_time 2T is the flow over [0, T] applied twice (no augmentation)."""
    torch.manual_seed(0)
    long = NeuralODEClassifier(width=8, depth=2, end_time=2.0).double()
    short = NeuralODEClassifier(width=8, depth=2, end_time=1.0).double()
    short.load_state_dict(long.state_dict())
    x, _ = make_moons(20, noise=0.1, seed=0)
    tight = dict(rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        whole, _ = long.trajectory(x, times=3, **tight)
        half, _ = short.trajectory(x, times=2, **tight)
        twice, _ = short.trajectory(half[:, -1], times=2, **tight)
    torch.testing.assert_close(whole[:, 1], half[:, -1], rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(whole[:, -1], twice[:, -1], rtol=1e-7, atol=1e-8)
    assert float((whole[:, -1] - half[:, -1]).abs().max()) > 1e-3


@pytest.mark.parametrize("depth", [1, 3])
def test_the_vector_field_has_depth_hidden_layers_of_width_units(depth):
    model = NeuralODEClassifier(width=5, depth=depth, augment_dim=2)
    linear = [layer for layer in model.net if isinstance(layer, nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == \
        [(4, 5)] + [(5, 5)] * (depth - 1) + [(5, 4)]


def test_the_classifier_case_keys_and_their_errors(tmp_path):
    assert parse_classifier_case({}).case.name == "two_moons"
    renamed = parse_classifier_case({"case": {"name": "moons_b"}})
    assert renamed.replace(training={"epochs": 3}).case.name == "moons_b"
    with pytest.raises(ConfigError, match=r"training.seeds is empty; give at least one seed"):
        parse_classifier_case({"training": {"seeds": []}})
    with pytest.raises(ConfigError, match=r"--set 'training.epochs.x=3': classifier keys are section.key"):
        parse_classifier_case({}, overrides=["training.epochs.x=3"])
    with pytest.raises(ConfigError, match=r"training.penalty_times"):
        parse_classifier_case({"training": {"penalty_times": 1}})  # h(0) would be the read-out's state
    bad = tmp_path / "moons.toml"
    bad.write_text("[trainig]\n")
    with pytest.raises(ConfigError, match=r"^\S*moons.toml: unknown section \[trainig\]"):
        load_classifier_case(bad)


def test_summarize_of_one_run_has_zero_spread():
    assert summarize([{"a": 2.5}], ["a"]) == {"a": (2.5, 0.0)}
    mean, std = summarize([{"a": 1.0}, {"a": 2.0}, {"a": 6.0}], ["a"])["a"]
    assert mean == 3.0 and std == pytest.approx(math.sqrt(7.0))
