"""What a person reads first: ``report.md`` per variant and the few lines ``hybridnde run`` prints
(a sweep's table: ``comparison``).

Every number comes from the stages' outputs (``metrics.json``, the closure's metadata, its training
log, ``run.json``); nothing is recomputed here.
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..config import KuramotoSivashinskyConfig
from ..config.fields import to_mapping
from ..evaluation_summary import lyapunov_estimate, percent_down
from ..io import atomic_path, package_version
from ..training.assembly import jacobian_penalty_field
from .formatting import given, median_spread, number, percent, relative_link, spread_keys
from .plots import held_out_validation
from .runner import RunResult, VariantResult
from .stages import repeats_training_start
from .verdict import at_rest_while_valid, members_seen, verdict

__all__ = ["write_report", "verdict", "summary_lines"]


def _truth_phrase(metrics: Mapping[str, Any], held_out: bool) -> str:
    """What the report's accuracy section scores against."""
    if not held_out:
        return ("Against the truth from the training trajectory's own start (`initial_condition.distribution = "
                "\"point\"`: every draw is that point, so one member and nothing held out; an extrapolation test "
                "beyond the training window), over ")
    seen = metrics.get("members_from_training_states", 0)
    if seen:
        return (f"Against a truth that is **not held out**: {metrics['members']} members, "
                f"{members_seen(int(seen), metrics['members'])} starting from a state of the training data "
                "(`rollout.initial_conditions` names training data, `rollout.seed` repeats `initial_condition.seed`, "
                "or an `initial_condition.file` feeds both; found in truth.nc, equal up to rounding), over ")
    if seen is None:
        return (f"Against a truth of {metrics['members']} members on another grid than the training data's, so "
                "not checked against it for states the closure saw, over ")
    return f"Against a held-out truth: {metrics['members']} members from states the closure never saw, over "


def _over_finite(metrics: Mapping[str, Any], text: str) -> str:
    """A statistic's cell, with the share of the rollout's states it is over where some blew up."""
    share = metrics.get("statistics_finite_share")
    if share is None or share >= 1.0 or text == "n/a":
        return text
    return f"{text} (over its {percent_down(share)} finite states)"


def _spectrum_cell(spectrum: Mapping[str, Any]) -> str:
    """The distance and the modes it compares (each model its own: ``compared_modes``)."""
    text, modes = number(spectrum.get("distance")), spectrum.get("compared_modes") or []
    if text == "n/a" or not modes:
        return text
    if len(modes) == 1:
        return f"{text}, mode {modes[0]}"
    if modes[-1] - modes[0] + 1 == len(modes):
        return f"{text}, modes {modes[0]}-{modes[-1]}"
    return f"{text}, {len(modes)} modes in {modes[0]}-{modes[-1]}"


def _metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    keys = spread_keys(metrics)
    baseline = metrics.get("baseline") or {}

    def both(getter) -> tuple[str, str]:
        return getter(metrics), getter(baseline) if baseline else "-"

    def spread(summary: Mapping[str, Any] | None, members: int) -> str:  # one member: no spread to show
        text = number((summary or {}).get("median")) if members == 1 else median_spread(summary, keys)
        count = (summary or {}).get("count")
        if count is not None and 0 < count < members:  # (a drift of the survivors only read as the ensemble's)
            text += f" (over {count} of {members} members)"
        return text

    rows = [("valid prediction time, median [%s, %s]" % keys if metrics["members"] > 1 else "valid prediction time",
             *both(lambda m: spread(m.get("valid_prediction_time"), m["members"])))]
    if "valid_prediction_time_lyapunov" in metrics and not at_rest_while_valid(metrics):
        rows.append((f"  in Lyapunov times (lambda_1 = {given(metrics['lyapunov_exponent'])}, from the case)",
                     *both(lambda m: spread(m.get("valid_prediction_time_lyapunov"), m["members"]))))
    rows.append(("valid to the horizon", *both(lambda m: percent(m.get("reached_horizon_fraction")))))
    rows.append(("stable to the horizon", *both(lambda m: percent(m.get("stable_fraction"), m.get("stable_members"),
                                                                    m.get("members")))))
    if metrics.get("resting_members") or (baseline or {}).get("resting_members"):
        rows.append(("at rest while the truth moves (last quarter of the horizon)",
                     *both(lambda m: f"{m.get('resting_members', 0)}/{m.get('members')}")))
    if metrics.get("resting_while_valid") or (baseline or {}).get("resting_while_valid"):
        rows.append(("  ... already before its valid time ended",
                     *both(lambda m: f"{m.get('resting_while_valid', 0)}/{m.get('members')}")))
    for name, drift in metrics.get("invariant_drift", {}).items():
        rows.append((f"{name} drift (max relative; truth's integrator: {number(drift['reference']['median'])})",
                     *both(lambda m: spread(m.get("invariant_drift", {}).get(name, {}).get("rollout"), m["members"]))))
    if "mean_drift" in metrics:
        truth_drift = number(metrics["mean_drift"]["reference"]["median"])
        rows.append((f"spatial mean drift (max abs / rms u*; truth: {truth_drift})",
                     *both(lambda m: spread(m.get("mean_drift", {}).get("rollout"), m["members"]))))
    if "spectrum" in metrics:
        rows.append(("energy spectrum distance (mean abs log10 E/E*)",
                     *both(lambda m: _over_finite(m, _spectrum_cell(m.get("spectrum") or {})))))
    rows.append(("KL divergence of state histograms (nats)",
                 *both(lambda m: _over_finite(m, number(m.get("kl_divergence", {}).get("value"))))))
    if "lyapunov" in metrics:
        lyapunov = metrics["lyapunov"]
        rows.append((f"leading Lyapunov exponent (truth: {lyapunov_estimate(lyapunov['truth'])})",
                     lyapunov_estimate(lyapunov["model"]), "-"))
    return rows


def _inline(mapping: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in mapping.items()) + "}"


def _training_rows(result: VariantResult) -> list[tuple[str, str]]:
    case, meta = result.case, result.closure_metadata
    system, host, model, training = case.system, case.hybrid, case.model, case.training
    settings = {k: v for k, v in to_mapping(system).items() if k != "name"}
    if isinstance(system, KuramotoSivashinskyConfig):
        settings = {k: settings[k] for k in ("method", "domain_length", "n_points", "nonlinear_coefficient")}
    host_text = {"residual": f"residual: the true equations with {_inline(dict(host.system))} (the closure supplies the "
                             "rest)" if host.system else "residual: the true equations (the closure corrects them)",
                 "neural_ode": "neural ODE: no known physics, the closure is the whole vector field",
                 "second_order": "second order: the host knows dq/dt = v, the closure gives the accelerations"}
    host_time = case.host_time
    architecture = f"{model.kind}, width {model.width}, depth {model.depth}, {model.activation}"
    if model.kind == "periodic_cnn":
        architecture += f", kernel {model.kernel_size}"
    regularizer = training.regularizer
    if regularizer != "none":
        regularizer += f" (lambda = {given(training.regularizer_weight)})"
    penalty = ""
    if training.jacobian_penalty != "none":
        of = {"closure": "the closure", "rhs": "the hybrid right-hand side"}[jacobian_penalty_field(case)]
        penalty = f", Jacobian penalty {training.jacobian_penalty} of {of}"
    data = meta.get("data", {})
    rows = [("true system", f"{system.name} {_inline(settings)}; {case.time.integrator}, dt = {given(case.time.dt)}"),
            ("host solver", f"{host_text[host.setup]}; {host_time.integrator}, dt = {given(host_time.dt)}"),
            ("closure", architecture),
            ("training", f"{training.method}, {training.rollout_steps}-step rollouts, regularizer {regularizer}{penalty}, "
                         f"lr {given(training.learning_rate)} ({training.lr_schedule}), seed {training.seed}"),
            ("data", f"{_members_split(data)} x {data.get('times', 'n/a')} samples every "
                     f"{given(data.get('sample_interval'))}; {meta.get('train_windows', 'n/a')} training windows"),
            ("precision", f"{case.compute.dtype} (simulations, training and rollouts)")]
    final = meta.get("final", {})
    terms = ", ".join(f"{k[5:]} {number(v)}" for k, v in final.items() if k.startswith("loss/"))
    rows.append(("result", f"{meta.get('epochs_run', 'n/a')} epochs{' (stopped early)' if meta.get('stopped_early') else ''}; "
                           f"best validation loss {number(meta.get('best_val_loss'))} at epoch "
                           f"{meta.get('best_epoch', 'n/a')}; last training loss {number(final.get('loss'))}"
                           + (f" ({terms})" if terms else "") + _still_improving(result.training_log)))
    return rows


#: a validation loss that fell at least this share over the last tenth of the epochs is still improving
STILL_IMPROVING = 0.01


def _still_improving(log: list[dict[str, Any]]) -> str:
    """A clause when the last epoch was the best and the validation loss still fell by ``STILL_IMPROVING``
    or more over the last tenth of the epochs: the closure is limited by the training budget."""
    losses = [record.get("val_loss") for record in log]
    if len(losses) < 2 or not all(isinstance(loss, float) and math.isfinite(loss) for loss in losses) \
            or losses[-1] > min(losses):
        return ""
    span = max(1, len(losses) // 10)
    fall = 1.0 - losses[-1] / losses[-1 - span] if losses[-1 - span] > 0 else 0.0
    if fall < STILL_IMPROVING:
        return ""
    return (f"; still improving: the validation loss fell {100 * fall:.2g}% over the last {span} epoch(s), so more "
            "epochs (`training.epochs`) may train a better closure")


def _members_split(data: Mapping[str, Any]) -> str:
    train, validation = data.get("train_members", []), data.get("validation_members", [])
    if not held_out_validation({"data": data}):  # (data.py warns)
        return f"{len(train)} training member(s), also used for validation (none held out)"
    return f"{len(train)} training + {len(validation)} validation members"


_STAGE_MEANING = {"simulate": "training data from the true system", "reference": "held-out truth over the rollout "
                  "horizon", "train": "trained closure; its log: closure.log.jsonl", "rollout": "hybrid model from the "
                  "reference's initial states", "baseline": "bare host solver from the same states",
                  "evaluate": "metrics; figures in figures/"}


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def write_report(result: VariantResult, *, command: str = "") -> Path:
    """``report.md`` in the variant's folder; returns its path."""
    case, metrics, folder = result.case, result.metrics, result.directory
    title = case.case.name + (f" [{result.variant.label}]" if result.variant.label else "")
    keys = spread_keys(metrics)
    held_out = not repeats_training_start(case)
    lines = [f"# {title}: hybrid model report", ""]
    if case.case.description:
        lines += [case.case.description + ".", ""]
    made = datetime.datetime.now().isoformat(timespec="seconds")
    writing = f"hybridnde {package_version()}"
    numbers = metrics.get("software") or writing  # what computed the metrics, maybe an earlier run
    by = f"numbers by {numbers}" + ("" if numbers == writing else f", report by {writing}")
    lines += [f"Made by `{command or 'hybridnde run'}` on {made} ({by})"
              + (f"; variant: {result.variant.describe()}" if result.variant.label else "") + ".", "",
              f"**{verdict(metrics, held_out=held_out, setup=case.hybrid.setup)}**", ""]
    lines += ["## Accuracy and stability", "",
              _truth_phrase(metrics, held_out) + f"{given(metrics['horizon'])} time units ({metrics['times']} saved times); the error is "
              f"||u - u*|| / {'rms(u* - mean u*)' if metrics.get('error_scale_kind') == 'anomaly' else 'rms(u*)'} and a prediction is valid until it exceeds {given(metrics['threshold'])}. "
              f"Median [{keys[0]}, {keys[1]}] over members (their initial states), of one trained closure "
              f"(`training.seed = {case.training.seed}`): another seed trains another closure, and "
              "`--compare training.seed=0,1,2` shows the spread over seeds.", "",
              *(["| | hybrid (trained closure) | bare host solver |", "|---|---|---|"] if "baseline" in metrics
                else ["| | hybrid (trained closure) |", "|---|---|"])]
    lines += [f"| {name} | {hybrid} | {bare} |" if "baseline" in metrics else f"| {name} | {hybrid} |"
              for name, hybrid, bare in _metric_rows(metrics)]
    if "baseline" not in metrics:
        lines += ["", "(No bare-host column: the host of a neural ODE knows no physics.)"]
    lines += [""] + [f"Note: {note}" for note in metrics.get("notes", [])]
    lines += [f"Note (bare host solver): {note}" for note in metrics.get("baseline", {}).get("notes", [])]
    lines += ["", "## What was trained", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in _training_rows(result)]
    lines += ["", "## Stages", "", "| stage | output | | wall time |", "|---|---|---|---|"]

    def meaning(stage: str) -> str:
        if stage == "reference" and not held_out:
            return "truth from the training start over the rollout horizon (nothing held out)"
        if stage == "reference" and metrics.get("members_from_training_states", 0):
            return "truth over the rollout horizon, from states of the training data (not held out)"
        return _STAGE_MEANING[stage]

    for stage in result.stages:
        action = {"ran": "ran now", "reused": "up to date, reused", "shared": "shared with other variants"}[stage.action]
        lines.append(f"| {stage.stage} | [{relative_link(stage.path, folder)}]({relative_link(stage.path, folder)}) "
                     f"({meaning(stage.stage)}) | {action} | {_seconds(stage.seconds)} |")
    cost = metrics.get("cost", {}).get("rollout", {})
    if "member_steps_per_second" in cost:
        lines += ["", f"Rollout throughput: {number(cost['member_steps_per_second'])} member-steps per second."]
    figures = [Path(p) for p in metrics.get("figures", [])]
    if figures:
        lines += ["", "## Figures", ""]
        for figure in sorted(figures, key=_figure_order):
            lines += [f"![{figure.stem.replace('_', ' ')}]({relative_link(figure, folder)})", ""]
    path = folder / "report.md"
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _figure_order(path: Path) -> int:
    order = ["error_growth_vs_bare_host", "error_growth", "space_time", "phase_portrait", "spectrum",
             "invariant_drift", "training_loss"]
    return order.index(path.stem) if path.stem in order else len(order)


def summary_lines(outcome: RunResult) -> list[str]:
    """What ``hybridnde run`` prints: the verdict and headline table, or the sweep's table."""
    if outcome.comparison:
        text = outcome.comparison["markdown"].read_text().splitlines()
        table = [line for line in text if line.startswith("|")]
        return table + [f"table: {outcome.comparison['markdown']} (JSON: {outcome.comparison['json']}); "
                        f"{outcome.seconds:.1f} s"]
    result = outcome.variants[0]
    metrics = result.metrics
    rows = _metric_rows(metrics)
    width = max(len(name) for name, _, _ in rows)
    said = verdict(metrics, held_out=not repeats_training_start(result.case), setup=result.case.hybrid.setup)
    if "baseline" in metrics:
        lines = [said, f"  {'':<{width}}  hybrid  |  bare host"]
        lines += [f"  {name:<{width}}  {hybrid}  |  {bare}" for name, hybrid, bare in rows]
    else:
        lines = [said] + [f"  {name:<{width}}  {hybrid}" for name, hybrid, _ in rows]
    ran = [s.stage for s in result.stages if s.action == "ran"]
    lines.append(f"report: {result.report} ({outcome.seconds:.1f} s; "
                 + (f"ran {', '.join(ran)}" if ran else "every stage was up to date") + ")")
    return lines
