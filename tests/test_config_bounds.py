"""Each key's own type and bounds, and the rules joining keys, refuse a bad case before any work starts,
with a message that names the field and the fix; the values at the edge of each bound are accepted."""
import re

import pytest

from hybridnde.config import ConfigError, parse_case

TWO_BODY = {"system": {"name": "two_body"}}
LORENZ_POINT = {"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "point", "value": [1, 1, 1]}}
KS = {"system": {"name": "kuramoto_sivashinsky"}}


def case_with(base, **sections):
    return {**base, **sections}


@pytest.mark.parametrize("raw, message", [
    # a true/false key takes no number, a number or integer key no true/false (TOML has both)
    (case_with(TWO_BODY, model={"normalize": 1}), r"^model\.normalize: expected true/false, got 1 \(int\)$"),
    (case_with(TWO_BODY, time={"n_steps": True}), r"^time\.n_steps: expected integer, got True \(bool\)$"),
    (case_with(TWO_BODY, time={"dt": True}), r"^time\.dt: expected number, got True \(bool\)$"),
    # a list key takes no string (it would be read letter by letter)
    ({"system": {"name": "rigid_body", "moments_of_inertia": "abc"}},
     r"^system\.moments_of_inertia: expected a list of number, got 'abc'$"),
    # a fixed-length list refuses one entry too many, not only too few
    (case_with(TWO_BODY, initial_condition={"eccentricity": [0.1, 0.2, 0.3]}),
     r"^initial_condition\.eccentricity has 3 entries; it needs exactly 2$"),
    # a misspelled choice is named, with the choices and the closest one
    (case_with(TWO_BODY, training={"regularizer": "jvpp"}),
     r"^training\.regularizer = 'jvpp' is not one of \['none', 'jvp', 'fd'\] \(did you mean 'jvp'\?\)$"),
    (case_with(TWO_BODY, training={"weight_decay": -0.1}), r"^training\.weight_decay = -0\.1 must be zero or positive$"),
    (case_with(TWO_BODY, output={"compression_level": 10}), r"^output\.compression_level = 10 must be at most 9$"),
    (case_with(TWO_BODY, output={"compression_level": -1}), r"^output\.compression_level = -1 must be at least 0$"),
])
def test_a_value_of_the_wrong_type_or_out_of_bounds_is_refused_naming_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_case(raw)


@pytest.mark.parametrize("section, key, value", [
    ("output", "compression_level", 0),   # minimum
    ("output", "compression_level", 9),   # maximum
    ("training", "weight_decay", 0),      # nonnegative: zero is allowed
    ("training", "lr_gamma", 1.0),        # positive, maximum 1
])
def test_the_value_at_the_edge_of_a_bound_is_accepted(section, key, value):
    case = parse_case(case_with(TWO_BODY, **{section: {key: value}}))
    assert getattr(getattr(case, section), key) == value


def test_an_integral_number_for_an_integer_key_becomes_an_integer():
    n_steps = parse_case(case_with(TWO_BODY, time={"n_steps": 3.0})).time.n_steps
    assert n_steps == 3 and type(n_steps) is int
    assert parse_case(case_with(TWO_BODY, time={"n_steps": float(2 ** 53)})).time.n_steps == 2 ** 53


@pytest.mark.parametrize("value, message", [
    # 1e20 steps with save_every = 1e20 ran, then failed writing the attribute in a netCDF4 traceback
    (1e20, r"^time\.n_steps = 1e\+20 is beyond the integers a float holds exactly \(2\*\*53\); write it as an integer$"),
    (2.0 ** 53 + 2, r"beyond the integers a float holds exactly"),
    (2 ** 63, r"^time\.n_steps = 9223372036854775808 does not fit a 64-bit integer; give a smaller number$"),
    (-2 ** 63 - 1, r"does not fit a 64-bit integer"),
])
def test_an_integer_key_refuses_what_no_64_bit_integer_holds(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_case(case_with(TWO_BODY, time={"n_steps": value}))
    assert parse_case(case_with(TWO_BODY, time={"n_steps": 2 ** 63 - 1})).time.n_steps == 2 ** 63 - 1


def fd_stability_limit():
    with pytest.raises(ConfigError) as caught:
        parse_case(case_with({"system": {"name": "kuramoto_sivashinsky", "method": "finite_difference"}},
                             time={"dt": 0.01}))
    return float(re.search(r"stability limit ([0-9.e-]+) ", str(caught.value)).group(1))


def test_a_finite_difference_step_just_past_the_stability_limit_is_refused_and_one_below_accepted():
    limit = fd_stability_limit()
    fd = {"system": {"name": "kuramoto_sivashinsky", "method": "finite_difference"}}
    with pytest.raises(ConfigError, match=r"^time\.dt = .* exceeds the rk4 stability limit .*set time\.dt <="):
        parse_case(case_with(fd, time={"dt": limit * 1.2}))
    assert parse_case(case_with(fd, time={"dt": limit * 0.9})).time.dt == pytest.approx(limit * 0.9)


@pytest.mark.parametrize("raw, message", [
    ({"system": {"name": "kuramoto_sivashinsky", "method": "finite_difference"},
      "time": {"integrator": "dopri5", "dt": 0.001}},
     r"^time\.integrator = 'dopri5': Kuramoto-Sivashinsky is stiff; use 'etdrk4' \(spectral\) or 'rk4'"),
    (case_with(KS, hybrid={"integrator": "rk4"}),
     r"^hybrid\.integrator = 'rk4' does not fit the host \(spectral solver\); use 'etdrk4', or 'auto'$"),
    (case_with(KS, hybrid={"system": {"name": "lorenz63"}}), r"^hybrid\.system\.name: .*drop the key$"),
    (case_with(KS, model={"kind": "periodic_cnn", "kernel_size": 6}),
     r"^model\.kernel_size = 6: give an odd width .* e\.g\. 7$"),
    ({"system": {"name": "kuramoto_sivashinsky", "n_points": 32}, "hybrid": {"system": {"n_points": 16}},
      "model": {"kind": "periodic_cnn", "kernel_size": 35}},
     r"^model\.kernel_size = 35 is wider than twice the host grid \(N = 16\); give at most 33$"),
    (case_with(KS, hybrid={"system": {"n_points": 24}}),
     r"^hybrid\.system\.n_points = 24 must divide the truth's system\.n_points = 64"),
    (case_with(KS, hybrid={"system": {"domain_length": 30.0}}),
     r"^hybrid\.system\.domain_length must equal system\.domain_length$"),
    (case_with(LORENZ_POINT, hybrid={"setup": "second_order"}),
     r"^hybrid\.setup = 'second_order' needs an ODE state of positions then velocities .*lorenz63"),
    ({"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "uniform_box", "low": [0, 0],
                                                            "high": [1, 1]}},
     r"^initial_condition\.low has 2 entries; lorenz63 has 3 state components$"),
    ({"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "gaussian", "value": [1, 1, 1],
                                                            "std": [1, 1]}},
     r"^initial_condition\.std has 2 entries; give 1 or 3$"),
    ({"system": {"name": "lorenz63"}, "initial_condition": {"distribution": "two_body_orbit"}},
     r"^initial_condition\.distribution = 'two_body_orbit' is for two_body, not lorenz63$"),
    (case_with(KS, initial_condition={"distribution": "uniform_box", "low": [0], "high": [1]}),
     r"^initial_condition\.distribution = 'uniform_box' does not fit a field; use 'random_fourier' or 'file'"),
    ({"system": {"name": "kuramoto_sivashinsky", "n_points": 16}, "initial_condition": {"n_modes": 9}},
     r"^initial_condition\.n_modes = 9: a grid of 16 points holds modes with random phases up to 7 \(below N/2\)"),
    ({"system": {"name": "kuramoto_sivashinsky", "n_points": 16}, "initial_condition": {"n_modes": 8}},
     r"^initial_condition\.n_modes = 8: a grid of 16 points holds .* up to 7"),  # the Nyquist mode: no sine part
])
def test_a_rule_joining_sections_is_refused_naming_the_field_and_the_fix(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_case(raw)


def test_the_largest_values_the_joining_rules_allow_are_accepted():
    widest = parse_case({"system": {"name": "kuramoto_sivashinsky", "n_points": 32},
                         "hybrid": {"system": {"n_points": 16}}, "model": {"kind": "periodic_cnn", "kernel_size": 33}})
    assert widest.model.kernel_size == 33  # 2N + 1, as the error message promises
    modes = parse_case({"system": {"name": "kuramoto_sivashinsky", "n_points": 16}, "initial_condition": {"n_modes": 7}})
    assert modes.initial_condition.n_modes == 7  # (N - 1) // 2: below the Nyquist mode
    assert len(parse_case({"system": {"name": "lorenz63"}, "initial_condition": {
        "distribution": "gaussian", "value": [1, 1, 1], "std": [1]}}).initial_condition.std) == 1


def test_a_set_that_changes_the_system_is_named_when_the_files_keys_then_do_not_fit(tmp_path):
    """It blamed the case file alone for a key of the system it gives ("unknown key system.method")."""
    from hybridnde.config import load_case

    case = tmp_path / "ks.toml"
    case.write_text('[system]\nname = "kuramoto_sivashinsky"\nmethod = "spectral"\n')
    with pytest.raises(ConfigError, match=r"ks.toml: unknown key system.method .*; --set system.name=\"lorenz63\" chose "
                                          r"another system, which has no such key: start from a case file of that"):
        load_case(case, overrides=['system.name="lorenz63"'])


def test_a_case_file_with_a_byte_order_mark_is_read(tmp_path):
    """Some editors write one; it was "not valid TOML (Invalid statement (at line 1, column 1))"."""
    from hybridnde.config import load_case

    case = tmp_path / "bom.toml"
    case.write_bytes(b"\xef\xbb\xbf" + b'[system]\nname = "two_body"\n')
    assert load_case(case).system.name == "two_body"
