"""``hybridnde run CASE.toml [--quick] [--out DIR] [--set ...] [--compare key=v1,v2,...]``: the whole job.

Simulates the training data and a held-out truth, trains the closure, rolls the hybrid model (and the
bare host solver) out from the held-out initial states, evaluates, and writes DIR/report.md with
figures. A rerun reuses every stage whose output matches the configuration, so after a crash or a
changed training key it continues where it must. ``--compare`` trains and evaluates one variant per
value (the product of several ``--compare``s) and writes DIR/compare.md and compare.json.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from ..io import DataError, check_not_folders, check_output_path
from ..output_paths import check_name_fits
from ..threads import add_threads_argument
from .common import add_case_arguments, output_directory

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="the whole job: simulate, train, roll out, evaluate, report",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="folder for every file of the run (default: output.directory, else runs/<case>; -quick appended with --quick)")
    parser.add_argument("--compare", action="append", default=[], metavar="SECTION.KEY=V1,V2,...",
                        help="one variant per value, e.g. --compare training.regularizer=none,jvp,fd (repeatable: "
                             "the variants are the product)")
    parser.add_argument("--lyapunov", action="store_true",
                        help="also estimate the leading Lyapunov exponent of the hybrid model and of the truth")
    add_threads_argument(parser, "simulation, training and evaluation (rollouts: rollout.threads)")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    from ..pipeline import build_variants, run_pipeline
    from ..pipeline.report import summary_lines

    variants = build_variants(arguments.case, quick=arguments.quick, overrides=arguments.overrides,
                              compare=arguments.compare)
    case = variants[0].case
    directory = arguments.out or output_directory(case, quick=arguments.quick)
    check_output_path(directory, folder=True)
    _check_existing_folders(directory, [variant.label for variant in variants if variant.label])
    try:
        outcome = run_pipeline(variants, directory, progress=arguments.progress, lyapunov=arguments.lyapunov,
                               threads=arguments.threads, command=_command_line(arguments, directory))
    except KeyboardInterrupt:
        log.warning("the same command continues: finished stages are reused, and the simulations, training and "
                    "rollouts go on from their last checkpoints (`hybridnde run` needs no --resume)")
        raise
    print("\n".join(summary_lines(outcome)))
    if outcome.failed:  # the others' results and the table are written; the run as a whole did not succeed
        print(f"hybridnde run: {len(outcome.failed)} of {len(variants)} variants failed: "
              + "; ".join(f"{label} ({error})" for label, error in outcome.failed), file=sys.stderr)
        return 1
    return 0


#: the files a run writes in its folder and each variant's (a folder under one of these names failed
#: the run at its end)
RUN_FILES = ("truth.nc", "reference.nc", "closure.pt", "closure.log.jsonl", "closure.log.jsonl.partial",
             "closure.checkpoint.pt", "rollout.nc", "baseline.nc", "metrics.json", "report.md", "run.json",
             "compare.md", "compare.json")


def _check_existing_folders(directory: Path, variant_labels: list[str]) -> None:
    """A rerun writes into the folders an earlier one made (``figures/``, one per variant and its
    ``figures/``): each that exists must be writable now, not found read-only after the stages ran;
    and none of the files it writes there may be a folder. Other folders under ``directory`` are not
    the run's business."""
    for label in variant_labels:  # (a long one failed its variant's first file, after the simulation)
        check_name_fits(label, directory, "--compare: the variant folder", fix="compare fewer keys at once, or "
                        "values written shorter")
    folders = [directory, directory / "figures"]
    for label in variant_labels:
        folders += [directory / label, directory / label / "figures"]
    for folder in folders:
        if folder.exists() and not folder.is_dir():  # (found after every stage had run: a traceback)
            raise DataError(f"--out {directory}: {folder} is a file where this run makes a folder; move it away or "
                            "choose another --out")
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(f"--out {directory}: cannot write in {folder}, which this run writes into; make it "
                            "writable or choose another --out")
    check_not_folders([folder / name for folder in [directory, *(directory / label for label in variant_labels)]
                       for name in RUN_FILES], directory)


def _command_line(arguments: argparse.Namespace, directory: Path) -> str:
    """The command as a user would type it (``main`` may be called with an argument list)."""
    words = ["hybridnde", "run", str(arguments.case)]
    words += ["--quick"] if arguments.quick else []
    words += ["--lyapunov"] if arguments.lyapunov else []
    words += [f"--threads={arguments.threads}"] if arguments.threads != 1 else []
    words += ["--out", str(directory)]
    for text in arguments.overrides:
        words += ["--set", text]
    for text in arguments.compare:
        words += ["--compare", text]
    return " ".join(map(shlex.quote, words))
