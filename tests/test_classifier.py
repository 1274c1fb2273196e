"""The two-moons neural-ODE classifier: seeded data, case validation, training, penalties, metrics."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hybridnde.classifier import (ClassifierCase, NeuralODEClassifier, load_classifier_case, make_moons,
                                  parse_classifier_case, run_classifier, summarize)
from hybridnde.config import ConfigError

CASE = Path(__file__).resolve().parents[1] / "cases" / "classifier" / "two_moons.toml"


def test_moons_are_seeded_balanced_and_on_their_half_circles():
    x, labels = make_moons(400, noise=0.0, seed=3)
    again, _ = make_moons(400, noise=0.0, seed=3)
    other, _ = make_moons(400, noise=0.0, seed=4)
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert x.shape == (400, 2) and float(labels.mean()) == 0.5
    centred = x + torch.tensor([0.5, 0.25], dtype=x.dtype)
    outer, inner = centred[labels == 0], centred[labels == 1]
    torch.testing.assert_close(outer.norm(dim=1), torch.ones(200, dtype=x.dtype))  # unit circle, upper half
    assert bool((outer[:, 1] >= 0).all())
    shifted = inner - torch.tensor([1.0, 0.5], dtype=x.dtype)
    torch.testing.assert_close(shifted.norm(dim=1), torch.ones(200, dtype=x.dtype))  # lower half, shifted
    assert bool((shifted[:, 1] <= 1e-12).all())
    noisy, _ = make_moons(4000, noise=0.2, seed=3)
    clean, _ = make_moons(4000, noise=0.0, seed=3)
    assert float((noisy - clean).std()) == pytest.approx(0.2, rel=0.05)


def test_case_file_loads_and_bad_values_name_the_field():
    case = load_classifier_case(CASE)
    assert isinstance(case, ClassifierCase) and case.case.name == "two_moons"
    assert load_classifier_case(CASE, overrides=["training.epochs=3"]).training.epochs == 3
    with pytest.raises(ConfigError, match="training.jacobian_penalty"):
        parse_classifier_case({"training": {"jacobian_penalty": "nuclear"}})
    with pytest.raises(ConfigError, match="data.noise"):
        parse_classifier_case({"data": {"noise": -0.1}})
    with pytest.raises(ConfigError, match="unknown key model.widht"):
        parse_classifier_case({"model": {"widht": 3}})
    with pytest.raises(ConfigError, match="unknown section"):
        parse_classifier_case({"system": {}})
    with pytest.raises(ConfigError, match=r"data.input_noise_levels gives 0.1 more than once"):
        parse_classifier_case({"data": {"input_noise_levels": [0.1, 0.2, 0.1000001]}})  # one result key
    for overrides in ([], ["training.epochs=3"]):  # with an override into it: a bare TypeError
        with pytest.raises(ConfigError, match=r"^case: \[training\] must be a table$"):
            parse_classifier_case({"training": 5}, overrides=overrides)
    assert case.replace(training={"jacobian_penalty": "spectral"}).training.jacobian_penalty == "spectral"


def test_classifier_shapes_and_augmentation():
    torch.manual_seed(0)
    model = NeuralODEClassifier(width=8, depth=1, augment_dim=2).double()
    x, _ = make_moons(10, noise=0.1, seed=0)
    states, counter = model.trajectory(x, times=4)
    assert states.shape == (10, 4, 4) and counter.nfe > 0
    torch.testing.assert_close(states[:, 0, :2], x)
    assert float(states[:, 0, 2:].detach().abs().max()) == 0.0
    assert model.readout_logits(states[:, -1]).shape == (10,)


def _small_case(penalty: str, weight: float) -> ClassifierCase:
    return parse_classifier_case({
        "data": {"train_samples": 128, "test_samples": 256, "noise": 0.1, "input_noise_levels": [0.3]},
        "model": {"width": 16, "augment_dim": 1},
        "training": {"epochs": 12, "batch_size": 64, "learning_rate": 0.02, "jacobian_penalty": penalty,
                     "penalty_weight": weight, "penalty_times": 3, "seeds": [0]}})


def test_training_learns_and_a_penalty_lowers_its_own_quantity():
    plain = run_classifier(_small_case("none", 0.0), seed=0)
    assert plain["accuracy"] > 0.8  # chance is 0.5
    assert plain["history"][-1]["loss"] < plain["history"][0]["loss"]
    assert set(plain) >= {"accuracy_noise_0.3", "nfe_test", "nfe_train", "condition_number", "frobenius"}
    assert plain["nfe_test"] > 0 and math.isfinite(plain["condition_number"]) and plain["condition_number"] >= 1
    penalised = run_classifier(_small_case("frobenius", 0.1), seed=0)
    assert penalised["frobenius"] < 0.7 * plain["frobenius"]
    assert penalised["history"][-1]["penalty"] > 0
    # reproducible: same seed, same numbers
    assert run_classifier(_small_case("none", 0.0), seed=0)["accuracy"] == plain["accuracy"]


def test_the_spectral_penalty_warm_starts_each_state_from_its_own_vectors_and_lowers_sigma_max(monkeypatch):
    """One id per (training sample, penalty time): a shuffled batch started from the previous batch's
    vectors before, and 1.8% of the states came out below 0.95 sigma_max (down to 0.11)."""
    from hybridnde.regularizers.jacobian_norms import SpectralNorm

    calls = []
    real = SpectralNorm.__call__

    def spy(self, vector_field, t, u, **kwargs):
        calls.append((u.shape[0], kwargs.get("row_ids")))
        return real(self, vector_field, t, u, **kwargs)

    monkeypatch.setattr(SpectralNorm, "__call__", spy)
    case = _small_case("spectral", 0.1)
    penalised = run_classifier(case, seed=0)
    ids = [row_ids for _, row_ids in calls]
    assert all(row_ids is not None and len(row_ids) == size and len(set(row_ids.tolist())) == size
               for size, row_ids in calls)
    seen = torch.cat(ids)
    assert int(seen.min()) >= 0 and int(seen.max()) < 128 * 3 and len(set(seen.tolist())) == 128 * 3
    plain = run_classifier(_small_case("none", 0.0), seed=0)
    assert penalised["spectral"] < plain["spectral"]


def test_summarize_gives_mean_and_sample_std():
    stats = summarize([{"a": 1.0}, {"a": 3.0}], ["a"])
    assert stats["a"] == (2.0, pytest.approx(math.sqrt(2.0)))


def test_a_classifier_case_file_that_cannot_be_read_is_named_as_the_main_cases_are(tmp_path):
    """Non-UTF-8 bytes were a bare UnicodeDecodeError, a folder "does not exist", and a misspelt section
    in --set was blamed on the case file without a suggestion (helper-113's audit)."""
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[training]\n")
    with pytest.raises(ConfigError, match="binary.toml: not UTF-8 text"):
        load_classifier_case(tmp_path / "binary.toml")
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(ConfigError, match="is a folder; pass a TOML file such as cases/classifier/two_moons.toml"):
        load_classifier_case(tmp_path / "folder.toml")
    with pytest.raises(ConfigError, match=r"^--set trainig.epochs=3: unknown section \[trainig\]; did you mean training\?"):
        parse_classifier_case({}, overrides=["trainig.epochs=3"], source="two_moons.toml")
