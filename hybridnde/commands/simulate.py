"""``hybridnde simulate CASE.toml --out truth.nc``: reference trajectories of the true system."""
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
    add_threads_argument(parser, "the simulation")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    from ..io import warn_if_disk_short, write_netcdf
    from ..simulate import simulate_case, trajectory_bytes

    case = case_from_arguments(arguments)
    out = arguments.out or output_directory(case, quick=arguments.quick) / "truth.nc"
    if out.suffix != ".nc":
        raise ConfigError(f"--out {out}: give a .nc file name")
    ic = case.initial_condition
    check_output_path(out, inputs={"initial_condition.file": ic.file if ic.distribution == "file" else None})
    warn_if_disk_short(out, trajectory_bytes(case), "the simulation", fix="lower initial_condition.members or "
                       "time.n_steps, raise time.save_every, or choose another --out")
    with torch_threads(arguments.threads, "--threads"):
        dataset = simulate_case(case, progress=arguments.progress)
    write_netcdf(dataset, out, compression_level=case.output.compression_level, time_chunk=case.output.time_chunk)
    log.info("wrote %s (%d members, %d times)", out, dataset.sizes["member"], dataset.sizes["time"])
    return 0
