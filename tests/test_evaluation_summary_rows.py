"""What ``hybridnde evaluate`` prints and compares, row by row: the text table (``format_summary``), the
shares rounded down (``percent_down``), the Lyapunov comparison's settings (``lyapunov_comparison``) and the
same-system check (``check_same_system``), each against hand-worked values."""
import math

import numpy as np
import pytest

from hybridnde.errors import DataError
from hybridnde.evaluation_summary import format_summary, percent_down


def _spread(median, low, high):
    return {"median": median, "p10": low, "p90": high}


def _metrics(**extra):
    """A result with a different number in every cell, so a cell showing another's value is seen."""
    metrics = {"spread_percentiles": [10.0, 90.0], "members": 7, "times": 51, "horizon": 25.0, "threshold": 0.4,
               "valid_prediction_time": _spread(3.5, 1.25, 6.75),
               "valid_prediction_time_lyapunov": _spread(3.17, 1.13, 6.11),
               "reached_horizon_fraction": 2 / 7, "stable_fraction": 5 / 7,
               "initial_error": _spread(0.0123, 0.00456, 0.0789),
               "invariant_drift": {"energy": {"rollout": _spread(0.031, 0.021, 0.041),
                                              "reference": _spread(0.0007, 0.0001, 0.0009)}},
               "mean_drift": {"rollout": _spread(0.052, 0.042, 0.062), "reference": _spread(3e-16, 1e-16, 5e-16)},
               "kl_divergence": {"value": 0.875, "bins": 40},
               "lyapunov": {"model": {"exponent": 1.125}, "truth": {"exponent": 0.9056}},
               "cost": {"rollout": {"seconds": 2.5}, "reference": {"seconds": 9.75}},
               "rollout": "model.nc", "reference": "truth.nc", "case": "lorenz",
               "notes": ["first note", "second note"]}
    metrics.update(extra)
    return metrics


def _rows(text):
    """``{row name: value}`` of the table's two-space-indented rows."""
    rows = {}
    for line in text.splitlines()[2:]:
        if line.startswith("  note: "):
            continue
        name, value = line.strip().split("  ", 1)
        rows[name.strip()] = value.strip()
    return rows


def test_members_at_rest_are_shown_as_in_the_report_and_nothing_when_none_rest():
    """The JSON said 4 members at rest, 2 already while valid; the printed table said nothing (report.md did)."""
    rows = _rows(format_summary(_metrics(resting_members=4, resting_while_valid=2)))
    assert rows["at rest at the end"] == "4 of 7 members, while the truth moves (last quarter of the horizon)"
    assert rows["before valid ended"] == "2 of 7 members"
    rows = _rows(format_summary(_metrics(resting_members=0, resting_while_valid=0)))
    assert "at rest at the end" not in rows and "before valid ended" not in rows


def test_each_row_shows_its_own_median_and_percentiles_low_then_high():
    text = format_summary(_metrics())
    lines = text.splitlines()
    assert lines[0] == "lorenz: model.nc against truth.nc"
    assert lines[1] == "(median [p10, p90] over members)"
    rows = _rows(text)
    assert rows["valid prediction time"] == "3.5  [1.25, 6.75]"
    assert rows["in Lyapunov times"] == "3.17  [1.13, 6.11]"
    assert rows["initial error"] == "0.0123  [0.00456, 0.0789]"
    assert rows["energy drift"] == "0.031  [0.021, 0.041]  (reference 0.0007)"
    assert rows["spatial mean drift"] == "0.052  [0.042, 0.062]  (of the truth's rms; reference 3e-16)"
    assert rows["members x times"] == "7 x 51 (horizon 25)"


def test_the_fractions_are_percentages_of_members_each_of_its_own_count():
    """Rounded down to 0.1%: 2 / 7 = 28.57% reads 28.5%, and 999 stable members of 1000 never read 100%."""
    rows = _rows(format_summary(_metrics()))
    assert rows["valid to the horizon"] == "28.5% of members"
    assert rows["stable to the horizon"] == "71.4% of members"
    nearly_all = _rows(format_summary(_metrics(stable_fraction=0.999, reached_horizon_fraction=1.0)))
    assert nearly_all["stable to the horizon"] == "99.9% of members"
    assert nearly_all["valid to the horizon"] == "100% of members"


def test_an_undefined_value_reads_inf_not_a_number():
    """A member never leaving the threshold has no valid prediction time (None in the result): the table must
    not show it as 0 or as a number."""
    rows = _rows(format_summary(_metrics(valid_prediction_time=_spread(None, 2.0, None))))
    assert rows["valid prediction time"] == "inf/undefined  [2, inf/undefined]"


def test_numbers_keep_four_significant_digits():
    rows = _rows(format_summary(_metrics(threshold=0.123456)))
    assert rows["error threshold"] == "0.1235"


def test_an_anomaly_threshold_says_what_it_is_relative_to():
    plain = _rows(format_summary(_metrics()))["error threshold"]
    anomaly = _rows(format_summary(_metrics(error_scale_kind="anomaly")))["error threshold"]
    assert plain == "0.4"
    assert anomaly.startswith("0.4 (of the error over the truth's standard deviation")


def test_the_lyapunov_exponents_the_kl_bins_the_costs_and_every_note_are_shown():
    text = format_summary(_metrics())
    rows = _rows(text)
    assert rows["Lyapunov exponent"] == "model 1.125, truth 0.9056"
    # with what they were measured on: a lone member's estimate has no error bar and says so
    measured = _metrics()
    measured["lyapunov"] = {"model": {"exponent": 0.9051, "standard_error": 0.0123, "members": 8, "duration": 22.08},
                            "truth": {"exponent": 0.8113, "standard_error": math.nan, "members": 1, "duration": 22.08}}
    assert _rows(format_summary(measured))["Lyapunov exponent"] == (
        "model 0.9051 +- 0.012 (8 members x 22.1 time units), truth 0.8113 (1 member x 22.1 time units; one member: "
        "no error bar)")
    measured["lyapunov"]["model"] = {"exponent": 0.2, "standard_error": 0.01, "members": 4, "duration": 9.0,
                                     "diverged": 2}
    measured["lyapunov"]["truth"] = {"exponent": math.nan, "standard_error": math.nan, "members": 3, "duration": 9.0,
                                     "diverged": 3}
    assert _rows(format_summary(measured))["Lyapunov exponent"] == (
        "model 0.2 +- 0.01 (2 members x 9 time units, 2 more diverged), truth n/a (3 of 3 members diverged)")
    assert rows["KL divergence"] == "0.875 nats (40-bin histograms)"
    assert rows["rollout seconds"] == "2.5" and rows["reference seconds"] == "9.75"
    assert text.splitlines()[-2:] == ["  note: first note", "  note: second note"]


def test_the_spectrum_row_counts_the_compared_modes_and_names_their_range():
    rows = _rows(format_summary(_metrics(spectrum={"distance": 0.25, "compared_modes": [2, 3, 5, 9]})))
    assert rows["spectrum distance"] == "0.25 (mean |log10 E/E*|, 4 modes in 2-9)"


def test_the_finite_share_is_named_below_one_only():
    """A blown-up model's statistics are over the finite states only: any share below 1 says so (here 80%),
    an all-finite one does not."""
    part = _rows(format_summary(_metrics(statistics_finite_share=0.8)))["KL divergence"]
    whole = _rows(format_summary(_metrics(statistics_finite_share=1.0)))["KL divergence"]
    assert part == "0.875 nats (40-bin histograms; over the 80% finite states)"
    assert whole == "0.875 nats (40-bin histograms)"


@pytest.mark.parametrize("share", [0.0, 0.001, 0.1234, 0.5, 0.62649, 0.999, 0.9996, 0.99999, 1.0])
def test_percent_down_rounds_down_to_a_tenth_of_a_percent(share):
    shown = float(percent_down(share).rstrip("%"))
    assert shown <= 100 * share + 1e-9 < shown + 0.1 + 1e-9  # the largest tenth not above the share
    if share < 1:
        assert percent_down(share) != "100%"


@pytest.mark.parametrize("share", [1e-6, 0.0004, 0.000999])
def test_a_share_just_over_zero_does_not_read_zero(share):
    """4 stable members of 10,000 read "0% of members", as if none were."""
    assert percent_down(share) == "<0.1%"


# -- the Lyapunov comparison's settings ------------------------------------------------------------------

LORENZ = """
[case]
name = "lyap"
[system]
name = "lorenz63"
[time]
dt = 0.01
n_steps = 100
save_every = 10
[initial_condition]
distribution = "point"
value = [1.0, 1.0, 1.0]
[evaluate]
lyapunov_exponent = 0.8
"""


def _pair(members=5, times=(2.0, 3.0, 6.5)):
    from hybridnde.alignment import AlignedPair

    rng = np.random.default_rng(0)
    predicted = rng.normal(size=(members, len(times), 3))
    truth = rng.normal(size=(members, len(times), 3))
    return AlignedPair(times=np.asarray(times), predicted=predicted, truth=truth, members=np.arange(members),
                       reference_members=np.arange(members), status=np.zeros(members, dtype=int),
                       blowup_time=np.full(members, np.nan), state_dim="component",
                       state_coords=np.arange(3), reference_initial=truth[:, 0] + 100.0)


def _stub_lyapunov(monkeypatch, truth: float, model: float) -> list[dict]:
    """``leading_lyapunov_exponent`` replaced: each call's states and settings are recorded, and the
    exponent returned is ``truth`` for the truth's solver (its first call) and ``model`` for the model's."""
    import hybridnde.metrics.lyapunov as lyapunov_module

    calls = []

    def fake(solver, u0, *, duration, transient=0.0, seed=0, blowup_threshold=math.inf, **_):
        calls.append({"states": u0.numpy().copy(), "duration": duration, "transient": transient, "solver": solver,
                      "blowup_threshold": blowup_threshold})
        value = truth if len(calls) == 1 else model
        return lyapunov_module.LyapunovEstimate(exponent=value, standard_error=0.0,
                                                per_member=np.full(u0.shape[0], value), duration=duration,
                                                diverged=0)

    monkeypatch.setattr(lyapunov_module, "leading_lyapunov_exponent", fake)
    return calls


@pytest.fixture
def recorded_calls(monkeypatch):
    return _stub_lyapunov(monkeypatch, truth=0.5, model=0.75)


def test_lyapunov_runs_twenty_lyapunov_times_after_a_transient_of_ten(recorded_calls):
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    result = lyapunov_comparison(parse_case_text(LORENZ), _pair(), members=3)
    lyapunov_time = 1 / 0.8  # the case's exponent 0.8: a Lyapunov time 1.25
    for call in recorded_calls:
        assert call["duration"] == pytest.approx(20 * lyapunov_time)
        assert call["transient"] == pytest.approx(10 * lyapunov_time)
        # the rollout's bound: unbounded growth is divergence
        assert call["blowup_threshold"] == parse_case_text(LORENZ).rollout.blowup_threshold
    assert result["relative_difference"] == pytest.approx((0.75 - 0.5) / 0.5)
    assert result["closure"] == "none (bare host solver)"


def test_lyapunov_measures_the_members_and_lyapunov_times_the_case_asks_for(recorded_calls):
    """evaluate.lyapunov_members and evaluate.lyapunov_times (a quick case's shorter measurement: ks_fd's 20
    Lyapunov times took 229 of a quick run's 253 s)."""
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    text = LORENZ.replace("lyapunov_exponent = 0.8", "lyapunov_exponent = 0.8\nlyapunov_members = 2\nlyapunov_times = 4")
    lyapunov_comparison(parse_case_text(text), _pair(members=5))
    for call in recorded_calls:
        assert call["states"].shape[0] == 2
        assert call["duration"] == pytest.approx(4 / 0.8) and call["transient"] == pytest.approx(2 / 0.8)
    recorded_calls.clear()
    lyapunov_comparison(parse_case_text(LORENZ), _pair(members=10))  # the defaults: 8 members, 20 Lyapunov times
    assert [call["states"].shape[0] for call in recorded_calls] == [8, 8]
    assert recorded_calls[0]["duration"] == pytest.approx(20 / 0.8)


def test_lyapunov_without_an_exponent_measures_over_the_files_span(recorded_calls):
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    text = LORENZ.replace("lyapunov_exponent = 0.8", "")
    lyapunov_comparison(parse_case_text(text), _pair(times=(2.0, 3.0, 6.5)), members=3)
    assert recorded_calls[0]["duration"] == pytest.approx(6.5 - 2.0)


def test_lyapunov_starts_from_the_first_paired_finite_states_of_each(recorded_calls):
    """The truth from the reference's first states, the model from the rollout's first states (time 0 of
    the pair, not a later one), of the first ``members`` members, a non-finite one left out."""
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    pair = _pair(members=5)
    pair.predicted[1, 0, 2] = np.nan
    lyapunov_comparison(parse_case_text(LORENZ), pair, members=4)
    truth_call, model_call = recorded_calls
    np.testing.assert_array_equal(truth_call["states"], pair.reference_initial[:4])
    np.testing.assert_array_equal(model_call["states"], pair.predicted[[0, 2, 3], 0])


def test_lyapunov_relative_difference_is_over_the_truths_magnitude(monkeypatch):
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    _stub_lyapunov(monkeypatch, truth=-0.25, model=0.5)
    result = lyapunov_comparison(parse_case_text(LORENZ), _pair(), members=2)
    assert result["relative_difference"] == pytest.approx((0.5 - -0.25) / 0.25)


def test_lyapunov_refuses_states_that_do_not_fit_the_cases_host(recorded_calls):
    """A rollout on 32 points against a case of 64: its states would be run by a solver of another grid."""
    from hybridnde.alignment import AlignedPair
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison
    from hybridnde.io import DataError

    states = np.zeros((2, 3, 32))
    pair = AlignedPair(times=np.arange(3.0), predicted=states, truth=states, members=np.arange(2),
                       reference_members=np.arange(2), status=np.zeros(2, dtype=int), blowup_time=np.full(2, np.nan),
                       state_dim="x", state_coords=np.arange(32.0), reference_initial=np.zeros((2, 64)))
    with pytest.raises(DataError, match=r"the rollout's states \(32,\) do not fit the model solver \(64,\)"):
        lyapunov_comparison(parse_case_text(KS), pair, members=2)
    assert not recorded_calls


def test_lyapunov_runs_the_reference_on_its_grid_and_the_model_on_the_predictions(recorded_calls):
    """A 32-point rollout of a 64-point truth (getting started's coarse example): the truth's solver is the
    reference's case's (64 points), the model's the rollout's (32): given the rollout's case, the truth's
    64-point states went into a 32-point solver (SolverStateError traceback)."""
    from hybridnde.alignment import AlignedPair
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison
    from hybridnde.io import DataError

    states = np.ones((2, 3, 32))
    pair = AlignedPair(times=np.arange(3.0), predicted=states, truth=states, members=np.arange(2),
                       reference_members=np.arange(2), status=np.zeros(2, dtype=int), blowup_time=np.full(2, np.nan),
                       state_dim="x", state_coords=np.arange(32.0) * 22 / 32, reference_initial=np.ones((2, 64)))
    coarse, fine = parse_case_text(KS.replace("n_points = 64", "n_points = 32")), parse_case_text(KS)
    lyapunov_comparison(coarse, pair, truth_case=fine, model_case=coarse, members=2)
    assert [call["solver"].state_shape for call in recorded_calls] == [(64,), (32,)]
    with pytest.raises(DataError, match=r"the reference's states \(64,\) do not fit the truth solver \(32,\)"):
        lyapunov_comparison(coarse, pair, members=2)


def test_lyapunov_of_a_simulated_prediction_is_its_own_systems(recorded_calls):
    """A prediction made by `simulate` (a perturbed truth, say) ran its own [system]: its model is that, not
    the case's bare hybrid host (for ks_l22: the equation without its nonlinear term, 5x the exponent)."""
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    case = parse_case_text(LORENZ + "[hybrid.system]\nrho = 20.0\n")
    perturbed = parse_case_text(LORENZ.replace("[system]\n", "[system]\nrho = 30.0\n"))
    result = lyapunov_comparison(case, _pair(), model_case=perturbed, simulated=True, members=2)
    assert [call["solver"].rho for call in recorded_calls] == [28.0, 30.0]
    assert result["closure"] == "none (a simulation: its own system)"
    lyapunov_comparison(case, _pair(), members=2)
    assert recorded_calls[-1]["solver"].rho == 20.0  # a rollout's model: the host of [hybrid]


def test_lyapunov_hands_ode_states_to_the_solvers_in_their_component_order(recorded_calls):
    """Files with columns (z, x, y): the states went to the Lorenz solver as (x, y, z) positions."""
    import dataclasses

    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    pair = _pair(members=2)
    shuffled = dataclasses.replace(pair, state_coords=np.array(["z", "x", "y"]))
    lyapunov_comparison(parse_case_text(LORENZ), shuffled, members=2)
    np.testing.assert_array_equal(recorded_calls[0]["states"], pair.reference_initial[:, [1, 2, 0]])
    np.testing.assert_array_equal(recorded_calls[1]["states"], pair.predicted[:, 0][:, [1, 2, 0]])


def test_lyapunov_without_a_finite_first_state_is_undefined_with_a_note(recorded_calls):
    """Every member blew up before the first common time: a torch reshape traceback (exit 1)."""
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import lyapunov_comparison

    pair = _pair(members=2)
    pair.predicted[:, 0] = np.nan
    result = lyapunov_comparison(parse_case_text(LORENZ), pair, members=2)
    assert len(recorded_calls) == 1  # the truth's only
    assert math.isnan(result["model"]["exponent"]) and math.isnan(result["relative_difference"])
    assert result["model"]["note"] == "no finite state of the rollout at the first common time to start from"


def test_a_rollout_recording_no_closure_has_none():
    from hybridnde.evaluation_lyapunov import recorded_closure

    assert recorded_closure({}) is None
    assert recorded_closure({"closure_checksum": "none"}) is None
    assert recorded_closure({"closure_checksum": ""}) is None
    assert recorded_closure({"closure_checksum": "ab12"}) == "ab12"


# -- the same-system check ---------------------------------------------------------------------------------

KS = """
[case]
name = "ks"
[system]
name = "kuramoto_sivashinsky"
n_points = 64
[time]
dt = 0.25
n_steps = 8
[initial_condition]
members = 1
"""


def _attrs(text, **extra):
    return {"case_toml": text, **extra}


def test_another_physics_parameter_is_refused_naming_it_from_rollout_to_reference(tmp_path):
    from hybridnde.evaluation_case import check_same_system
    from hybridnde.io import DataError

    rollout = _attrs(LORENZ.replace("[system]\n", "[system]\nrho = 30.0\n"), stage="rollout")
    with pytest.raises(DataError, match=r"system\.rho \(30\.0 -> 28\.0\) \(rollout -> reference\)"):
        check_same_system(rollout, _attrs(LORENZ), tmp_path / "r.nc", tmp_path / "t.nc")


def test_a_simulated_model_of_another_system_is_scored_with_a_note(tmp_path):
    from hybridnde.evaluation_case import check_same_system

    rollout = _attrs(LORENZ.replace("[system]\n", "[system]\nrho = 30.0\n"), stage="simulate")
    note = check_same_system(rollout, _attrs(LORENZ), tmp_path / "r.nc", tmp_path / "t.nc")
    assert "simulated for another system" in note and "system.rho (30.0 -> 28.0)" in note


KS_FD = KS.replace("n_points = 64", 'n_points = 32\nmethod = "finite_difference"\nfd_order = 4').replace("0.25", "0.01")


@pytest.mark.parametrize("base, other", [(KS, KS.replace("n_points = 64", "n_points = 32")),
                                         (KS, KS.replace("n_points = 64", "n_points = 64\ndealiasing_fraction = 1.0")),
                                         (KS_FD, KS_FD.replace("fd_order = 4", "fd_order = 2"))])
def test_another_discretisation_of_the_same_system_is_not_another_system(tmp_path, base, other):
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_case import check_same_system, system_differences

    assert system_differences(parse_case_text(base), parse_case_text(other)) == []
    assert check_same_system(_attrs(other, stage="rollout"), _attrs(base), tmp_path / "r.nc", tmp_path / "t.nc") is None


def test_files_of_differently_named_systems_are_refused_naming_both_and_files_without_a_case_left_alone(tmp_path):
    """A Lorenz file against a KS truth was refused by the state check, whose advice (transpose the
    dimensions) could not help: the stored cases name the two systems."""
    from hybridnde.evaluation_case import check_same_system

    with pytest.raises(DataError, match=r"r.nc holds lorenz63 states \(case '.*'\) and .*t.nc kuramoto_sivashinsky"):
        check_same_system(_attrs(LORENZ, stage="rollout"), _attrs(KS), tmp_path / "r.nc", tmp_path / "t.nc")
    assert check_same_system({}, _attrs(KS), tmp_path / "r.nc", tmp_path / "t.nc") is None


def test_an_unreadable_stored_case_is_none_and_warned_unless_quiet(caplog):
    from hybridnde.evaluation_case import case_from_attributes

    assert case_from_attributes({}, "f.nc") is None
    with caplog.at_level("WARNING"):
        assert case_from_attributes({"case_toml": "[case\n"}, "f.nc", quiet=True) is None
    assert not caplog.records
    with caplog.at_level("WARNING"):
        assert case_from_attributes({"case_toml": "[case\n"}, "f.nc") is None
    assert "cannot use its stored case" in caplog.text
    assert math.isfinite(case_from_attributes(_attrs(LORENZ), "f.nc").system.rho)


# -- the closure a rollout was made with ---------------------------------------------------------------


def _closure_file(path, seed):
    torch = pytest.importorskip("torch")
    from hybridnde.closure_file import save_closure
    from hybridnde.config import parse_case_text
    from hybridnde.models import MLPClosure

    torch.manual_seed(seed)
    save_closure(path, MLPClosure(state_dim=3, width=4, depth=1, activation="tanh").double(),
                 case_toml=parse_case_text(LORENZ).to_toml())
    return path


def _checksum(path):
    import torch

    from hybridnde.closure_file import load_closure

    return load_closure(path, dtype=torch.float64)[1]["checksum"]


def test_a_given_closure_other_than_the_recorded_one_is_used_with_a_warning(tmp_path, caplog):
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import closure_for_lyapunov

    made_with, other = _closure_file(tmp_path / "a.pt", 0), _closure_file(tmp_path / "b.pt", 1)
    attrs = {"closure_checksum": _checksum(made_with), "closure_file": str(made_with)}
    with caplog.at_level("WARNING", logger="hybridnde.evaluate"):
        assert closure_for_lyapunov(attrs, tmp_path / "r.nc", made_with, parse_case_text(LORENZ)) is not None
    assert "differs from the one" not in caplog.text
    with caplog.at_level("WARNING", logger="hybridnde.evaluate"):
        assert closure_for_lyapunov(attrs, tmp_path / "r.nc", other, parse_case_text(LORENZ)) is not None
    assert "differs from the one" in caplog.text


def test_a_recorded_closure_that_cannot_be_found_is_refused_not_replaced_by_the_bare_solver(tmp_path):
    from hybridnde.config import parse_case_text
    from hybridnde.evaluation_lyapunov import closure_for_lyapunov
    from hybridnde.io import DataError

    case = parse_case_text(LORENZ)
    assert closure_for_lyapunov({"closure_checksum": "none"}, tmp_path / "r.nc", None, case) is None
    with pytest.raises(DataError, match="pass it with --closure"):
        closure_for_lyapunov({"closure_checksum": "0123456789abcdef"}, tmp_path / "r.nc", None, case)
    changed = _closure_file(tmp_path / "c.pt", 2)  # the recorded file, changed since
    with pytest.raises(DataError, match="is not the closure"):
        closure_for_lyapunov({"closure_checksum": "0123456789abcdef", "closure_file": str(changed)},
                             tmp_path / "r.nc", None, case)
    found = closure_for_lyapunov({"closure_checksum": _checksum(changed), "closure_file": "elsewhere/c.pt"},
                                 tmp_path / "r.nc", None, case)  # beside the rollout, as `run` keeps it
    assert found is not None


def test_the_figures_representative_member_is_never_one_without_a_valid_time():
    """np.argmin takes NaN as the smallest distance: a member whose truth was undefined throughout (no
    VPT) was drawn as the "median" member."""
    from hybridnde.evaluation_figures import _representative_member

    def metrics(per_member, median):
        return {"valid_prediction_time": {"per_member": per_member, "median": median}}
    assert _representative_member(metrics([float("nan"), 1.0, 3.0, 2.2], 2.0)) == 3
    assert _representative_member(metrics([None, 5.0, 1.0], 3.0)) == 1  # a tie: the first
    assert _representative_member(metrics([None, None], None)) == 0
