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
    assert caplog.text.count("is the same run as") == 2  # new: the two left out, not the two kept
    raw["hybrid"]["system"] = {}
    path.write_text(tomli_w.dumps(raw))
    for values in ("{gravitational_parameter = 2.0},{}", "{},{gravitational_parameter = 2.0}"):  # new: both orders
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            variants = build_variants(path, compare=[f"hybrid.system={values}"])
        assert len(variants) == 1 and ("(hybrid.system.gravitational_parameter has no effect with hybrid.setup = "
                                       "'neural_ode' (its host has no physics))") in caplog.text, values
    raw["training"]["regularizer"] = "none"  # new: two keys without effect, both named
    path.write_text(tomli_w.dumps(raw))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        variants = build_variants(path, compare=["training.fd_stencil=one_sided,centred",
                                                 "training.probe_distribution=gaussian,rademacher"])
    assert len(variants) == 1
    assert ("variant fd_stencil=centred_probe_distribution=rademacher is the same run as "
            "fd_stencil=one_sided_probe_distribution=gaussian (training.probe_distribution has no effect with "
            "training.regularizer = 'none' (they shape jvp's probes); training.fd_stencil has no effect with "
            "training.regularizer = 'none'); it is left out") in caplog.text


READ_BY = {  # key -> training keys under which it is read (its value changes the closure)
    "training.regularizer_weight": [{"regularizer": "fd"}, {"regularizer": "jvp"}],
    "training.probe_distribution": [{"regularizer": "jvp"}],
    "training.normalize_probes": [{"regularizer": "jvp"}],
    "training.probes": [{"regularizer": "jvp"}, {"jacobian_penalty": "frobenius"}, {"jacobian_penalty": "rnode"}],
    "training.fd_stencil": [{"regularizer": "fd"}],
    "training.regularizer_warmup_epochs": [{"regularizer": "fd"}, {"jacobian_penalty": "kinetic"}],
    "training.jacobian_penalty_weight": [{"jacobian_penalty": "kinetic"}],
    "training.jacobian_penalty_iterations": [{"jacobian_penalty": "spectral"}, {"jacobian_penalty": "condition"}],
    "training.min_learning_rate": [{"lr_schedule": "cosine"}],
    "training.lr_step_epochs": [{"lr_schedule": "step"}],
    "training.lr_gamma": [{"lr_schedule": "step"}],
    "training.adaptive_method": [{"integration": "odeint"}, {"integration": "odeint_adjoint"}],
    "training.homotopy_ratio": [{"method": "homotopy", "integration": "odeint"}],
    "training.coupling": [{"method": "homotopy", "integration": "odeint"}],
    "training.shooting_segments": [{"method": "multiple_shooting", "integration": "odeint"}],
    "training.continuity_weight": [{"method": "multiple_shooting", "integration": "odeint"}],
    "training.observation_noise_scale": [{"observation_noise": 0.01}],
}
UNREAD_BY = {  # key -> training keys under which it is not read (switched off)
    "training.regularizer_weight": [{}],
    "training.probe_distribution": [{"regularizer": "fd"}],
    "training.normalize_probes": [{"regularizer": "fd"}],
    "training.probes": [{"regularizer": "fd", "jacobian_penalty": "kinetic"}, {"jacobian_penalty": "spectral"}],
    "training.fd_stencil": [{"regularizer": "jvp"}],
    "training.regularizer_warmup_epochs": [{}],
    "training.jacobian_penalty_weight": [{}],
    "training.jacobian_penalty_iterations": [{"jacobian_penalty": "frobenius"}, {"jacobian_penalty": "kinetic"}],
    "training.min_learning_rate": [{"lr_schedule": "step"}, {"lr_schedule": "constant"}],
    "training.lr_step_epochs": [{"lr_schedule": "cosine"}],
    "training.lr_gamma": [{"lr_schedule": "constant"}],
    "training.adaptive_method": [{}],
    "training.homotopy_ratio": [{"method": "multiple_shooting", "integration": "odeint"}],
    "training.coupling": [{"integration": "odeint"}],
    "training.shooting_segments": [{"method": "homotopy", "integration": "odeint"}],
    "training.continuity_weight": [{"integration": "odeint"}],
    "training.observation_noise_scale": [{}],
}
OTHER_THAN_DEFAULT = {**OTHER_VALUES, "training.shooting_segments": 1}  # (the default 5 exceeds rollout_steps)


@pytest.mark.parametrize("key", READ_BY)
def test_each_rule_switches_its_key_off_exactly_where_the_training_does_not_read_it(key):
    for training in READ_BY[key]:
        case = case_of(training)
        changed = case_of(training, {key: OTHER_THAN_DEFAULT[key]})
        assert key not in keys_without_effect(case), (key, training)
        assert effective_case(changed).checksum() != effective_case(case).checksum(), (key, training)
    for training in UNREAD_BY[key]:
        case = case_of(training)
        assert key in keys_without_effect(case), (key, training)
        assert effective_case(case_of(training, {key: OTHER_THAN_DEFAULT[key]})).checksum() == \
            effective_case(case).checksum(), (key, training)


def test_the_model_and_host_rules_switch_off_only_what_the_set_up_does_not_read():
    """kernel_size is read by the periodic CNN alone; a neural_ode host reads its grid (n_points) from
    [hybrid.system] and nothing else; a second_order host (dq/dt = v) reads none of its physics."""
    ks = {"case": {"name": "ks"}, "system": {"name": "kuramoto_sivashinsky", "n_points": 64},
          "time": {"dt": 0.25, "n_steps": 10}, "model": {"kind": "periodic_cnn"}, "compute": {"device": "cpu"}}

    def ks_case(**changes):
        return parse_case({**ks, **changes})

    def apart(first, second):
        return effective_case(first).checksum() != effective_case(second).checksum()

    cnn = ks_case()
    assert "model.kernel_size" not in keys_without_effect(cnn)
    assert apart(cnn, ks_case(model={"kind": "periodic_cnn", "kernel_size": 3}))
    assert "model.kernel_size" in keys_without_effect(case_of({}))  # the two-body MLP
    host = {"setup": "neural_ode", "system": {"n_points": 32, "nonlinear_coefficient": 0.0}}
    coarse = ks_case(hybrid=host)
    assert set(key for key in keys_without_effect(coarse) if key.startswith("hybrid.")) == \
        {"hybrid.system.nonlinear_coefficient"}
    assert apart(coarse, ks_case(hybrid={"setup": "neural_ode", "system": {}}))  # another host grid
    raw = {name: dict(table) for name, table in BASE.items()}
    second_order = [parse_case({**raw, "hybrid": {"setup": "second_order", "system": system}})
                    for system in ({}, {"gravitational_parameter": 2.0})]
    assert [key for key in keys_without_effect(second_order[1]) if key.startswith("hybrid.")] == \
        ["hybrid.system.gravitational_parameter"]
    assert not apart(*second_order)


def test_a_second_order_host_trains_the_same_closure_whatever_its_physics(tmp_path, truth):
    """The host knows dq/dt = v only: an override of the gravitational parameter changes nothing."""
    closures = []
    for system in ({}, {"gravitational_parameter": 2.0}):
        raw = {name: dict(table) for name, table in BASE.items()}
        case = parse_case({**raw, "hybrid": {"setup": "second_order", "system": system}})
        model, result = train_case(case, truth, tmp_path / f"closure{len(closures)}.pt", progress=False)
        closures.append((model.state_dict(), result.best_val_loss))
    (first, first_loss), (second, second_loss) = closures
    assert first_loss == second_loss and all(torch.equal(first[name], second[name]) for name in first)
