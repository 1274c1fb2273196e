"""Keep freed memory in the process between steps (glibc's malloc), instead of handing it back to the
operating system to fault in again on the next step.

glibc serves a block above ``M_MMAP_THRESHOLD`` with a fresh ``mmap`` and returns the top of the heap
to the system once more than ``M_TRIM_THRESHOLD`` is free there; both thresholds move as the program
runs (``mallopt(3)``). Whether a loop's temporaries then come back as fresh pages every iteration
depends on where earlier blocks happened to land -- a lottery drawn once per process. Measured
(2026-11-27, 2-core Xeon, one core, spectral KS N = 64, batch 64, ``PeriodicCNNClosure(16, 2, 5)``
in the hook, ``benchmarks/closure_overhead.py``): 3 of 6 processes took 1,200-1,400 page faults a
step and ran 35-50% slower than the other 3, which took none; with fixed thresholds, none in 6.
Setting only one threshold is worse than neither: it also freezes the other at its small default
(measured: 8,300 faults a step with ``glibc.malloc.trim_threshold`` alone).

Fixed thresholds keep what a job has freed, up to ``TRIM_THRESHOLD`` at the top of the heap, for its
next step -- as tcmalloc and jemalloc do by design. A process never holds more than its own peak
heap so; each MPI rank is a process of its own. The command line applies them when it starts,
``keep_freed_memory()`` does from Python. Left alone: other C libraries, an allocator in
``LD_PRELOAD``, the user's own settings of these thresholds (``GLIBC_TUNABLES`` or ``MALLOC_*_``), and
``HYBRIDNDE_KEEP_FREED_MEMORY=0`` (or ``false``, ``no``, ``off``).
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "allocator_setting", "keep_freed_memory"]

log = logging.getLogger(__name__)

#: blocks up to this size come from the heap, not from a fresh mmap (glibc's largest allowed value)
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the top of the heap kept for reuse, up to this much
TRIM_THRESHOLD = 2**30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_OPT_OUT = "HYBRIDNDE_KEEP_FREED_MEMORY"
#: the user's own settings of what this module sets (glibc's tunables and their older variables)
_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold", "glibc.malloc.top_pad",
             "glibc.malloc.mmap_max")
_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_state: str | None = None  # what the first call found; later calls change nothing


def keep_freed_memory() -> str:
    """Fix glibc's trim and mmap thresholds for this process (once); returns what was done, in words.

    Affects every later allocation of the process (numpy's, torch's CPU tensors, other libraries'),
    never correctness; a no-op where the C library is not glibc or the user chose otherwise (module
    docstring).
    """
    global _state
    if _state is None:
        _state = _apply()
        log.debug("memory allocator: %s", _state)
    return _state


def allocator_setting() -> str:
    """What ``keep_freed_memory`` did in this process, without doing it (for a record of a run)."""
    return _state if _state is not None else "unchanged (keep_freed_memory not called)"


def _apply() -> str:
    choice = os.environ.get(_OPT_OUT, "1").strip().lower()
    if choice in ("0", "false", "no", "off"):
        return f"unchanged ({_OPT_OUT}={choice})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "unchanged (not glibc)"
    preloaded = os.environ.get("LD_PRELOAD", "")
    if any(name in preloaded for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "unchanged (an allocator in LD_PRELOAD)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in tunables for name in _TUNABLES) or any(name in os.environ for name in _VARIABLES):
        return "unchanged (the environment sets glibc's malloc thresholds)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "unchanged (mallopt not found)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: fixing the trim threshold alone leaves the mmap one at its 128 KiB start
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "unchanged (mallopt refused the thresholds)"
    return f"glibc malloc keeps freed memory (mmap threshold {MMAP_THRESHOLD // 2**20} MiB, " \
           f"trim threshold {TRIM_THRESHOLD // 2**20} MiB)"
