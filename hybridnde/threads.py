"""How many CPU threads torch uses while a command works.

One by default (``run --threads``, ``simulate``/``train``/``evaluate --threads``, ``rollout.threads``):
the cases' closures train about as fast on one thread, and a multi-threaded process on oversubscribed
cores slows down by orders of magnitude (measured: 2 threads next to one busy process on 2 cores,
60x slower per epoch than 1 thread; docs/run.md). Equal thread counts also keep results
bit-identical between the verbs (threaded FFTs and matrix products split their work differently).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator

from .config import ConfigError

__all__ = ["add_threads_argument", "check_thread_count", "torch_threads"]

log = logging.getLogger(__name__)
_TOLD: set[str] = set()


@contextlib.contextmanager
def torch_threads(count: int, name: str = "threads") -> Iterator[None]:
    """``torch.set_num_threads(count)`` inside the block (0: leave the count as it is, torch's default
    unless something set it), the previous count after it.

    Raises ``ConfigError`` naming ``name`` for a count ``check_thread_count`` refuses."""
    check_thread_count(count, name)
    import torch

    previous = torch.get_num_threads()
    environment = os.environ.get("OMP_NUM_THREADS", "")
    if count and environment.strip().isdigit() and int(environment) != count and environment not in _TOLD:
        _TOLD.add(environment)  # a cluster job script's usual knob: say once that this one rules
        log.warning("OMP_NUM_THREADS=%s is set, but %s = %d decides torch's threads here (0 leaves torch's own "
                    "choice, which follows OMP_NUM_THREADS)", environment, name, count)
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def available_cpus() -> int:
    """CPUs this process may run on: its affinity (a batch job's cpus-per-task, ``taskset``) where the
    system says, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def thread_limit() -> int:
    """The most threads a count may ask for: 4 per CPU, at least 64 (more crashed torch's thread pool,
    100 000 with a segmentation fault, or stalled it for minutes: 4 000)."""
    return max(64, 4 * available_cpus())


def check_thread_count(count: int, name: str = "threads") -> None:
    """``ConfigError`` naming ``name`` for a negative count or one beyond ``thread_limit()``; a warning
    for more threads than CPUs (oversubscribed cores slow torch down by orders of magnitude)."""
    if count < 0:
        raise ConfigError(f"{name} = {count}: give 0 (torch's default) or a positive count")
    cpus = available_cpus()
    if count > thread_limit():
        raise ConfigError(f"{name} = {count}: far more threads than the {cpus} CPUs this process may use; give at "
                          f"most {cpus} (or 0 for torch's default)")
    if count > cpus and f"{name}>{cpus}" not in _TOLD:
        _TOLD.add(f"{name}>{cpus}")
        log.warning("%s = %d is more than the %d CPUs this process may use: oversubscribed, torch slows down "
                    "badly; give at most %d", name, count, cpus, cpus)


def add_threads_argument(parser: argparse.ArgumentParser, work: str) -> None:
    """The ``--threads N`` option of a verb whose ``work`` (words for the help) runs in torch."""
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help=f"torch CPU threads for {work} (default 1: the cases' closures are small, busy "
                             "cores slow multi-threaded torch down badly, and equal counts give equal bits; "
                             "0: leave torch's setting, its default unless set)")
