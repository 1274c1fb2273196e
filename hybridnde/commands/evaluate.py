"""``hybridnde evaluate rollout.nc --reference truth.nc [--json] [--figures DIR] [--case CASE.toml]``.

Compares a rollout with the truth: valid prediction time, error growth, stable fraction, invariant
drift, spectra, histogram KL divergence, cost (see ``hybridnde.evaluate``). Prints a table, or the
metrics as JSON with ``--json``; ``--out`` also writes the JSON to a file. Exit 2 for missing or
mismatched files.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
from pathlib import Path

from ..alignment import MEMBER_MATCHING
from ..config import ConfigError, load_case
from ..io import check_output_path
from ..output_paths import staging_folder
from ..threads import add_threads_argument, torch_threads

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="compare a rollout with the truth: VPT, errors, spectra, drift",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rollout", type=Path, metavar="ROLLOUT.nc", help="predicted trajectories (hybridnde schema)")
    parser.add_argument("--reference", type=Path, required=True, metavar="TRUTH.nc",
                        help="true trajectories from `hybridnde simulate`, same members and times")
    parser.add_argument("--case", type=Path, default=None, metavar="CASE.toml",
                        help="case for the VPT threshold, Lyapunov exponent and invariants "
                             "(default: the case stored in the reference file)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value of --case, e.g. --set evaluate.vpt_threshold=0.3 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON instead of a table")
    parser.add_argument("--out", type=Path, default=None, metavar="METRICS.json", help="also write the JSON here")
    parser.add_argument("--figures", type=Path, default=None, metavar="DIR", help="write PNG figures into DIR")
    parser.add_argument("--threshold", type=float, default=None,
                        help="normalised-error threshold of the VPT (default: evaluate.vpt_threshold, 0.5)")
    parser.add_argument("--match-members", choices=MEMBER_MATCHING, default="coordinate",
                        help="pair members by their `member` coordinate (default) or by position")
    parser.add_argument("--time-tolerance", type=float, default=None,
                        help="largest time difference counted as the same time (default 1e-6 of the sampling interval)")
    parser.add_argument("--lyapunov", action="store_true",
                        help="also estimate the leading Lyapunov exponent of the model and of the truth")
    parser.add_argument("--closure", type=Path, default=None, metavar="closure.pt",
                        help="the closure the rollout ran with (for --lyapunov; default: the file the rollout records, if unchanged)")
    add_threads_argument(parser, "the metrics and --lyapunov")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    from ..evaluate import evaluate_files, format_summary
    from ..evaluation_figures import EVALUATION_FIGURES, publish_evaluation

    if arguments.out is not None and arguments.out.suffix != ".json":
        raise ConfigError(f"--out {arguments.out}: give a .json file name")
    if arguments.overrides and arguments.case is None:
        raise ConfigError("--set needs --case CASE.toml (it overrides values of that case)")
    if arguments.closure is not None and not arguments.lyapunov:
        raise ConfigError(f"--closure {arguments.closure}: only --lyapunov uses it (the hybrid model's Lyapunov "
                          "exponent); add --lyapunov or leave --closure out")
    if arguments.threshold is not None and not (math.isfinite(arguments.threshold) and arguments.threshold > 0):
        raise ConfigError(f"--threshold {arguments.threshold}: give a finite positive number, e.g. 0.5")
    if arguments.time_tolerance is not None and not (math.isfinite(arguments.time_tolerance)
                                                     and arguments.time_tolerance >= 0):
        raise ConfigError(f"--time-tolerance {arguments.time_tolerance}: give a finite number >= 0, e.g. 1e-6")
    if arguments.out is not None:
        check_output_path(arguments.out)
    if arguments.figures is not None:
        check_output_path(arguments.figures, "--figures", folder=True)
    case = load_case(arguments.case, overrides=arguments.overrides) if arguments.case is not None else None
    # the figures are drawn aside, then replace an earlier evaluation's together with --out: a stop
    # while they are drawn leaves the earlier set whole, not mixed with this one's
    with torch_threads(arguments.threads, "--threads"), (staging_folder(arguments.figures / "figures")
                                                         if arguments.figures is not None else contextlib.nullcontext()) as staging:
        metrics = evaluate_files(arguments.rollout, arguments.reference, case=case, threshold=arguments.threshold,
                                 match_members=arguments.match_members, time_tolerance=arguments.time_tolerance,
                                 figures_dir=staging, lyapunov=arguments.lyapunov, closure_path=arguments.closure)
        text = publish_evaluation(metrics, arguments.out, drawn=metrics.get("figures", []), folder=arguments.figures,
                                  names=EVALUATION_FIGURES)
    if arguments.out is not None:
        log.info("wrote %s", arguments.out)
    print(text if arguments.json else format_summary(metrics))
    for path in metrics.get("figures", []):
        log.info("wrote %s", path)
    return 0
