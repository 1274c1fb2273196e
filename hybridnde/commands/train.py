"""``hybridnde train CASE.toml --data truth.nc --out closure.pt``: train the case's closure.

Writes ``closure.pt`` (architecture, weights, normalisation, the case, training metadata and a
``config_checksum``), ``closure.log.jsonl`` beside it (one JSON object per epoch) and, while training
runs, ``closure.checkpoint.pt`` every ``training.checkpoint_every`` epochs (``--resume`` continues
from it, giving the same closure as an uninterrupted run).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..threads import add_threads_argument, torch_threads
from .common import (
    DEFAULT_FOLDER,
    add_case_arguments,
    case_from_arguments,
    output_directory,
)

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a neural closure on a truth file -> closure.pt",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_arguments(parser)
    parser.add_argument("--data", type=Path, default=None,
                        help=f"truth NetCDF from `hybridnde simulate` (default: {DEFAULT_FOLDER}/truth.nc)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"closure file (default: {DEFAULT_FOLDER}/closure.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out, if any")
    add_threads_argument(parser, "training")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    from ..training import checkpoint_path, train_case
    from ..training.checkpoint import checkpoint_epoch

    case = case_from_arguments(arguments)
    def directory() -> Path:  # the case's folder, only where a default path needs it
        return output_directory(case, quick=arguments.quick)

    out = arguments.out or directory() / "closure.pt"
    data = arguments.data or directory() / "truth.nc"
    try:
        with torch_threads(arguments.threads, "--threads"):
            _, result = train_case(case, data, out, resume=arguments.resume, progress=arguments.progress)
    except KeyboardInterrupt:  # what a rerun can do with what is there
        if checkpoint_path(out).is_file():
            epoch = checkpoint_epoch(checkpoint_path(out))
            log.warning("%s holds the last checkpoint%s: the same command with --resume continues from it",
                        checkpoint_path(out), "" if epoch is None else
                        f" (after epoch {epoch} of {case.training.epochs})")
        else:
            log.warning("no checkpoint was written (training.checkpoint_every = %d): a rerun starts afresh",
                        case.training.checkpoint_every)
        raise
    final = result.final
    print(f"{out}: {result.epochs_run} epochs, loss {final.get('loss', float('nan')):.4g}, best validation loss "
          f"{result.best_val_loss:.4g} (epoch {result.best_epoch})")
    return 0
