"""What a person reads first: ``report.md`` per variant, ``compare.md``/``compare.json`` for a sweep,
and the few lines ``hybridnde run`` prints.

Every number comes from the stages' outputs (``metrics.json``, the closure's metadata, its training
log, ``run.json``); nothing is recomputed here.
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..config import KuramotoSivashinskyConfig
from ..io import atomic_path
from ..config.fields import to_mapping
from .plots import error_growth_comparison_figure
from .runner import RunResult, VariantResult

__all__ = ["write_report", "write_comparison", "summary_lines", "comparison_rows"]


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}g}"


def _spread_keys(metrics: Mapping[str, Any]) -> tuple[str, str]:
    low, high = metrics.get("spread_percentiles", (16.0, 84.0))
    return f"p{low:g}", f"p{high:g}"


def _median_spread(summary: Mapping[str, Any] | None, keys: tuple[str, str]) -> str:
    if not summary:
        return "n/a"
    return f"{_number(summary.get('median'))} [{_number(summary.get(keys[0]))}, {_number(summary.get(keys[1]))}]"


def _percent(fraction: Any, count: int | None = None, total: int | None = None) -> str:
    if fraction is None:
        return "n/a"
    text = f"{100 * float(fraction):.0f}%"
    return f"{text} ({count}/{total})" if count is not None and total is not None else text


def _ratio_phrase(hybrid: float | None, bare: float | None) -> str:
    if hybrid is None or bare is None or not bare > 0:
        return ""
    ratio = hybrid / bare
    return f", {ratio:.3g}x the bare host solver's {_number(bare)}" if ratio >= 1 else \
        f", below the bare host solver's {_number(bare)}"


def verdict(metrics: Mapping[str, Any]) -> str:
    """One sentence: how long the hybrid model stays valid and stable, against the bare host."""
    vpt = metrics["valid_prediction_time"]
    baseline = metrics.get("baseline")
    units = "" if metrics.get("time_units", "1") in ("", "1") else f" {metrics['time_units']}"
    text = f"The hybrid model stays within the error threshold for {_number(vpt['median'])}{units} time units"
    if "valid_prediction_time_lyapunov" in metrics:
        text += f" ({_number(metrics['valid_prediction_time_lyapunov']['median'])} Lyapunov times)"
    text += f", median over {metrics['members']} held-out members"
    if baseline:
        text += _ratio_phrase(vpt["median"], baseline["valid_prediction_time"]["median"])
    text += f"; {metrics['stable_members']} of {metrics['members']} members stay stable to the horizon of " \
            f"{_number(metrics['horizon'])}"
    if baseline:
        text += f" (bare host: {baseline['stable_members']} of {baseline['members']})"
    return text + "."


def _metric_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    keys = _spread_keys(metrics)
    baseline = metrics.get("baseline") or {}

    def both(getter) -> tuple[str, str]:
        return getter(metrics), getter(baseline) if baseline else "-"

    rows = [("valid prediction time, median [%s, %s]" % keys,
             *both(lambda m: _median_spread(m.get("valid_prediction_time"), keys)))]
    if "valid_prediction_time_lyapunov" in metrics:
        rows.append((f"  in Lyapunov times (lambda_1 = {_number(metrics['lyapunov_exponent'])})",
                     *both(lambda m: _median_spread(m.get("valid_prediction_time_lyapunov"), keys))))
    rows.append(("valid to the horizon", *both(lambda m: _percent(m.get("reached_horizon_fraction")))))
    rows.append(("stable to the horizon", *both(lambda m: _percent(m.get("stable_fraction"), m.get("stable_members"),
                                                                    m.get("members")))))
    for name, drift in metrics.get("invariant_drift", {}).items():
        rows.append((f"{name} drift (max relative; truth's integrator: {_number(drift['reference']['median'])})",
                     *both(lambda m: _median_spread(m.get("invariant_drift", {}).get(name, {}).get("rollout"), keys))))
    if "spectrum" in metrics:
        rows.append(("energy spectrum distance (mean abs log10 E/E*)",
                     *both(lambda m: _number(m.get("spectrum", {}).get("distance")))))
    rows.append(("KL divergence of state histograms (nats)",
                 *both(lambda m: _number(m.get("kl_divergence", {}).get("value")))))
    if "lyapunov" in metrics:
        lyapunov = metrics["lyapunov"]
        rows.append(("leading Lyapunov exponent (truth: %s)" % _number(lyapunov["truth"]["exponent"]),
                     _number(lyapunov["model"]["exponent"]), "-"))
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
        regularizer += f" (lambda = {_number(training.regularizer_weight)})"
    penalty = f", Jacobian penalty {training.jacobian_penalty}" if training.jacobian_penalty != "none" else ""
    data = meta.get("data", {})
    rows = [("true system", f"{system.name} {_inline(settings)}; {case.time.integrator}, dt = {_number(case.time.dt)}"),
            ("host solver", f"{host_text[host.setup]}; {host_time.integrator}, dt = {_number(host_time.dt)}"),
            ("closure", architecture),
            ("training", f"{training.method}, {training.rollout_steps}-step rollouts, regularizer {regularizer}{penalty}, "
                         f"lr {_number(training.learning_rate)} ({training.lr_schedule}), seed {training.seed}"),
            ("data", f"{len(data.get('train_members', []))} training + {len(data.get('validation_members', []))} "
                     f"validation members x {data.get('times', 'n/a')} samples every "
                     f"{_number(data.get('sample_interval'))}; {meta.get('train_windows', 'n/a')} training windows")]
    final = meta.get("final", {})
    terms = ", ".join(f"{k[5:]} {_number(v)}" for k, v in final.items() if k.startswith("loss/"))
    rows.append(("result", f"{meta.get('epochs_run', 'n/a')} epochs{' (stopped early)' if meta.get('stopped_early') else ''}; "
                           f"best validation loss {_number(meta.get('best_val_loss'))} at epoch "
                           f"{meta.get('best_epoch', 'n/a')}; last training loss {_number(final.get('loss'))}"
                           + (f" ({terms})" if terms else "")))
    return rows


_STAGE_MEANING = {"simulate": "training data from the true system", "reference": "held-out truth over the rollout "
                  "horizon", "train": "trained closure; its log: closure.log.jsonl", "rollout": "hybrid model from the "
                  "reference's initial states", "baseline": "bare host solver from the same states",
                  "evaluate": "metrics; figures in figures/"}


def _relative(path: Path | str, folder: Path) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(folder))
    except ValueError:
        try:
            return str(Path("..") / path.relative_to(folder.parent))
        except ValueError:
            return str(path)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def write_report(result: VariantResult, *, command: str = "") -> Path:
    """``report.md`` in the variant's folder; returns its path."""
    case, metrics, folder = result.case, result.metrics, result.directory
    title = case.case.name + (f" [{result.variant.label}]" if result.variant.label else "")
    keys = _spread_keys(metrics)
    lines = [f"# {title}: hybrid model report", ""]
    if case.case.description:
        lines += [case.case.description + ".", ""]
    made = datetime.datetime.now().isoformat(timespec="seconds")
    lines += [f"Made by `{command or 'hybridnde run'}` on {made} (hybridnde {__version__})"
              + (f"; variant: {result.variant.describe()}" if result.variant.label else "") + ".", "",
              f"**{verdict(metrics)}**", ""]
    lines += [f"## Accuracy and stability", "",
              f"Against a held-out truth: {metrics['members']} members from states the closure never saw, over "
              f"{_number(metrics['horizon'])} time units ({metrics['times']} saved times); the error is "
              f"||u - u*|| / rms(u*) and a prediction is valid until it exceeds {_number(metrics['threshold'])}. "
              f"Median [{keys[0]}, {keys[1]}] over members.", "",
              *(["| | hybrid (trained closure) | bare host solver |", "|---|---|---|"] if "baseline" in metrics
                else ["| | hybrid (trained closure) |", "|---|---|"])]
    lines += [f"| {name} | {hybrid} | {bare} |" if "baseline" in metrics else f"| {name} | {hybrid} |"
              for name, hybrid, bare in _metric_rows(metrics)]
    if "baseline" not in metrics:
        lines += ["", "(No bare-host column: the host of a neural ODE knows no physics.)"]
    lines += [""] + [f"Note: {note}" for note in metrics.get("notes", [])]
    lines += ["", "## What was trained", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {text} |" for name, text in _training_rows(result)]
    lines += ["", "## Stages", "", "| stage | output | | wall time |", "|---|---|---|---|"]
    for stage in result.stages:
        action = {"ran": "ran now", "reused": "up to date, reused", "shared": "shared with other variants"}[stage.action]
        lines.append(f"| {stage.stage} | [{_relative(stage.path, folder)}]({_relative(stage.path, folder)}) "
                     f"({_STAGE_MEANING[stage.stage]}) | {action} | {_seconds(stage.seconds)} |")
    cost = metrics.get("cost", {}).get("rollout", {})
    if "member_steps_per_second" in cost:
        lines += ["", f"Rollout throughput: {_number(cost['member_steps_per_second'])} member-steps per second."]
    figures = [Path(p) for p in metrics.get("figures", [])]
    if figures:
        lines += ["", "## Figures", ""]
        for figure in sorted(figures, key=_figure_order):
            lines += [f"![{figure.stem.replace('_', ' ')}]({_relative(figure, folder)})", ""]
    path = folder / "report.md"
    with atomic_path(path) as temporary:
        temporary.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _figure_order(path: Path) -> int:
    order = ["error_growth_vs_bare_host", "error_growth", "space_time", "phase_portrait", "spectrum",
             "invariant_drift", "training_loss"]
    return order.index(path.stem) if path.stem in order else len(order)


# -- sweeps -------------------------------------------------------------------------------------------
def _row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = _spread_keys(metrics)
    row = {"valid_prediction_time": {k: metrics["valid_prediction_time"].get(k) for k in ("median", *keys)},
           "reached_horizon_fraction": metrics.get("reached_horizon_fraction"),
           "stable_fraction": metrics.get("stable_fraction"), "members": metrics.get("members")}
    if "valid_prediction_time_lyapunov" in metrics:
        row["valid_prediction_time_lyapunov"] = {k: metrics["valid_prediction_time_lyapunov"].get(k)
                                                 for k in ("median", *keys)}
    if "spectrum" in metrics:
        row["spectrum_distance"] = metrics["spectrum"]["distance"]
    for name, drift in metrics.get("invariant_drift", {}).items():
        row[f"{name}_drift"] = drift["rollout"]["median"]
    return row


def comparison_rows(outcome: RunResult) -> dict[str, Any]:
    """The sweep as JSON-ready data: one row per variant, the bare-host rows, group means."""
    variants = []
    for result in outcome.variants:
        meta = result.closure_metadata
        train = next((s for s in result.stages if s.stage == "train"), None)
        variants.append({"label": result.variant.label, "settings": dict(result.variant.settings),
                         **_row(result.metrics), "best_val_loss": meta.get("best_val_loss"),
                         "epochs_run": meta.get("epochs_run"), "train_seconds": meta.get("wall_seconds") or
                         (train.seconds if train else None),
                         "report": str(result.report), "metrics": str(result.directory / "metrics.json")})
    baselines, seen = [], set()
    for result in outcome.variants:
        stage = next((s for s in result.stages if s.stage == "baseline"), None)
        if stage is not None and stage.path not in seen and result.metrics.get("baseline"):
            seen.add(stage.path)
            baselines.append({"label": f"bare host ({result.variant.label})", **_row(result.metrics["baseline"]),
                              "file": str(stage.path)})
    if len(baselines) == 1:  # one bare-host rollout serves every variant
        baselines[0]["label"] = "bare host"
    keys = [key for key, _ in outcome.variants[0].variant.settings]
    groups = []
    if len(keys) > 1:
        first = keys[0]
        for value in dict.fromkeys(repr(dict(r.variant.settings)[first]) for r in outcome.variants):
            members = [row for row, r in zip(variants, outcome.variants) if repr(dict(r.variant.settings)[first]) == value]
            groups.append({first: members[0]["settings"][first], "variants": len(members),
                           **{name: _mean_std([_grouped_value(m, name) for m in members])
                              for name in _grouped_names(variants)}})
    return {"keys": keys, "variants": variants, "baselines": baselines, "groups": groups}


def _grouped_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-variant numbers a group summarises: VPT medians, fractions, distances, losses."""
    names = ["valid_prediction_time"]
    if any("valid_prediction_time_lyapunov" in row for row in rows):
        names.append("valid_prediction_time_lyapunov")
    names += ["stable_fraction", "reached_horizon_fraction"]
    names += list(dict.fromkeys(k for row in rows for k in row if k == "spectrum_distance" or k.endswith("_drift")))
    return names + ["best_val_loss"]


def _grouped_value(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    return value.get("median") if isinstance(value, Mapping) else value


def _mean_std(values: Sequence[Any]) -> dict[str, float | None]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "count": 0}
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return {"mean": mean, "std": std, "count": len(finite)}


def _table(rows: Sequence[Mapping[str, Any]], keys: tuple[str, str], *, with_training: bool) -> list[str]:
    lyapunov = any("valid_prediction_time_lyapunov" in row for row in rows)
    extra = [name for name in dict.fromkeys(k for row in rows for k in row if k == "spectrum_distance"
                                            or k.endswith("_drift"))]
    header = ["", f"VPT median [{keys[0]}, {keys[1]}]"] + (["VPT (Lyapunov times)"] if lyapunov else [])
    header += ["valid to horizon", "stable"] + [name.replace("_", " ") for name in extra]
    if with_training:
        header += ["best val loss", "epochs", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], _median_spread(row["valid_prediction_time"], keys)]
        if lyapunov:
            cells.append(_median_spread(row.get("valid_prediction_time_lyapunov"), keys))
        cells += [_percent(row["reached_horizon_fraction"]), _percent(row["stable_fraction"])]
        cells += [_number(row.get(name)) for name in extra]
        if with_training:
            cells += [_number(row.get("best_val_loss")), _number(row.get("epochs_run")),
                      _number(row.get("train_seconds"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_comparison(outcome: RunResult, *, command: str = "") -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``figures/compare_error_growth.png`` in the run directory."""
    data = comparison_rows(outcome)
    first = outcome.variants[0].metrics
    keys = _spread_keys(first)
    directory = outcome.directory
    figure = error_growth_comparison_figure(
        [(row["label"], r.metrics) for row, r in zip(data["variants"], outcome.variants)]
        + ([("bare host", outcome.variants[0].metrics["baseline"])] if data["baselines"] else []),
        directory / "figures" / "compare_error_growth.png",
        title=f"{outcome.variants[0].case.case.name}: {', '.join(data['keys'])}")
    lines = [f"# {outcome.variants[0].case.case.name}: {', '.join(data['keys'])} compared", "",
             f"Made by `{command or 'hybridnde run --compare'}` (hybridnde {__version__}). Every variant is trained "
             "on the same truth with the same seeds (unless a seed is compared) and rolled out from the same held-out "
             f"initial states: {first['members']} members over {_number(first['horizon'])} time units, error "
             f"threshold {_number(first['threshold'])}.", ""]
    lines += _table(data["variants"] + data["baselines"], keys, with_training=True)
    if data["groups"]:
        first_key = data["keys"][0]
        names = [name for name in data["groups"][0] if name not in (first_key, "variants")]
        titles = {"valid_prediction_time": "VPT median", "valid_prediction_time_lyapunov": "VPT (Lyapunov times)",
                  "stable_fraction": "stable", "reached_horizon_fraction": "valid to horizon"}
        lines += ["", f"Grouped by {first_key}: mean +- standard deviation over the other keys' values of each "
                  "variant's number (VPT: its median over members).", "",
                  "| " + " | ".join([first_key, "variants", *(titles.get(n, n.replace("_", " ")) for n in names)]) + " |",
                  "|" + "---|" * (len(names) + 2)]
        for group in data["groups"]:
            cells = [str(group[first_key]), str(group["variants"])]
            for name in names:
                stats = group[name]
                if name.endswith("_fraction") and stats["mean"] is not None:
                    cells.append(f"{100 * stats['mean']:.0f}% +- {100 * stats['std']:.0f}%")
                else:
                    cells.append(f"{_number(stats['mean'])} +- {_number(stats['std'])}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Reports: " + ", ".join(f"[{row['label']}]({_relative(Path(row['report']), directory)})"
                                           for row in data["variants"])]
    if figure is not None:
        lines += ["", f"![error growth]({_relative(figure, directory)})"]
    markdown, json_path = directory / "compare.md", directory / "compare.json"
    with atomic_path(markdown) as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    paths = {"markdown": markdown, "json": json_path}
    if figure is not None:
        paths["figure"] = figure
    return paths


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
    if "baseline" in metrics:
        lines = [verdict(metrics), f"  {'':<{width}}  hybrid  |  bare host"]
        lines += [f"  {name:<{width}}  {hybrid}  |  {bare}" for name, hybrid, bare in rows]
    else:
        lines = [verdict(metrics)] + [f"  {name:<{width}}  {hybrid}" for name, hybrid, _ in rows]
    ran = [s.stage for s in result.stages if s.action == "ran"]
    lines.append(f"report: {result.report} ({outcome.seconds:.1f} s; "
                 + (f"ran {', '.join(ran)}" if ran else "every stage was up to date") + ")")
    return lines
