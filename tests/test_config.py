"""Case files are validated into typed objects before any work starts; errors name the field."""
import dataclasses
import logging
import tomllib
from pathlib import Path

import pytest
import tomli_w

from hybridnde.config import (ConfigError, KuramotoSivashinskyConfig, TwoBodyConfig, load_case, parse_case,
                              parse_override)

CASES_DIR = Path(__file__).parents[1] / "cases"
CASES = sorted(CASES_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_shipped_case_loads_and_round_trips(path):
    case = load_case(path)
    again = parse_case(__import__("tomllib").loads(case.to_toml()))
    assert again == case
    assert again.checksum() == case.checksum()
    load_case(path, quick=True)


def test_system_table_is_typed_by_name():
    case = parse_case({"system": {"name": "kuramoto_sivashinsky", "n_points": 128}})
    assert isinstance(case.system, KuramotoSivashinskyConfig) and case.system.n_points == 128
    assert case.time.integrator == "etdrk4"  # auto resolves per system
    assert isinstance(parse_case({"system": {"name": "two_body"}}).system, TwoBodyConfig)


@pytest.mark.parametrize("raw, field", [
    ({"system": {"name": "lorenz63", "sigmaa": 1.0}}, "system.sigmaa"),
    ({"system": {"name": "lorenz63"}, "time": {"dt": -0.1}, "initial_condition": {"distribution": "point", "value": [1, 1, 1]}}, "time.dt"),
    ({"system": {"name": "two_body"}, "time": {"n_steps": 0}}, "time.n_steps"),
    ({"system": {"name": "two_body"}, "time": {"dt": "fast"}}, "time.dt"),
    ({"system": {"name": "two_body"}, "time": {"dt": float("inf")}}, "time.dt"),
    ({"system": {"name": "two_body"}, "time": {"n_steps": 1.5}}, "time.n_steps"),
    ({"system": {"name": "two_body"}, "trainig": {}}, "[trainig]"),
    ({"system": {"name": "two_body"}, "training": {"regularizer": "jvpp"}}, "training.regularizer"),
    ({"system": {"name": "kuramoto_sivashinsky", "n_points": 63}}, "system.n_points"),
    ({"system": {"name": "kuramoto_sivashinsky", "method": "finite_difference"}, "time": {"dt": 0.01}}, "time.dt"),
    ({"system": {"name": "kuramoto_sivashinsky"}, "time": {"integrator": "rk4"}}, "time.integrator"),
    ({"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "point", "value": [1.0, 2.0]}}, "initial_condition.value"),
    ({"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "gaussian", "value": [1.0, 2.0, 3.0]}}, "initial_condition.std"),
    ({"system": {"name": "rigid_body", "moments_of_inertia": [1.0, 2.0]}}, "system.moments_of_inertia"),
    ({"system": {"name": "lorenz"}}, "system.name"),
    ({"system": {"name": "two_body"}, "hybrid": {"integrator": "etdrk4"}}, "hybrid.integrator"),
    ({"system": {"name": "two_body"}, "time": {"n_steps": 3, "save_every": 5}}, "time.save_every"),
    ({"system": {"name": "two_body"}, "quick": {"training.epoch": 3}}, "[quick]: unknown key training.epoch"),
    ({"system": {"name": "kuramoto_sivashinsky"}, "model": {"kernel_size": 4}}, "model.kernel_size"),
    ({"system": {"name": "kuramoto_sivashinsky", "n_points": 32}, "hybrid": {"system": {"n_points": 16}},
      "model": {"kernel_size": 35}}, "model.kernel_size"),
])
def test_bad_values_are_rejected_naming_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_case(raw)


def test_fd_stability_error_gives_the_limit():
    with pytest.raises(ConfigError, match=r"stability limit 0\.001\d+"):
        parse_case({"system": {"name": "kuramoto_sivashinsky", "method": "finite_difference"}, "time": {"dt": 0.002}})


def test_the_automatic_host_integrator_fits_the_host():
    """`hybrid.integrator = "auto"` takes the truth's integrator where the host can step with it, else
    the host's own: ETDRK4 for the spectral KS host, RK4 for an explicit one (it answered the truth's
    'etdrk4' for a finite-difference host, then refused it with "use 'auto'")."""
    spectral_truth = {"system": {"name": "kuramoto_sivashinsky"}}
    fd_truth = {"system": {"name": "kuramoto_sivashinsky", "method": "finite_difference"},
                "time": {"dt": 0.001, "save_every": 250, "integrator": "euler"}}
    assert parse_case(spectral_truth).host_time.integrator == "etdrk4"
    assert parse_case({**spectral_truth, "hybrid": {"system": {"method": "finite_difference"}}}
                      ).host_time.integrator == "rk4"
    assert parse_case({**fd_truth, "hybrid": {"substeps": 250}}).host_time.integrator == "euler"
    spectral_host = parse_case({**fd_truth, "hybrid": {"system": {"method": "spectral"}},
                                "training": {"regularizer": "jvp"}})
    assert spectral_host.host_time.integrator == "etdrk4"
    from hybridnde.training.assembly import check_training_config, reference_solver

    check_training_config(spectral_host)  # the jvp reference: the FD truth stepped as the truth is
    assert type(reference_solver(spectral_host)).__name__ == "KuramotoSivashinskyFiniteDifference"
    assert parse_case({"system": {"name": "two_body"}, "time": {"integrator": "dopri5"}}).host_time.integrator == "rk4"
    assert parse_case({**spectral_truth, "hybrid": {"setup": "neural_ode"}}).host_time.integrator == "rk4"


def test_a_cosine_schedule_that_would_climb_is_refused_before_training():
    """learning_rate = 1e-6 under the default min_learning_rate 1e-5: the cosine rose 10x over training."""
    from hybridnde.training.assembly import check_training_config

    climbing = parse_case({"system": {"name": "two_body"}, "training": {"learning_rate": 1e-6}})
    with pytest.raises(ConfigError, match=r"training.min_learning_rate = 1e-05 exceeds training.learning_rate = 1e-06"):
        check_training_config(climbing)
    check_training_config(parse_case({"system": {"name": "two_body"},
                                      "training": {"learning_rate": 1e-6, "min_learning_rate": 0.0}}))
    check_training_config(parse_case({"system": {"name": "two_body"},
                                      "training": {"learning_rate": 1e-6, "lr_schedule": "constant"}}))
    check_training_config(parse_case({"system": {"name": "two_body"},  # one epoch: the cosine never moves
                                      "training": {"learning_rate": 1e-6, "epochs": 1}}))
    check_training_config(parse_case({"system": {"name": "two_body"},  # equal ends: a constant cosine
                                      "training": {"learning_rate": 1e-5, "min_learning_rate": 1e-5}}))


def test_the_quick_table_is_checked_key_by_key_without_binding_the_run():
    """[quick] keys and values are checked on every load, but rules joining keys bind only the variant
    that runs: a --set may conflict with the quick variant, and a stored case (its overrides applied
    without --quick) must read back, or closure files could no longer be checked against their case."""
    from hybridnde.config import parse_case_text

    case = load_case(CASES_DIR / "ks_l22.toml", overrides=["rollout.save_every=500"])  # [quick]: steps = 400
    assert parse_case_text(case.to_toml()) == case
    with_file = {"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "file"},
                 "quick": {"training.epochs": 2}}
    assert parse_case(with_file, overrides=["initial_condition.file='ics.nc'"]).initial_condition.file == "ics.nc"
    with pytest.raises(ConfigError, match=r"\[quick\]: training.epochs = -1 must be positive"):
        parse_case({"system": {"name": "two_body"}, "quick": {"training.epochs": -1}})


@pytest.mark.parametrize("raw, overrides, message", [
    ({"time": {"dt": "0.25"}}, [], "time.dt"),
    ({"time": {"dtt": 1}}, [], "unknown key time.dtt"),
    ({"system": {"name": "kuramoto_sivashinsky", "n_points": 4}}, [], "system.n_points"),
    ({}, ["time.dt=-1"], "time.dt = -1.0 must be positive"),
])
def test_an_error_of_the_case_itself_is_not_blamed_on_its_quick_table(raw, overrides, message):
    """A case with a [quick] table, loaded without --quick: its own mistakes (and a --set's) are reported
    as such; they were labelled "[quick]", sending the user to a table that holds none of those keys."""
    case = {"system": {"name": "kuramoto_sivashinsky"}, "quick": {"training.epochs": 2}}
    for section, values in raw.items():
        case[section] = {**case.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message) as caught:
        parse_case(case, overrides=overrides, source="case.toml")
    assert "[quick]" not in str(caught.value)


def test_overrides_parse_toml_literals_and_apply_last():
    assert parse_override("training.epochs=20") == (["training", "epochs"], 20)
    assert parse_override("initial_condition.value=[1, 2.5]") == (["initial_condition", "value"], [1, 2.5])
    assert parse_override("compute.device=cpu") == (["compute", "device"], "cpu")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("epochs")
    # an unclosed list was taken for the string '[1, 2' and blamed on the key's type
    for broken in ("initial_condition.value=[1, 2", 'case.name="run', "hybrid.system={n_points = 32"):
        with pytest.raises(ConfigError, match=r"the value is not valid TOML .*close its brackets and quotes"):
            parse_override(broken)
    case = parse_case({"system": {"name": "two_body"}, "quick": {"time.n_steps": 10}},
                      overrides=["time.n_steps=7"], quick=True)
    assert case.time.n_steps == 7
    assert parse_case({"system": {"name": "two_body"}, "quick": {"time.n_steps": 10}}, quick=True).time.n_steps == 10


def test_a_misspelled_section_in_an_override_is_named_there_with_a_suggestion():
    """It was reported as the case file's "unknown section [tim]", with no suggestion."""
    with pytest.raises(ConfigError, match=r"^--set tim.dt=1: unknown section \[tim\]; did you mean time.dt\?$"):
        parse_case({"system": {"name": "two_body"}}, overrides=["tim.dt=1"], source="case.toml")
    with pytest.raises(ConfigError, match=r"^case.toml \[quick\] trainig.epochs: unknown section \[trainig\]; "
                                          r"did you mean training.epochs\?$"):
        parse_case({"system": {"name": "two_body"}, "quick": {"trainig.epochs": 1}}, quick=True, source="case.toml")
    with pytest.raises(ConfigError, match=r"unknown section \[zzz\] \(known sections: case, compute,"):
        parse_case({"system": {"name": "two_body"}}, overrides=["zzz.a=1"])
    # a key abbreviated by its words' initials is found too (difflib finds nothing near "lr")
    with pytest.raises(ConfigError, match=r"unknown key training.lr; did you mean training.learning_rate\?"):
        parse_case({"system": {"name": "two_body"}}, overrides=["training.lr=0.1"])
    # an unknown key is said where it was written: the file, a --set, or the applied [quick] table
    for raw, overrides, quick, origin in [
            ({"system": {"name": "two_body", "mu": 1.0}}, [], False, "case.toml"),
            ({"system": {"name": "two_body"}}, ["training.lr=0.1"], False, "--set training.lr=0.1"),
            ({"system": {"name": "two_body"}, "quick": {"training.lr": 0.1}}, [], True, "case.toml [quick] training.lr")]:
        with pytest.raises(ConfigError) as caught:
            parse_case(raw, overrides=overrides, quick=quick, source="case.toml")
        assert str(caught.value).startswith(f"{origin}: unknown key ")


@pytest.mark.parametrize("name", ["../../escape", "", "a b/c", "..", "runs/x"])
def test_a_case_name_that_is_not_a_folder_name_is_refused_where_it_names_the_folder(name, tmp_path, monkeypatch,
                                                                                    capsys):
    """It names the default output folder runs/<name>: "../../escape" wrote outside runs/, "" to
    runs-quick/. Checked there only: a case stored in an earlier file keeps parsing (its closure's
    setup and its evaluation settings are read from it)."""
    from hybridnde.cli import main
    from hybridnde.commands.common import check_folder_name

    with pytest.raises(ConfigError, match=r"case.name = .*: give a folder name of letters, digits"):
        check_folder_name(name)
    check_folder_name("ks_l22.v-2")
    assert parse_case({"system": {"name": "two_body"}, "case": {"name": name}}).case.name == name
    monkeypatch.chdir(tmp_path)
    case = tmp_path / "case.toml"
    case.write_text(f'[case]\nname = "{name}"\n[system]\nname = "lorenz63"\n[initial_condition]\n'
                    'distribution = "point"\nvalue = [1.0, 1.0, 1.0]\n[time]\nn_steps = 2\n')
    assert main(["simulate", str(case)]) == 2
    assert "give a folder name" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["case.toml"]
    assert main(["simulate", str(case), "--out", str(tmp_path / "t.nc")]) == 0  # a path given: the name names nothing


def test_quick_on_a_case_without_a_quick_table_says_it_changes_nothing(caplog):
    with caplog.at_level("WARNING", logger="hybridnde.config.case"):
        parse_case({"system": {"name": "two_body"}}, quick=True, source="bare.toml")
        parse_case({"system": {"name": "two_body"}, "quick": {"time.n_steps": 10}}, quick=True, source="small.toml")
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["bare.toml has no [quick] table"]


def test_checksum_tracks_sections():
    a = parse_case({"system": {"name": "two_body"}})
    b = parse_case({"system": {"name": "two_body"}, "training": {"epochs": 3}})
    assert a.checksum() != b.checksum()
    assert a.checksum(["system", "time"]) == b.checksum(["system", "time"])


def test_missing_case_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_case(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[system\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_case(bad)


def test_outputs_made_before_the_penalty_field_existed_match_only_cases_whose_penalty_acts_on_the_rhs():
    """Before training.jacobian_penalty_field every Jacobian penalty acted on the whole right-hand side;
    its default now penalises the closure in a residual host. A closure trained then must not count as
    this case's under "auto" (it was trained differently), only under "rhs"; without a penalty the key
    changes nothing."""
    from hybridnde.training.build import TRAINING_SECTIONS

    def case(*overrides):
        return load_case(CASES_DIR / "ks_l22.toml", overrides=list(overrides))

    def stored_before_the_key(config):  # what an output made before the key existed recorded
        mapping = tomllib.loads(config.to_toml())
        del mapping["training"]["jacobian_penalty_field"]
        return tomli_w.dumps(mapping)

    plain = case()
    assert {case(f"training.jacobian_penalty_field='{f}'").checksum() for f in ("auto", "closure", "rhs")} == \
        {plain.checksum()}
    assert plain.changed_keys(stored_before_the_key(plain), ["training"]) == []
    penalty = "training.jacobian_penalty='frobenius'"
    old = stored_before_the_key(case(penalty))
    on_rhs, auto = case(penalty, "training.jacobian_penalty_field='rhs'"), case(penalty)
    assert on_rhs.changed_keys(old, ["training"]) == []
    assert auto.changed_keys(old, ["training"]) == ["training.jacobian_penalty_field ('rhs' -> 'closure')"]
    assert auto.checksum(TRAINING_SECTIONS) == case(penalty, "training.jacobian_penalty_field='closure'").checksum(
        TRAINING_SECTIONS) != on_rhs.checksum(TRAINING_SECTIONS)
    # what the code before the key existed (7d4369c) computed for this case with the penalty
    assert on_rhs.checksum(TRAINING_SECTIONS).startswith("53146572851b")


def test_the_descriptive_attributes_change_no_checksum_and_no_list_of_changes():
    """``[output]``'s institution, references and comment only describe the files: giving them must not
    remake a truth, closure or rollout, nor refuse a resume."""
    from hybridnde.config.case import DESCRIPTIVE_KEYS
    from hybridnde.rollout_resume import rollout_checksum

    case = load_case(CASES_DIR / "ks_l22.toml")
    described = load_case(CASES_DIR / "ks_l22.toml", overrides=[f"{section}.{key}='given'"
                                                                 for section, key in DESCRIPTIVE_KEYS])
    assert [getattr(described.output, key) for _, key in DESCRIPTIVE_KEYS] == ["given"] * 3
    assert described.checksum() == case.checksum() and rollout_checksum(described) == rollout_checksum(case)
    assert described.changed_keys(case.to_toml(), ["output"]) == []
    with pytest.raises(ConfigError, match=r"output.comment: contains a NUL character, which a NetCDF attribute "
                                          r"cannot hold; remove it"):
        load_case(CASES_DIR / "ks_l22.toml", overrides=['output.comment="before\\u0000after"'])
    compressed = load_case(CASES_DIR / "ks_l22.toml", overrides=["output.compression_level=9"])
    assert rollout_checksum(compressed) != rollout_checksum(case)  # the other [output] keys still count


def test_keys_added_later_leave_checksums_of_cases_that_do_not_set_them_alone():
    """Outputs, closure files and checkpoints store the checksum of the case they were made with: a key
    added since (``ADDED_KEYS``) must not make every one of them look out of date while it is at its
    default, nor be named as a change against a stored case that lacks it."""
    from hybridnde.config.case import ADDED_KEYS
    from hybridnde.training.build import TRAINING_SECTIONS

    case = load_case(CASES_DIR / "ks_l22.toml")
    # the training checksum of this case before training.jacobian_penalty_iterations existed (commit ff08746)
    assert case.checksum(TRAINING_SECTIONS).startswith("d312fca04683")
    another = {("training", "jacobian_penalty_iterations"): (0, 3), ("evaluate", "error_scale"): ("rms", "anomaly")}
    assert set(another) == set(ADDED_KEYS)
    for section, key in ADDED_KEYS:
        default, value = another[section, key]
        assert getattr(getattr(case, section), key) == default
        changed = case.replace(**{section: dataclasses.replace(getattr(case, section), **{key: value})})
        assert changed.checksum() != case.checksum()
        stored = tomllib.loads(case.to_toml())
        del stored[section][key]
        assert case.changed_keys(tomli_w.dumps(stored), [section]) == []
        assert changed.changed_keys(tomli_w.dumps(stored), [section]) == [f"{section}.{key} ({default!r} -> {value!r})"]


def test_a_case_file_that_is_not_utf8_text_or_is_a_folder_says_so(tmp_path):
    """Bytes that are not UTF-8 gave a UnicodeDecodeError traceback; a folder was "does not exist"."""
    from hybridnde.config import load_case

    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe[system]\n")
    with pytest.raises(ConfigError, match="binary.toml: not UTF-8 text"):
        load_case(tmp_path / "binary.toml")
    (tmp_path / "folder.toml").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        load_case(tmp_path / "folder.toml")


def test_a_gpu_index_beyond_the_machines_gpus_is_a_config_error(monkeypatch):
    """cuda:3 on a one-GPU machine passed the checks and failed mid-stage with a raw CUDA error."""
    import torch

    from hybridnde.systems import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"compute.device = 'cuda:3' but this machine has 1 GPU\(s\), cuda:0 to cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda:0") and resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto", local_rank=5) == torch.device("cuda:0")


@pytest.mark.parametrize("name", ["meta", "mps", "cpu:5", "gpu"])
def test_devices_torch_knows_but_the_package_is_not_made_for_are_refused(name):
    """`export --device meta` passed resolve_device and failed with NotImplementedError (a traceback)."""
    from hybridnde.systems import resolve_device

    with pytest.raises(ConfigError, match=rf"--device = '{name}' is not a device; use 'auto', 'cpu', 'cuda'"):
        resolve_device(name, field="--device")


def test_the_first_index_past_the_last_gpu_is_refused(monkeypatch):
    from hybridnde.config import ConfigError
    import torch

    from hybridnde.systems import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="has 2 GPU"):
        resolve_device("cuda:2")


def test_a_changed_system_with_the_case_files_lyapunov_exponent_is_warned_about(caplog, monkeypatch):
    """--set system.rho=35 kept the file's evaluate.lyapunov_exponent (rho = 28's 0.9056), so its times in
    Lyapunov times were another system's, without a word. Discretisation keys and a restated exponent
    (even the same value) are no reason; neither is a case without one. Said once per process (each
    --compare variant is parsed)."""
    from hybridnde.config import fields
    point = {"distribution": "point", "value": [1.0, 1.0, 1.0]}
    raw = {"system": {"name": "lorenz63"}, "evaluate": {"lyapunov_exponent": 0.9056}, "initial_condition": point}
    ks = {"system": {"name": "kuramoto_sivashinsky"}, "evaluate": {"lyapunov_exponent": 0.045}}
    cases = [(raw, ["system.rho=35"], "system.rho changed"),
             (raw, ["system.rho=35", "system.sigma=9"], "system.rho, system.sigma changed"),
             (raw, ["system.rho=35", "evaluate.lyapunov_exponent=1.2"], None),
             (raw, ["system.rho=35", "evaluate.lyapunov_exponent=0.9056"], None),
             (raw, ["system.rho=28"], None), (raw, ["training.epochs=3"], None),
             ({"system": {"name": "lorenz63"}, "initial_condition": point}, ["system.rho=35"], None),
             (ks, ["system.n_points=32", "system.method=\"finite_difference\"", "time.integrator=\"rk4\""], None),
             (ks, ["system.domain_length=44"], "system.domain_length changed")]
    for table, overrides, said in cases:
        monkeypatch.setattr(fields, "_warned", set())
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            parse_case(table, overrides=overrides, source="case.toml")
        warnings = [record.getMessage() for record in caplog.records if "lyapunov_exponent" in record.getMessage()]
        assert warnings == ([] if said is None else [warnings[0]]), (overrides, warnings)
        if said:
            assert said in warnings[0] and warnings[0].startswith("case.toml: evaluate.lyapunov_exponent = ")
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                parse_case(table, overrides=overrides, source="case.toml")  # another variant, the same words
            assert not any("lyapunov_exponent" in record.getMessage() for record in caplog.records)


def test_a_key_of_the_method_neither_the_truth_nor_the_host_uses_is_warned_about(caplog, monkeypatch):
    """dealiasing_fraction on a finite-difference truth and host, fd_order on a spectral one, were ignored
    without a word; a spectral host of a finite-difference truth does use the truth's dealiasing_fraction."""
    from hybridnde.config import fields

    cases = [("ks_l22.toml", ["system.fd_order=6"], "system.fd_order = 6 is for method = 'finite_difference'"),
             ("ks_fd.toml", ["system.dealiasing_fraction=1.0"], "system.dealiasing_fraction = 1 is for method = "
                                                                  "'spectral'"),
             ("ks_fd.toml", ["system.dealiasing_fraction=1.0", "hybrid.system.method=\"spectral\""], None),
             ("ks_l22.toml", ["system.dealiasing_fraction=1.0"], None), ("ks_fd.toml", ["system.fd_order=6"], None)]
    for name, overrides, said in cases:
        monkeypatch.setattr(fields, "_warned", set())
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            load_case(CASES_DIR / name, overrides=overrides)
        warnings = [record.getMessage() for record in caplog.records if "neither the truth nor the host" in
                    record.getMessage()]
        assert [said in warning for warning in warnings] == ([] if said is None else [True]), (name, overrides)


def test_a_host_can_drop_a_term_by_a_zero_parameter():
    """[hybrid.system] = {rho = 0} is the Lorenz host without the rho x term, {gravity = 0} the double
    pendulum without gravity (0 was refused: "must be positive"): the truth's right-hand side less the
    host's is the dropped term alone. A negative value is still refused."""
    import torch

    from hybridnde.systems import build_host_solver, build_solver

    generator = torch.Generator().manual_seed(0)
    lorenz = load_case(CASES_DIR / "lorenz63.toml",
                       overrides=["hybrid.setup=\"residual\"", "hybrid.system={rho = 0.0}"])
    u = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    missing = build_solver(lorenz.system, lorenz.time).known_rhs(0.0, u) - build_host_solver(lorenz).known_rhs(0.0, u)
    expected = torch.zeros_like(u)
    expected[:, 1] = lorenz.system.rho * u[:, 0]
    torch.testing.assert_close(missing, expected, rtol=1e-15, atol=1e-13)
    pendulum = load_case(CASES_DIR / "double_pendulum.toml",
                         overrides=["hybrid.setup=\"residual\"", "hybrid.system={gravity = 0.0}"])
    at_rest = torch.cat([torch.randn(5, 2, dtype=torch.float64, generator=generator), torch.zeros(5, 2)], dim=1)
    host = build_host_solver(pendulum).known_rhs(0.0, at_rest)
    assert host.abs().max().item() == 0.0  # no gravity, no motion: nothing moves it
    assert build_solver(pendulum.system, pendulum.time).known_rhs(0.0, at_rest)[:, 2:].abs().min().item() > 0
    with pytest.raises(ConfigError, match="rho"):
        load_case(CASES_DIR / "lorenz63.toml", overrides=["system.rho=-1.0"])
