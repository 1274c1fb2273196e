"""``hybridnde rollout CASE.toml [--closure closure.pt] --out rollout.nc [--resume]``: ensemble rollouts.

Runs ``rollout.members`` members of the case's host solver (``[hybrid]``) with the closure in its hook
(none: the bare solver) for ``rollout.steps`` steps and streams every ``rollout.save_every``-th state
to one CF NetCDF file. ``mpiexec -n R hybridnde rollout ...`` spreads the members over R ranks (one
GPU each where there are GPUs) and writes the same file.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ConfigError
from ..io import DataError
from .common import (
    DEFAULT_FOLDER,
    add_case_arguments,
    case_from_arguments,
    output_directory,
)

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("rollout", help="ensemble rollouts of the hybrid model -> streamed NetCDF",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser)
    parser.add_argument("--closure", type=Path, default=None, metavar="closure.pt",
                        help="trained closure (from `hybridnde train`); omitted: the bare host solver")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output NetCDF (default: {DEFAULT_FOLDER}/rollout.nc, or baseline.nc without --closure, "
                             "as `hybridnde run` names the bare host's)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted rollout to the same --out from its last checkpoint")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    from ..distributed import RankFailure, world
    from ..netcdf_stream import checkpoint_path
    from ..rollout_job import run_rollout

    comm = world()
    if comm.rank != 0:
        # only rank 0 logs; errors of any rank still show (a failing rank reports before aborting)
        logging.getLogger().setLevel(logging.ERROR)
    try:
        case = case_from_arguments(arguments)
        folder = output_directory(case, quick=arguments.quick) if arguments.out is None else None
        # the bare host's file is baseline.nc, as in `hybridnde run`'s folder: rollout.nc is the hybrid model's
        out = arguments.out or folder / ("rollout.nc" if arguments.closure else "baseline.nc")
        if folder is not None and arguments.closure is None:
            earlier = folder / "rollout.nc"  # the bare host's default before it became baseline.nc
            if arguments.resume and checkpoint_path(earlier).is_file() and not checkpoint_path(out).is_file():
                log.warning("--resume: an interrupted rollout without --closure is at %s (its default name before "
                            "2026-11-27); this run writes %s: resume that one with --out %s", earlier, out, earlier)
            if (folder / "closure.pt").is_file():
                log.warning("no --closure: rolling out the bare host solver; %s (from `hybridnde train`) is not used "
                            "unless given: --closure %s", folder / "closure.pt", folder / "closure.pt")
        if arguments.closure is None and case.hybrid.setup != "residual":  # (run's baselines mean to)
            known = "no known dynamics (du/dt = 0): every member stays where it starts" \
                if case.hybrid.setup == "neural_ode" else "only the kinematics (dq/dt = v, no forces)"
            log.warning("hybrid.setup = %r without --closure: the host has %s; give --closure, or --set "
                        "hybrid.setup=residual --set 'hybrid.system={}' to roll out the true system",
                        case.hybrid.setup, known)
        summary = run_rollout(case, out, closure_path=arguments.closure, resume=arguments.resume,
                              progress=arguments.progress, comm=comm)
    except (ConfigError, DataError, RankFailure) as error:
        if comm.rank == 0:
            raise
        # every rank stops on the same bad input; rank 0 alone prints it
        return 2 if isinstance(error, (ConfigError, DataError)) or error.bad_input else 1
    if comm.rank == 0:
        print(f"rollout: {summary.members} members ({summary.ok} ok, {summary.blew_up} blew up), "
              f"{summary.member_steps} member-steps in {summary.seconds:.2f} s = "
              f"{summary.member_steps_per_second:.4g} member-steps/s on {summary.ranks} rank(s), "
              f"batch size {summary.batch_size}{', resumed' if summary.resumed else ''} -> {summary.path}")
    return 0
