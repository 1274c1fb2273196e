"""Case parsing edges each stated as a property: what ``--set`` accepts and refuses (naming the entry and
the fix), that parsing leaves the caller's mapping alone and keeps ``[quick]``, where the quick variant is
checked and where not, which entry an unknown key is blamed on, what ``changed_keys`` names against a
stored case (its setup, unreadable text, a key gone), the host's stepping, and the mode that
``changed_numerics`` names."""
from __future__ import annotations

import copy
import tomllib

import numpy as np
import pytest
import tomli_w

from hybridnde.config import ConfigError, parse_case, parse_override
from hybridnde.config.case import parse_case_text
from solvers.kuramoto_sivashinsky import dealiasing_mask

TWO_BODY = {"system": {"name": "two_body"}}


def test_an_override_splits_at_its_first_equals_sign():
    assert parse_override("output.comment=a=b") == (["output", "comment"], "a=b")
    assert parse_override("case.description='x = 1'") == (["case", "description"], "x = 1")


@pytest.mark.parametrize("text", ["epochs=3", ".dt=1", "time.=1", "time..dt=1"])
def test_an_override_without_a_section_and_key_is_refused_naming_the_fix(text):
    with pytest.raises(ConfigError, match=rf"--set '{text}': the key needs a section, e.g. time.dt=0.1"):
        parse_override(text)


@pytest.mark.parametrize("broken", ["case.name='run", "case.name=\"run", "initial_condition.value=[1, 2",
                                    "hybrid.system={n_points = 32"])
def test_an_unclosed_quote_of_either_kind_is_refused_not_taken_as_a_word(broken):
    with pytest.raises(ConfigError, match=r"the value is not valid TOML .*close its brackets and quotes"):
        parse_override(broken)


def test_an_override_through_a_value_or_into_quick_or_without_a_system_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"^--set system.name.x=1: system.name.x goes through a value that is "
                                          r"not a table$"):
        parse_case(TWO_BODY, overrides=["system.name.x=1"])
    with pytest.raises(ConfigError, match=r"^--set quick.training.epochs=1: unknown section \[quick\]"):
        parse_case({**TWO_BODY, "quick": {"training.epochs": 2}}, overrides=["quick.training.epochs=1"], quick=True)
    with pytest.raises(ConfigError, match=r"^case.toml: missing \[system\] table with a name"):
        parse_case({"time": {"dt": 0.1}}, source="case.toml")


def test_parsing_leaves_the_callers_mapping_alone_and_keeps_the_quick_table():
    raw = {**TWO_BODY, "time": {"n_steps": 20}, "hybrid": {"system": {"gravitational_parameter": 2.0}},
           "quick": {"time.n_steps": 10, "training.epochs": 2}}
    before = copy.deepcopy(raw)
    case = parse_case(raw, overrides=["time.n_steps=30", "hybrid.system.gravitational_parameter=3.0"], quick=True)
    assert raw == before
    assert case.time.n_steps == 30 and case.training.epochs == 2
    assert dict(case.quick) == before["quick"] and tomllib.loads(case.to_toml())["quick"] == before["quick"]
    assert parse_case_text(case.to_toml()) == case


def test_the_quick_variant_is_checked_with_the_overrides_and_a_stored_case_is_not_checked_against_it():
    """A --set that mends the case mends its quick variant too; a case read back from a file (its
    overrides applied without --quick) is not held to its [quick] table: one naming a key unknown now
    still reads back."""
    case = parse_case({**TWO_BODY, "time": {"n_steps": 0}, "quick": {"training.epochs": 2}}, overrides=["time.n_steps=5"])
    assert case.time.n_steps == 5
    stored = tomllib.loads(parse_case(TWO_BODY).to_toml())
    stored["quick"] = {"training.retired_key": 1}
    assert dict(parse_case_text(tomli_w.dumps(stored)).quick) == {"training.retired_key": 1}
    with pytest.raises(ConfigError, match=r"\[quick\].*unknown key training.retired_key"):
        parse_case(stored)


def test_an_unknown_key_in_quick_and_set_is_blamed_on_the_set_that_was_applied_last():
    with pytest.raises(ConfigError) as caught:
        parse_case({**TWO_BODY, "quick": {"training.lr": 0.1}}, overrides=["training.lr=0.2"], quick=True,
                   source="case.toml")
    assert str(caught.value).startswith("--set training.lr=0.2: unknown key training.lr")


def test_no_warning_without_quick(caplog):
    with caplog.at_level("WARNING", logger="hybridnde.config.case"):
        parse_case(TWO_BODY, source="bare.toml")
    assert caplog.records == []


def _penalised(setup: str):
    return parse_case({"system": {"name": "lorenz63"},
                       "initial_condition": {"distribution": "point", "value": [1.0, 1.0, 1.0]},
                       "training": {"jacobian_penalty": "frobenius"}, "hybrid": {"setup": setup}})


def test_changed_keys_resolves_each_cases_penalty_field_with_its_own_setup():
    """'auto' is the closure in a residual host and the whole right-hand side otherwise: a stored
    residual case and a neural-ODE one penalise different fields though both say 'auto'; a stored case
    without [hybrid] was a residual one (the default)."""
    residual, neural = _penalised("residual"), _penalised("neural_ode")
    assert neural.changed_keys(residual.to_toml(), ["training"]) == \
        ["training.jacobian_penalty_field ('closure' -> 'rhs')"]
    assert residual.changed_keys(neural.to_toml(), ["training"]) == \
        ["training.jacobian_penalty_field ('rhs' -> 'closure')"]
    without_hybrid = tomllib.loads(residual.to_toml())
    del without_hybrid["hybrid"]
    assert residual.changed_keys(tomli_w.dumps(without_hybrid), ["training"]) == []
    assert residual.checksum() != neural.checksum()


def test_changed_keys_of_unreadable_text_is_empty_and_a_key_gone_is_named_unset():
    case = parse_case(TWO_BODY)
    assert case.changed_keys("[training\nepochs = ", ["training"]) == []
    assert case.changed_keys("", ["training"]) == [] and case.changed_keys(None, ["training"]) == []
    stored = tomllib.loads(case.to_toml())
    stored["training"]["retired_key"] = 1
    assert case.changed_keys(tomli_w.dumps(stored), ["training"]) == ["training.retired_key (1 -> 'unset')"]
    stored["training"]["epochs"] = case.training.epochs + 1
    assert case.changed_keys(tomli_w.dumps(stored), ["training"], skip=[("training", "retired_key")]) == \
        [f"training.epochs ({case.training.epochs + 1} -> {case.training.epochs})"]


def test_the_host_steps_each_sample_in_substeps_from_its_start_and_a_neural_ode_host_with_rk4():
    case = parse_case({**TWO_BODY, "time": {"dt": 0.01, "save_every": 5, "n_steps": 100, "spinup_steps": 7,
                                            "integrator": "euler"}, "hybrid": {"substeps": 2}})
    host = case.host_time
    assert host.dt == pytest.approx(0.025) and host.save_every == 1 and host.spinup_steps == 0
    assert host.integrator == "euler" and host.n_steps == case.time.n_steps
    neural = case.replace(hybrid=parse_case({**TWO_BODY, "hybrid": {"setup": "neural_ode"}}).hybrid)
    assert neural.host_time.integrator == "rk4"


@pytest.mark.parametrize("n_points, fraction", [(48, 2.0 / 3.0), (96, 0.5), (44, 15 / 22), (78, 31 / 39),
                                                 (86, 23 / 43)])
def test_the_changed_numerics_message_names_the_mode_the_strict_cut_no_longer_keeps(n_points, fraction):
    """The mode ``fraction N/2`` rounded: the product can fall just below it (15/22 * 22 = 14.999...)."""
    case = parse_case({"system": {"name": "kuramoto_sivashinsky", "n_points": n_points,
                                  "dealiasing_fraction": fraction}})
    half = n_points // 2
    before = np.arange(half) <= fraction * half + 1e-9
    dropped, = np.flatnonzero(before & ~dealiasing_mask(half, fraction)[:half])
    message, = case.changed_numerics()
    assert f"mode {dropped} of N = {n_points} " in message


def test_a_case_file_without_a_name_is_named_by_its_file(tmp_path):
    from hybridnde.config import load_case

    path = tmp_path / "orbit_b.toml"
    path.write_text('[system]\nname = "two_body"\n')
    assert load_case(path).case.name == "orbit_b"
    path.write_text('[case]\nname = "given"\n[system]\nname = "two_body"\n')
    assert load_case(path).case.name == "given"


def test_a_second_order_hosts_automatic_penalty_field_is_the_whole_right_hand_side():
    """'auto' is the closure only in a residual host; a second_order closure gives only the
    accelerations (its Jacobian has zero rows), so 'auto' penalises the whole field there."""
    from hybridnde.training.assembly import check_training_config, jacobian_penalty_field

    def case(penalty, field):
        return parse_case({**TWO_BODY, "hybrid": {"setup": "second_order"},
                           "training": {"jacobian_penalty": penalty, "jacobian_penalty_field": field}})

    assert jacobian_penalty_field(case("frobenius", "auto")) == "rhs"
    assert case("frobenius", "auto").checksum() == case("frobenius", "rhs").checksum() != \
        case("frobenius", "closure").checksum()
    check_training_config(case("condition", "auto"))  # the rows of dq/dt = v are in the Jacobian
    with pytest.raises(ConfigError, match=r"jacobian_penalty_field = 'closure' in a second_order host"):
        check_training_config(case("condition", "closure"))


def test_the_quick_table_is_in_no_checksum():
    """Only the variant that runs counts: a case with a [quick] table, run without --quick, is the case
    without one (its outputs are reused and resumed alike)."""
    bare = parse_case(TWO_BODY)
    with_quick = parse_case({**TWO_BODY, "quick": {"training.epochs": 2, "time.n_steps": 10}})
    assert "quick" in tomllib.loads(with_quick.to_toml())
    assert with_quick.checksum() == bare.checksum()
    assert with_quick.checksum(["training"]) == bare.checksum(["training"])
