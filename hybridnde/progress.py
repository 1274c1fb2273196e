"""Progress bars that show on a terminal and stay silent in logs, CI and non-zero MPI ranks."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, TypeVar

T = TypeVar("T")

__all__ = ["progress_bar", "progress_log", "progress_enabled", "ProgressLog", "PROGRESS_LOG_SECONDS"]

#: without a terminal (a batch job's log, mpiexec's pipes) long work logs its progress this often
PROGRESS_LOG_SECONDS = 60.0

log = logging.getLogger(__name__)


def progress_enabled(enabled: bool | None = None) -> bool:
    """``None`` means: only when stderr is a terminal."""
    return sys.stderr.isatty() if enabled is None else enabled


class ProgressLog:
    """Where no bar shows (stderr is a file or a pipe: a batch job's log, ranks under ``mpiexec``): a
    log line every ``every`` seconds -- done, rate, time left -- so a long job's log says how far it is."""

    def __init__(self, total: int, description: str, unit: str, every: float, clock=time.monotonic):
        self.total, self.description, self.unit, self.every, self.clock = total, description, unit, every, clock
        self.done, self.started = 0, clock()
        self.last = self.started
        self.counted_from = None  # the count at the first update (a resume's earlier steps are not this run's)

    def update(self, n: int, detail: str = "") -> None:
        """``n`` more done; ``detail`` (e.g. the latest loss) ends the line when one is due."""
        if self.counted_from is None:  # the first update is what was done before (a resume's steps)
            self.done += n
            self.counted_from, self.started = self.done, self.clock()
            return
        self.done += n
        now = self.clock()
        if now - self.last < self.every or not self.total:
            return
        self.last = now
        rate = (self.done - self.counted_from) / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info("%s: %.0f%% (%.4g of %.4g %ss), %.4g %ss/s, about %.0f s left%s", self.description,
                 100.0 * self.done / self.total, self.done, self.total, self.unit, rate, self.unit, left,
                 f"; {detail}" if detail else "")

    def close(self) -> None:
        pass


def progress_log(total: int | None, description: str, unit: str, *, enabled: bool | None, every: float,
                 initial: int = 0) -> ProgressLog | None:
    """A ``ProgressLog`` where no bar shows and none was asked against (``enabled`` ``None`` and stderr
    not a terminal), counting on from ``initial``; else ``None``."""
    if enabled is not None or progress_enabled(None) or not total:
        return None
    lines = ProgressLog(total, description, unit, every)
    lines.update(initial)
    return lines


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, description: str = "",
                 enabled: bool | None = None, unit: str = "it", log_every: float | None = None, initial: int = 0):
    """A tqdm bar on a terminal; with ``log_every`` (seconds) and no terminal, a ``ProgressLog``
    (``enabled=False``, e.g. ``--no-progress``: neither). ``initial``: the count already done (a resume's:
    shown, but not counted in the rate or the time left)."""
    from tqdm.auto import tqdm

    if log_every and iterable is None and (lines := progress_log(total, description, unit, enabled=enabled,
                                                                 every=log_every, initial=initial)):
        return lines
    return tqdm(iterable, total=total, desc=description, unit=unit, disable=not progress_enabled(enabled),
                dynamic_ncols=True, leave=False, initial=initial,
                unit_scale=bool(total and total >= 100_000))  # 10.9M/20.0M, 4.44M member-step/s; epochs 3/20
