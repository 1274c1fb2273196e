"""The run job's verdict, its number formats, the sweep's compare.md and the run's up-front checks, each
against small hand-built inputs whose expected text is derived by hand from the documented rules
(docs/run.md): which way a ratio to the bare host reads, the thresholds of the concerns, the member
counts a sentence gives, and which table cell holds which number."""
import dataclasses
import math
from pathlib import Path

import pytest

from hybridnde.config import ConfigError, load_case
from hybridnde.pipeline.formatting import given, median_spread, percent, relative_link, spread_keys
from hybridnde.pipeline.verdict import verdict

CASES = Path(__file__).resolve().parent.parent / "cases"

# four members, all stable, no concern: the sentence every test below adds one thing to
PLAIN = {"valid_prediction_time": {"median": 10.0}, "members": 4, "stable_members": 4, "horizon": 8.0}


def with_bare_host(hybrid_vpt: float, bare_vpt: float, **baseline) -> dict:
    return {**PLAIN, "valid_prediction_time": {"median": hybrid_vpt},
            "baseline": {"valid_prediction_time": {"median": bare_vpt}, "members": 4, "stable_members": 4,
                         **baseline}}


# ---------------------------------------------------------------- verdict: the ratio to the bare host

def test_a_hybrid_as_long_valid_as_the_bare_host_is_said_to_match_it_not_to_fall_below():
    """Equal valid times are a ratio of 1: "1.00x the bare host's", never "below" it."""
    text = verdict(with_bare_host(5.0, 5.0))
    assert ", 1.00x the bare host solver's 5.00;" in text and "below" not in text


def test_a_hybrid_shorter_lived_than_the_bare_host_is_said_to_be_below_it():
    """A closure that makes the host worse (1 against 4 time units) must read as worse, with no ratio."""
    text = verdict(with_bare_host(1.0, 4.0))
    assert "for 1.00 time units, median over 4 held-out members, below the bare host solver's 4.00;" in text
    assert "x the bare host" not in text


def test_a_bare_host_valid_to_the_horizon_against_a_hybrid_that_is_not_gives_the_ratio():
    """'no ratio: both valid to the horizon' only where both are; a hybrid short of the horizon (10 of
    100 time units) beside a bare host valid to it is below it."""
    metrics = {**with_bare_host(10.0, 100.0, reached_horizon_fraction=1.0), "reached_horizon_fraction": 0.25}
    text = verdict(metrics)
    assert "below the bare host solver's 100" in text
    assert "no ratio" not in text and "as the bare host" not in text and "at least" not in text


def test_no_spread_note_hangs_off_a_verdict_without_a_ratio():
    """A bare host valid for 0 time units gives no ratio; the note on overlapping spreads qualifies a
    ratio, so it is not said either (it would follow the member count on its own)."""
    metrics = {**PLAIN, "valid_prediction_time": {"median": 0.5, "p16": 0.0, "p84": 1.0},
               "baseline": {"valid_prediction_time": {"median": 0.0, "p16": 0.0, "p84": 0.0}, "members": 4,
                            "stable_members": 0}}
    text = verdict(metrics)
    assert "median over 4 held-out members; 4 of 4 members stay stable" in text and "overlap" not in text


# ---------------------------------------------------------------- verdict: member counts

def test_the_verdict_counts_the_stable_members_of_the_hybrid_and_of_the_bare_host_each():
    """3 of 4 hybrid members stable, 1 of 4 bare-host members: both counts as they are, not the ensemble size."""
    metrics = {**with_bare_host(10.0, 2.0, stable_members=1), "stable_members": 3}
    assert "; 3 of 4 members stay stable to the horizon of 8 (bare host: 1 of 4)." in verdict(metrics)


def test_a_model_at_rest_in_half_the_members_is_not_said_to_be_at_rest():
    """The at-rest reading opens the verdict (and drops the Lyapunov times) only where most members were at rest
    before their valid time ended: 2 of 4 is not most, 3 of 4 is."""
    metrics = {**PLAIN, "valid_prediction_time_lyapunov": {"median": 0.45}}
    half = verdict({**metrics, "resting_members": 2, "resting_while_valid": 2})
    assert half.startswith("The hybrid model stays within the error threshold for 10.0 time units "
                           "(0.450 Lyapunov times)")
    assert "; 2 of 4 members come to rest by the horizon while the truth keeps moving" in half


def test_the_at_rest_opening_counts_the_members_at_rest_while_valid_and_says_it_once():
    """4 members come to rest by the horizon, 3 of them already before their valid time ended: the
    opening gives 3 of 4, and the later 'come to rest by the horizon' clause is not said again."""
    text = verdict({**PLAIN, "resting_members": 4, "resting_while_valid": 3})
    assert text.startswith("The hybrid model is at rest in 3 of 4 members while the truth keeps moving")
    assert "come to rest by the horizon" not in text


# ---------------------------------------------------------------- verdict: the concerns' thresholds

def test_a_kl_divergence_above_one_nat_is_a_concern_and_one_of_exactly_one_is_not():
    """docs/run.md: the clause is added when the histogram KL divergence exceeds 1 nat (ks_l22 quick's
    bare host: 2.28)."""
    assert "; but its states are distributed unlike the truth's over the horizon (KL divergence 2.28 nats " \
        "between their histograms)." in verdict({**PLAIN, "kl_divergence": {"value": 2.28}})
    assert "distributed unlike" not in verdict({**PLAIN, "kl_divergence": {"value": 1.0}})


def test_an_invariant_drift_is_a_concern_above_ten_times_the_truths_own():
    """docs/run.md: a drift above 0.1 and ten times the truth's integrator's is said: 0.3 against the
    truth's 0.02 (15x) is, against its 0.04 (7.5x) it is not; only one above 1 means unphysical states."""
    def said(own):
        return verdict({**PLAIN, "invariant_drift": {"energy": {"rollout": {"median": 0.3},
                                                                "reference": {"median": own}}}})
    assert "; but its energy drifts by 0.300 (median over members of the largest relative drift)." in said(0.02)
    assert "drift" not in said(0.04)
    # above 1 the states are not the system's; at exactly 1 the drift is only noted
    exactly_one = verdict({**PLAIN, "invariant_drift": {"energy": {"rollout": {"median": 1.0}}}})
    assert "its energy drifts by 1.00 (median over members of the largest relative drift)." in exactly_one
    assert "not the system's" not in exactly_one


def test_an_undefined_or_infinite_invariant_drift_is_not_printed_as_a_drift():
    """An invariant that is zero at the start (Lotka-Volterra at its equilibrium) has an infinite relative
    drift: the verdict does not say "drifts by n/a ... its states are not the system's"."""
    for value in (math.inf, math.nan):
        text = verdict({**PLAIN, "invariant_drift": {"first_integral": {"rollout": {"median": value}}}})
        assert "drift" not in text and "n/a" not in text


def test_a_spatial_mean_drift_is_a_concern_only_where_the_truth_conserves_the_mean():
    """docs/getting-started.md: said when the median exceeds 0.1 of the rms and the truth's own drift is
    below 1e-3: a truth drifting 5e-3 does not conserve it, one drifting 5e-4 does."""
    def said(own):
        return verdict({**PLAIN, "mean_drift": {"rollout": {"median": 0.172}, "reference": {"median": own}}})
    assert "spatial mean" not in said(5e-3)
    assert "; but its spatial mean drifts by 0.172 of the field's rms (median over members; the truth conserves " \
        "it)." in said(5e-4)


# ---------------------------------------------------------------- formatting

def test_the_cases_own_values_are_printed_in_full():
    """A learning rate of 3.125e-4 or 12345 steps as set, not rounded to 3 digits as a measurement."""
    assert (given(3.125e-4), given(12345.0), given(0.25)) == ("0.0003125", "12345", "0.25")


def test_spread_percentiles_that_are_not_whole_are_named_as_they_are():
    """evaluate.spread_percentiles = [2.5, 97.5] labels its band p2.5-p97.5, not p2-p98."""
    assert spread_keys({"spread_percentiles": [2.5, 97.5]}) == ("p2.5", "p97.5")
    assert spread_keys({}) == ("p16", "p84")


def test_a_median_and_its_spread_read_low_then_high():
    """A table cell reads "median [p16, p84]"; a summary that is absent or empty reads n/a."""
    assert median_spread({"median": 2.0, "p16": 1.0, "p84": 3.5}, ("p16", "p84")) == "2.00 [1.00, 3.50]"
    assert median_spread({}, ("p16", "p84")) == median_spread(None, ("p16", "p84")) == "n/a"


def test_a_share_with_its_counts_gives_the_count_over_the_total():
    """The stable row reads "75% (3/4)": 3 stable members of 4."""
    assert percent(0.75, 3, 4) == "75% (3/4)"


def test_a_variants_report_links_the_runs_shared_files_one_folder_up(tmp_path):
    """A variant's report.md in DIR/label/ links the shared DIR/truth.nc as ../truth.nc."""
    run = tmp_path / "run"
    assert relative_link(run / "truth.nc", run / "seed=1") == str(Path("..") / "truth.nc")
    assert relative_link(run / "seed=1" / "rollout.nc", run / "seed=1") == "rollout.nc"
    assert relative_link(tmp_path / "elsewhere" / "x.nc", run / "seed=1") == str(tmp_path / "elsewhere" / "x.nc")


# ---------------------------------------------------------------- compare.md and compare.json

def _sweep(tmp_path, settings_and_numbers):
    """A finished sweep as ``write_comparison`` reads it: one ``VariantResult`` per
    ``(settings, vpt (median, p16, p84), reached, stable, energy drift, truth's energy drift)``."""
    from hybridnde.pipeline.runner import RunResult, StageResult, VariantResult
    from hybridnde.pipeline.variants import Variant

    case = load_case(CASES / "ks_l22.toml")
    variants = []
    for settings, (median, low, high), reached, stable, drift, truth_drift in settings_and_numbers:
        label = "_".join(f"{key.split('.')[-1]}={value}" for key, value in settings)
        metrics = {"valid_prediction_time": {"median": median, "p16": low, "p84": high},
                   "valid_prediction_time_lyapunov": {"median": median * 0.045, "p16": low * 0.045,
                                                      "p84": high * 0.045},
                   "reached_horizon_fraction": reached, "stable_fraction": stable, "members": 4, "horizon": 40.0,
                   "threshold": 0.5, "members_from_training_states": 0,
                   "invariant_drift": {"energy": {"rollout": {"median": drift}, "reference": {"median": truth_drift}}}}
        directory = tmp_path / label
        variants.append(VariantResult(Variant(case, tuple(settings), label), directory,
                                      [StageResult("train", directory / "closure.pt", "ran", 2.0)], metrics,
                                      {"best_val_loss": 0.001, "epochs_run": 20}, [], directory / "report.md"))
    return RunResult(tmp_path, variants)


def test_compare_md_puts_each_number_in_its_column(tmp_path, monkeypatch):
    """One row per variant: the VPT median with its p16-p84 band, the same in Lyapunov times, the share
    valid to the horizon, the share stable, the model's (not the truth's) invariant drift, the training."""
    from hybridnde.pipeline import comparison

    monkeypatch.setattr(comparison, "error_growth_comparison_figure", lambda *args, **kwargs: None)
    outcome = _sweep(tmp_path, [((("training.seed", 0),), (20.0, 16.0, 24.0), 0.25, 0.75, 0.5, 1e-6)])
    comparison.write_comparison(outcome)
    lines = (tmp_path / "compare.md").read_text().splitlines()
    assert "|  | VPT median [p16, p84] | VPT (Lyapunov times) | valid to horizon | stable | energy drift | " \
        "best val loss | epochs | train s |" in lines
    assert "| seed=0 | 20.0 [16.0, 24.0] | 0.900 [0.720, 1.08] | 25% | 75% | 0.500 | 0.00100 | 20 | 2.00 |" in lines
    assert not any(line.startswith("Grouped by") for line in lines)  # one key: nothing to group


def test_compare_md_groups_a_two_key_sweep_by_the_first_key(tmp_path, monkeypatch):
    """Grouped by regularizer: each group the mean +- sample standard deviation, over that regularizer's
    seeds only, of each variant's VPT median and shares (as percentages, rounded down)."""
    from hybridnde.pipeline import comparison

    monkeypatch.setattr(comparison, "error_growth_comparison_figure", lambda *args, **kwargs: None)
    numbers = {("none", 0): ((10.0, 8.0, 30.0), 0.0, 1.0), ("none", 1): ((14.0, 12.0, 30.0), 0.5, 0.75),
               ("fd", 0): ((4.0, 3.0, 5.0), 0.0, 0.5), ("fd", 1): ((6.0, 5.0, 7.0), 0.0, 0.5)}
    outcome = _sweep(tmp_path, [((("training.regularizer", regularizer), ("training.seed", seed)), vpt, reached,
                                 stable, 0.1, 0.0) for (regularizer, seed), (vpt, reached, stable) in numbers.items()])
    data = comparison.comparison_rows(outcome)
    none, fd = data["groups"]
    # none: VPT medians 10, 14 -> mean 12, std sqrt((4 + 4) / 1) = 2.83; stable 1.0, 0.75 -> 87.5% +- 17.7%
    assert none["training.regularizer"] == "none" and none["variants"] == 2
    assert none["valid_prediction_time"] == {"mean": 12.0, "std": pytest.approx(math.sqrt(8.0)), "count": 2}
    assert none["stable_fraction"]["mean"] == 0.875 and none["reached_horizon_fraction"]["mean"] == 0.25
    assert fd["valid_prediction_time"] == {"mean": 5.0, "std": pytest.approx(math.sqrt(2.0)), "count": 2}
    comparison.write_comparison(outcome)
    lines = (tmp_path / "compare.md").read_text().splitlines()
    assert "| training.regularizer | variants | VPT median | VPT (Lyapunov times) | stable | valid to horizon | " \
        "energy drift | best val loss |" in lines
    # Lyapunov: 0.045 x (10, 14) -> 0.540 +- 0.127; reached 0, 0.5 -> 25% +- 35%
    assert "| none | 2 | 12.0 +- 2.83 | 0.540 +- 0.127 | 87.5% +- 18% | 25% +- 35% | 0.100 +- 0.00 | " \
        "0.00100 +- 0.00 |" in lines
    assert "| fd | 2 | 5.00 +- 1.41 | 0.225 +- 0.0636 | 50% +- 0% | 0% +- 0% | 0.100 +- 0.00 | 0.00100 +- 0.00 |" \
        in lines


# ---------------------------------------------------------------- checks before the first stage

def _ks(overrides):
    return load_case(CASES / "ks_l22.toml", quick=True, overrides=overrides)


def test_data_exactly_one_training_window_long_is_accepted_and_one_sample_less_refused(tmp_path):
    """A training window needs training.rollout_steps + 1 samples: n_steps / save_every + 1 of them."""
    from hybridnde.pipeline.checks import check_variants
    from hybridnde.pipeline.variants import Variant

    exact = ["training.rollout_steps=4", "time.save_every=2", "time.n_steps=8"]  # 8 / 2 + 1 = 5 samples
    check_variants([Variant(_ks(exact))], tmp_path / "out")
    with pytest.raises(ConfigError, match=r"gives 4 samples per member; a training window needs 5"):
        check_variants([Variant(_ks([*exact[:2], "time.n_steps=6"]))], tmp_path / "out")


def test_a_validation_window_longer_than_the_data_is_refused_before_the_first_stage(tmp_path):
    from hybridnde.pipeline.checks import check_variants
    from hybridnde.pipeline.variants import Variant

    case = _ks(["training.rollout_steps=2", "training.validation_rollout_steps=8", "time.save_every=1",
                "time.n_steps=6"])
    with pytest.raises(ConfigError, match=r"gives 7 samples per member; a training window needs 9"):
        check_variants([Variant(case)], tmp_path / "out")


def test_a_rollout_whose_first_sample_time_is_its_last_step_is_accepted():
    """rollout.save_every = 4 with hybrid.substeps = 8: the first common time is host step 8; with
    rollout.steps = 8 that is the last step, which the evaluation compares (one step fewer has none)."""
    from hybridnde.pipeline.checks import _check_common_times

    def case(steps):
        base = _ks([])
        return base.replace(rollout=dataclasses.replace(base.rollout, save_every=4, steps=steps),
                            hybrid=dataclasses.replace(base.hybrid, substeps=8))
    _check_common_times(case(8))
    with pytest.raises(ConfigError, match="rollout.save_every = 4 with hybrid.substeps = 8"):
        _check_common_times(case(7))


def test_the_disk_estimate_counts_a_shared_truth_once_and_a_rollout_and_baseline_per_variant():
    """Two variants differing in a training key share truth.nc and reference.nc; each writes a rollout
    and a baseline as large as the reference."""
    from hybridnde.pipeline.checks import _run_bytes
    from hybridnde.pipeline.stages import reference_case
    from hybridnde.simulate import trajectory_bytes

    one, other = _ks(["training.seed=0"]), _ks(["training.seed=1"])
    truth, reference = trajectory_bytes(one), trajectory_bytes(reference_case(one))
    assert _run_bytes([one]) == truth + 3 * reference
    assert _run_bytes([one, other]) == truth + reference + 2 * 2 * reference


def test_an_adaptive_truth_is_checked_for_the_memory_its_solve_holds(tmp_path, monkeypatch):
    """A fixed-step truth streams to its file (training holds one trajectory); an adaptive one is solved in
    memory, IN_MEMORY_COPIES trajectories: `run` refused it only at its simulate stage."""
    from hybridnde import memory
    from hybridnde.pipeline.checks import check_variants
    from hybridnde.pipeline.stages import reference_case
    from hybridnde.pipeline.variants import Variant
    from hybridnde.simulate import IN_MEMORY_COPIES, trajectory_bytes

    fixed = load_case(CASES / "lorenz63.toml", quick=True)
    adaptive = load_case(CASES / "lorenz63.toml", quick=True, overrides=["time.integrator=\"dopri5\""])
    largest = max(trajectory_bytes(fixed), trajectory_bytes(reference_case(fixed)))
    monkeypatch.setattr(memory, "available_memory", lambda: IN_MEMORY_COPIES * largest - 1)
    check_variants([Variant(fixed)], tmp_path / "out")
    with pytest.raises(ConfigError, match=rf"holds the whole trajectory in memory: .* \({IN_MEMORY_COPIES}x its"):
        check_variants([Variant(adaptive)], tmp_path / "out")


def test_a_refused_variant_is_named_in_the_error(tmp_path):
    """In a sweep the error says which variant's configuration is refused."""
    from hybridnde.pipeline import build_variants
    from hybridnde.pipeline.checks import check_variants

    variants = build_variants(CASES / "ks_l22.toml", quick=True, overrides=["training.rollout_steps=4",
                                                                           "time.save_every=2"],
                              compare=["time.n_steps=8,6"])
    with pytest.raises(ConfigError, match=r"^variant n_steps=6: time.n_steps = 6 gives 4 samples"):
        check_variants(variants, tmp_path / "out")


def test_models_both_valid_to_the_horizon_get_one_parenthesis_and_no_note_on_overlapping_spreads():
    """It read "(both valid to the horizon ...: no ratio) (their p16-p84 spreads over members overlap)":
    a note qualifying a ratio that is not given."""
    spread = {"median": 100.0, "p16": 100.0, "p84": 100.0}
    metrics = {**PLAIN, "horizon": 100.0, "valid_prediction_time": spread, "reached_horizon_fraction": 1.0,
               "baseline": {"valid_prediction_time": spread, "members": 4, "stable_members": 4,
                            "reached_horizon_fraction": 1.0}}
    text = verdict(metrics)
    assert ", as the bare host solver's (both valid to the horizon for most members: no ratio);" in text
    assert "overlap" not in text
