"""Keys without effect (config.effect): set to other values, they train the same closure bit for bit, so
`run --compare` may run such variants once; keys with an effect are never merged."""
import logging

import pytest
import torch

from hybridnde.config import parse_case
from hybridnde.config.effect import effective_case, keys_without_effect
from hybridnde.io import write_netcdf
from hybridnde.pipeline import build_variants
from hybridnde.simulate import simulate_case
from hybridnde.training import train_case

# A small neural-ODE two-body case (5 members x 31 samples), trained 2 epochs.
BASE = {"case": {"name": "effect"}, "system": {"name": "two_body"}, "time": {"dt": 0.02, "n_steps": 30},
        "initial_condition": {"members": 5}, "hybrid": {"setup": "neural_ode"}, "model": {"width": 8},
        "training": {"epochs": 2, "batch_size": 32, "rollout_steps": 2, "lr_schedule": "constant",
                     "checkpoint_every": 0, "seed": 3}, "compute": {"device": "cpu"}}

#: a value other than the default for every key a rule can switch off (a new rule needs one here)
OTHER_VALUES = {
    "training.regularizer_weight": 0.5, "training.probe_distribution": "rademacher", "training.normalize_probes": True,
    "training.probes": 5, "training.fd_stencil": "centred", "training.regularizer_warmup_epochs": 3,
    "training.jacobian_penalty_weight": 0.2, "training.jacobian_penalty_field": "closure",
    "training.jacobian_penalty_iterations": 7, "training.min_learning_rate": 1e-4, "training.lr_step_epochs": 1,
    "training.lr_gamma": 0.3, "training.adaptive_method": "bosh3", "training.homotopy_stages": 2,
    "training.homotopy_epochs_per_stage": 1, "training.homotopy_ratio": 0.3, "training.coupling": 2.0,
    "training.smoothing": 0.1, "training.shooting_segments": 2, "training.continuity_weight": 0.5,
    "training.observation_noise_scale": "mean", "model.kernel_size": 3, "hybrid.system.gravitational_parameter": 2.0,
}

SET_UPS = {  # between them, every rule both ways where the toy case can train
    "plain": {},
    "fd_spectral_step_odeint": {"regularizer": "fd", "jacobian_penalty": "spectral", "lr_schedule": "step",
                                "integration": "odeint"},
    "jvp_frobenius_cosine_noisy": {"regularizer": "jvp", "jacobian_penalty": "frobenius", "lr_schedule": "cosine",
                                   "observation_noise": 0.01},
    "kinetic_homotopy": {"jacobian_penalty": "kinetic", "method": "homotopy", "integration": "odeint",
                         "homotopy_stages": 2},
}


def case_of(training: dict, changed: dict | None = None):
    raw = {name: dict(table) for name, table in BASE.items()}
    raw["training"].update(training)
    raw["hybrid"]["system"] = {}
    for name, value in (changed or {}).items():
        section, key = name.split(".", 1)
        if section == "hybrid":
            raw["hybrid"]["system"][key.split(".", 1)[1]] = value
        else:
            raw.setdefault(section, {})[key] = value
    return parse_case(raw)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    path = tmp_path_factory.mktemp("effect") / "truth.nc"
    write_netcdf(simulate_case(case_of({}), progress=False), path)
    return path


@pytest.mark.parametrize("set_up", SET_UPS)
def test_keys_without_effect_train_the_same_closure_bit_for_bit(tmp_path, truth, set_up):
    case = case_of(SET_UPS[set_up])
    switched_off = {name: OTHER_VALUES[name] for name in keys_without_effect(case_of(SET_UPS[set_up],
                                                                                     OTHER_VALUES))}
    assert switched_off, set_up
    changed = case_of(SET_UPS[set_up], switched_off)
    assert changed.checksum() != case.checksum() and effective_case(changed).checksum() == effective_case(case).checksum()
    closures = []
    for label, each in (("as_given", case), ("changed", changed)):
        model, result = train_case(each, truth, tmp_path / f"{label}.pt", progress=False)
        closures.append((model.state_dict(), result.best_val_loss))
    (first, first_loss), (second, second_loss) = closures
    assert first_loss == second_loss and all(torch.equal(first[name], second[name]) for name in first)


def test_every_rule_has_a_tested_value_and_keys_with_an_effect_stay_apart():
    everything = {**{key: "x" for key in OTHER_VALUES}}
    for set_up in SET_UPS.values():
        assert set(keys_without_effect(case_of(set_up, {"hybrid.system.gravitational_parameter": 2.0}))) <= set(everything)
    jvp = case_of({"regularizer": "jvp"})
    assert "training.probes" not in keys_without_effect(jvp) and "training.fd_stencil" in keys_without_effect(jvp)
    assert effective_case(case_of({"regularizer": "jvp", "probes": 5})).checksum() != effective_case(jvp).checksum()
    penalised = case_of({"jacobian_penalty": "rnode"})  # rnode's Frobenius part draws probes too
    assert "training.probes" not in keys_without_effect(penalised)


def test_compare_runs_variants_differing_in_a_key_without_effect_once(tmp_path, caplog):
    """`--compare training.fd_stencil=one_sided,centred` with the jvp regularizer trained and scored two
    identical closures, and the table showed them as two results."""
    import tomli_w

    raw = {name: dict(table) for name, table in BASE.items()}
    raw["training"]["regularizer"] = "jvp"
    path = tmp_path / "case.toml"
    path.write_text(tomli_w.dumps(raw))
    with caplog.at_level(logging.WARNING):
        variants = build_variants(path, compare=["training.fd_stencil=one_sided,centred", "training.probes=2,4"])
    assert [v.label for v in variants] == ["fd_stencil=one_sided_probes=2", "fd_stencil=one_sided_probes=4"]
    assert ("variant fd_stencil=centred_probes=2 is the same run as fd_stencil=one_sided_probes=2 "
            "(training.fd_stencil has no effect with training.regularizer = 'jvp'); it is left out") in caplog.text
    raw["hybrid"]["system"] = {}
    path.write_text(tomli_w.dumps(raw))
    variants = build_variants(path, compare=["hybrid.system={gravitational_parameter = 2.0},{}"])
    assert len(variants) == 1 and ("(hybrid.system.gravitational_parameter has no effect with hybrid.setup = "
                                   "'neural_ode' (its host has no physics))") in caplog.text
