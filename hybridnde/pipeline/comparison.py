"""A sweep's side-by-side table: ``compare.md``, ``compare.json`` and one error-growth figure."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..evaluation_summary import percent_down
from ..io import atomic_path, package_version
from .formatting import given, median_spread, number, percent, relative_link, spread_keys
from .plots import error_growth_comparison_figure
from .runner import RunResult
from .stages import repeats_training_start

__all__ = ["comparison_rows", "write_comparison"]


def _row(metrics: Mapping[str, Any]) -> dict[str, Any]:
    keys = spread_keys(metrics)
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


def _bare_hosts(outcome: RunResult) -> list[tuple[str, Path, Mapping[str, Any]]]:
    """``(label, baseline file, its metrics)`` per bare-host row: one per file *and* scoring, as variants
    that share the file but compare ``[evaluate]`` keys (e.g. ``evaluate.vpt_threshold``) score it
    differently; labelled "bare host" when one serves every variant."""
    found, seen = [], set()
    for result in outcome.variants:
        stage = next((s for s in result.stages if s.stage == "baseline"), None)
        metrics = result.metrics.get("baseline")
        if stage is None or not metrics:
            continue
        key = (stage.path, json.dumps(_row(metrics), sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            found.append((f"bare host ({result.variant.label})", stage.path, metrics))
    if len(found) == 1:
        found[0] = ("bare host", *found[0][1:])
    return found


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
    baselines = [{"label": label, **_row(metrics), "file": str(path)} for label, path, metrics in _bare_hosts(outcome)]
    keys = [key for key, _ in outcome.variants[0].variant.settings]
    groups = []
    if len(keys) > 1:
        first = keys[0]
        for value in dict.fromkeys(repr(dict(r.variant.settings)[first]) for r in outcome.variants):
            members = [row for row, r in zip(variants, outcome.variants) if repr(dict(r.variant.settings)[first]) == value]
            groups.append({first: members[0]["settings"][first], "variants": len(members),
                           **{name: _mean_std([_grouped_value(m, name) for m in members])
                              for name in _grouped_names(variants)}})
    return {"keys": keys, "variants": variants, "baselines": baselines, "groups": groups,
            "failed": [{"label": label, "error": error} for label, error in outcome.failed]}


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


def _group_cell(stats: Mapping[str, Any], *, fraction: bool, variants: int) -> str:
    """``mean +- std`` of a group's finite values; one value without a spread, and how many values it
    is over where undefined or infinite ones were left out."""
    if stats["mean"] is None:
        return "n/a"
    if fraction:
        mean, std = percent_down(stats["mean"]), f"{100 * stats['std']:.2g}%"
    else:
        mean, std = number(stats["mean"]), number(stats["std"])
    cell = mean if stats["count"] == 1 else f"{mean} +- {std}"
    if stats["count"] < variants:
        cell += f" (over {stats['count']} of {variants}: the others n/a or inf)"
    return cell


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
        cells = [row["label"], median_spread(row["valid_prediction_time"], keys)]
        if lyapunov:
            cells.append(median_spread(row.get("valid_prediction_time_lyapunov"), keys))
        cells += [percent(row["reached_horizon_fraction"]), percent(row["stable_fraction"])]
        cells += [number(row.get(name)) for name in extra]
        if with_training:
            cells += [number(row.get("best_val_loss")), number(row.get("epochs_run")),
                      number(row.get("train_seconds"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _spread_of(outcome: RunResult, key: str) -> str:
    """A metric every variant shares (members, horizon, threshold): one value, or each variant's in turn
    when the compared keys change it (e.g. ``hybrid.substeps`` or ``rollout.steps``)."""
    shown = given if key in ("horizon", "threshold") else number  # (as the case sets them)
    values = [shown(result.metrics[key]) for result in outcome.variants]
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def _starts_phrase(outcome: RunResult) -> str:
    if repeats_training_start(outcome.variants[0].case):
        return "initial state, the training start (initial_condition.distribution = 'point': nothing held out)"
    found = [r.metrics.get("members_from_training_states", 0) for r in outcome.variants]  # (None: not checked)
    seen = max(int(count or 0) for count in found)
    if seen:
        return f"initial states, **not held out** ({seen} member(s) start from states of the training data)"
    if any(count is None for count in found):  # (a reference on another grid than the training data's)
        return "initial states not checked against the training data (another grid)"
    return "held-out initial states"


def write_comparison(outcome: RunResult, *, command: str = "") -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``figures/compare_error_growth.png`` in the run directory."""
    data = comparison_rows(outcome)
    first = outcome.variants[0].metrics
    keys = spread_keys(first)
    directory = outcome.directory
    figure = error_growth_comparison_figure(
        [(row["label"], r.metrics) for row, r in zip(data["variants"], outcome.variants)]
        + [(label, metrics) for label, _, metrics in _bare_hosts(outcome)],
        directory / "figures" / "compare_error_growth.png",
        title=f"{outcome.variants[0].case.case.name}: {', '.join(data['keys'])}")
    lines = [f"# {outcome.variants[0].case.case.name}: {', '.join(data['keys'])} compared", "",
             f"Made by `{command or 'hybridnde run --compare'}` (hybridnde {package_version()}). Every variant is trained "
             "on the same truth with the same seeds (unless a seed is compared) and rolled out from the same "
             + _starts_phrase(outcome)
             + f": {_spread_of(outcome, 'members')} member(s) over {_spread_of(outcome, 'horizon')} time "
             f"units, error threshold {_spread_of(outcome, 'threshold')}.", ""]
    lines += _table(data["variants"] + data["baselines"], keys, with_training=True)
    if data["failed"]:  # a variant that failed at run time: said here, its folder holds what it got to
        lines += ["", "**Failed** (no row above; the other variants ran):", ""]
        lines += [f"* {row['label']}: {row['error']}" for row in data["failed"]]
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
            cells += [_group_cell(group[name], fraction=name.endswith("_fraction"), variants=group["variants"])
                      for name in names]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Reports: " + ", ".join(f"[{row['label']}]({relative_link(Path(row['report']), directory)})"
                                           for row in data["variants"])]
    if figure is not None:
        lines += ["", f"![error growth]({relative_link(figure, directory)})"]
    markdown, json_path = directory / "compare.md", directory / "compare.json"
    with atomic_path(markdown) as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    with atomic_path(json_path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    paths = {"markdown": markdown, "json": json_path}
    if figure is not None:
        paths["figure"] = figure
    return paths
