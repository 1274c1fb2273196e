"""The ``hybridnde`` command: simulate | train | rollout | evaluate | run | export.

Exit status: 0 success, 2 bad input (usage, config, data), 1 failure at run time, 130 interrupted
(Ctrl-C, or SIGTERM as a batch system's time limit sends: both stop the work as Ctrl-C does, leaving
checkpoints that --resume continues).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import re
import shlex
import signal
import sys
import threading

from . import __version__
from .allocator import keep_freed_memory
from .config import ConfigError
from .interrupts import interrupt_on_signal, interrupts_deferred
from .errors import WriteFailed
from .io import COMMAND_LINE, DataError, disk_full_message

__all__ = ["main", "build_parser", "COMMANDS"]

#: verbs, each a module in ``hybridnde.commands`` with ``register(subparsers)``
COMMANDS = ("simulate", "train", "evaluate", "rollout", "run", "export")

log = logging.getLogger("hybridnde")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridnde", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hybridnde {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"hybridnde.commands.{name}").register(subparsers)
    return parser


def _reject_unknown(parser: argparse.ArgumentParser, command: str, extras: list[str]) -> None:
    """Unknown arguments after a verb: that verb's usage and, for a misspelt option, the closest one
    (argparse would print the top-level usage, which lists no option of the verb)."""
    verbs = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    verb = verbs.choices[command]
    options = [option for action in verb._actions for option in action.option_strings]
    hints = []
    for extra in extras:
        if command == "run" and extra == "--resume":  # (every other long verb takes it)
            hints.append("--resume: `hybridnde run` needs none, the same command continues where it stopped")
        elif extra.startswith("--"):
            close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1, cutoff=0.6)
            hints += [f"{extra}: did you mean {close[0]}?"] if close else []
    verb.error(f"unrecognized arguments: {' '.join(extras)}" + ("; " + "; ".join(hints) if hints else ""))


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


#: how a command stopped by a full disk goes on once there is room (the others start again)
CONTINUES = {"simulate": " (a fixed-step time.integrator's checkpoint, if one was written, is kept: --resume continues "
                         "from it)",
             "train": " (a checkpoint, if one was written, is kept: --resume continues from it)",
             "rollout": " (a checkpoint, if one was written, is kept: --resume continues from it)",
             "run": " (finished stages and checkpoints are kept: the same command continues)"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments, extras = parser.parse_known_args(argv)
    if extras:
        _reject_unknown(parser, arguments.command, extras)
    configure_logging(arguments.verbose, arguments.quiet)
    keep_freed_memory()  # before the work allocates: a step's temporaries then reuse warm pages (allocator.py)
    # SIGTERM (a scheduler's time limit, mpiexec passing one on) stops the work as Ctrl-C does: the
    # checkpoint and partial file stay consistent and the exit says so; it killed the process before
    previous = (signal.signal(signal.SIGTERM, interrupt_on_signal) if threading.current_thread() is threading.main_thread()
                else None)
    typed = shlex.join(["hybridnde", *(sys.argv[1:] if argv is None else map(str, argv))])
    # one line of history: control characters (a newline in a path) escaped; an argument that is not
    # UTF-8 arrives with surrogates, which a NetCDF attribute cannot hold
    typed = re.sub(r"[\x00-\x1f\x7f]", lambda match: repr(match.group())[1:-1], typed)
    command = COMMAND_LINE.set(typed.encode("utf-8", "backslashreplace").decode("utf-8"))
    try:
        return _run(arguments)
    finally:
        COMMAND_LINE.reset(command)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _single_process_under_ranks(command: str) -> bool:
    """Whether ``command``, which runs in one process, was started on several MPI ranks: each would make
    the same files, and all but one were then refused by the output lock (or raced for the name). Said
    once, by rank 0; every rank exits 2. Only ``rollout`` spreads its members over ranks."""
    from .distributed import launched_by_mpi, world

    if command == "rollout" or not launched_by_mpi() or (comm := world()).size == 1:
        return False
    if comm.rank == 0:
        print(f"hybridnde {command}: error: runs in one process, and mpiexec started {comm.size}: each would make "
              f"the same files; run it without mpiexec (`hybridnde rollout` spreads its members over ranks)",
              file=sys.stderr)
    return True


def _run(arguments: argparse.Namespace) -> int:
    try:
        # an interrupt inside torch's C++ start-up aborted the process (pybind11: std::terminate) or left a
        # traceback: held until torch is loaded, then said as any other
        with interrupts_deferred():
            import torch  # noqa: F401
        if _single_process_under_ranks(arguments.command):
            return 2
        return int(arguments.run(arguments) or 0)
    except (ConfigError, DataError) as error:
        # bad input: raised by validation before any work starts
        print(f"hybridnde {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        by = f" by {interruption.args[0]}" if interruption.args else ""
        print(f"hybridnde {arguments.command}: interrupted{by}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not a failure
        sys.stdout = open(os.devnull, "w")  # keep the interpreter's final flush quiet
        return 0
    except (FloatingPointError, WriteFailed) as failure:  # the numbers diverged, an output could not be written: not bugs
        print(f"hybridnde {arguments.command}: error: {failure}", file=sys.stderr)
        log.debug("where it failed", exc_info=True)
        return 1
    except Exception as failure:  # a failure at run time
        full = disk_full_message(failure)
        if full is not None:  # not a bug: say what to do, without a traceback
            print(f"hybridnde {arguments.command}: error: {full}{CONTINUES.get(arguments.command, '')}", file=sys.stderr)
            return 1
        log.exception("hybridnde %s failed", arguments.command)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
