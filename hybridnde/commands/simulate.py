"""``hybridnde simulate CASE.toml --out truth.nc [--resume]``: reference trajectories of the true system.

Fixed-step integrators stream the trajectory to the file as it is computed, with a checkpoint at most
every minute (``--resume`` continues from it); adaptive ones run in memory and start again.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ConfigError
from ..io import check_output_path
from ..threads import add_threads_argument, torch_threads
from .common import (
    DEFAULT_FOLDER,
    add_case_arguments,
    case_from_arguments,
    output_directory,
)

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("simulate", help="reference trajectories of the true system -> NetCDF",
                                   description=__doc__)
    add_case_arguments(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output NetCDF (default: {DEFAULT_FOLDER}/truth.nc)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted simulation to the same --out from its last checkpoint")
    add_threads_argument(parser, "the simulation")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    from ..io import warn_if_disk_short
    from ..simulate import trajectory_bytes
    from ..simulation_job import simulate_to_file

    case = case_from_arguments(arguments)
    out = arguments.out or output_directory(case, quick=arguments.quick) / "truth.nc"
    if out.suffix != ".nc":
        raise ConfigError(f"--out {out}: give a .nc file name")
    ic = case.initial_condition
    check_output_path(out, inputs={"initial_condition.file": ic.file if ic.distribution == "file" else None})
    warn_if_disk_short(out, trajectory_bytes(case), "the simulation", fix=None if arguments.resume else
                       "lower initial_condition.members or time.n_steps, raise time.save_every, or choose another --out")
    with torch_threads(arguments.threads, "--threads"):
        simulate_to_file(case, out, resume=arguments.resume, progress=arguments.progress,
                         threads_setting=arguments.threads)
    return 0
