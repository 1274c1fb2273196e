"""``keep_freed_memory``: glibc serves mid-sized blocks from the heap and keeps the freed top of it.

Each case runs in a fresh interpreter (the thresholds are process-wide and set once). The probe
allocates a 24 MiB block, notes whether it lies below the program break (the heap, not a fresh mmap)
and whether the break stayed put when the block was freed (the heap not trimmed).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC_ONLY = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

PROBE = """
import ctypes, json
import numpy as np
from hybridnde.allocator import keep_freed_memory
state = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, (ctypes.c_long,)
block = np.ones(24 * 2**20 // 8)
address, brk = block.ctypes.data, libc.sbrk(0)
del block
print(json.dumps({"state": state, "in_heap": address < brk, "heap_kept": libc.sbrk(0) >= brk,
                  "again": keep_freed_memory() == state}))
"""


def probe(**environment: str) -> dict:
    clean = {key: value for key, value in os.environ.items()
             if key not in ("GLIBC_TUNABLES", "LD_PRELOAD", "HYBRIDNDE_KEEP_FREED_MEMORY")
             and not key.startswith("MALLOC_")}
    completed = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **environment}, capture_output=True,
                               text=True, timeout=120, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


@GLIBC_ONLY
def test_thresholds_keep_a_freed_block_in_the_heap():
    result = probe()
    assert result["state"].startswith("glibc malloc keeps freed memory"), result
    assert result["in_heap"] and result["heap_kept"], result
    assert result["again"]


@GLIBC_ONLY
def test_opting_out_leaves_glibc_as_it_was():
    result = probe(HYBRIDNDE_KEEP_FREED_MEMORY="0")
    assert result["state"] == "unchanged (HYBRIDNDE_KEEP_FREED_MEMORY=0)"
    assert not result["in_heap"], "glibc's own start threshold (128 KiB) maps a 24 MiB block"


@GLIBC_ONLY
def test_the_users_own_thresholds_win_and_the_probe_sees_a_trimmed_heap():
    # the mmap threshold alone (what the module docstring warns about): the block comes from the heap,
    # and the trim threshold, frozen at its 128 KiB start, hands the freed top back: heap_kept is False
    # here, so the probe does tell a trimmed heap from a kept one
    result = probe(GLIBC_TUNABLES=f"glibc.malloc.mmap_threshold={32 * 2**20}")
    assert result["state"] == "unchanged (the environment sets glibc's malloc thresholds)"
    assert result["in_heap"] and not result["heap_kept"], result


@GLIBC_ONLY
def test_other_malloc_tunables_do_not_stop_it():
    result = probe(GLIBC_TUNABLES="glibc.malloc.arena_max=2", MALLOC_ARENA_MAX="2")
    assert result["state"].startswith("glibc malloc keeps freed memory") and result["heap_kept"], result


THRESHOLDS_SET = "unchanged (the environment sets glibc's malloc thresholds)"


@pytest.mark.parametrize(("environment", "platform_name", "libc", "expected"), [
    *[({"HYBRIDNDE_KEEP_FREED_MEMORY": value}, "Linux", "glibc",
       f"unchanged (HYBRIDNDE_KEEP_FREED_MEMORY={value.strip().lower()})") for value in ("0", "false", "no", "off",
                                                                                       "FALSE ")],
    *[({"LD_PRELOAD": library}, "Linux", "glibc", "unchanged (an allocator in LD_PRELOAD)")
      for library in ("/usr/lib/libjemalloc.so.2", "/usr/lib/libtcmalloc.so.4", "libmimalloc.so")],
    *[({"GLIBC_TUNABLES": f"glibc.malloc.{tunable}=1"}, "Linux", "glibc", THRESHOLDS_SET)
      for tunable in ("mmap_threshold", "trim_threshold", "top_pad", "mmap_max")],
    ({"MALLOC_TOP_PAD_": "0"}, "Linux", "glibc", THRESHOLDS_SET),
    ({"MALLOC_MMAP_MAX_": "0"}, "Linux", "glibc", THRESHOLDS_SET),
    ({}, "Linux", "musl", "unchanged (not glibc)"),
    ({}, "Darwin", "", "unchanged (not glibc)"),
])
def test_it_leaves_malloc_alone_where_it_should(monkeypatch, environment, platform_name, libc, expected):
    from hybridnde import allocator

    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", "HYBRIDNDE_KEEP_FREED_MEMORY", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(allocator.platform, "system", lambda: platform_name)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: (libc, "1.0"))
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.ctypes, "CDLL", None)  # would fail loudly if it got as far as mallopt
    assert allocator.keep_freed_memory() == expected == allocator.allocator_setting()


def test_the_first_call_decides_for_the_process(monkeypatch):
    """The thresholds are set once: a later call (another command in the same process) changes nothing,
    even after the opt-out appears, and says what the first one did."""
    from hybridnde import allocator

    monkeypatch.delenv("HYBRIDNDE_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(allocator.platform, "system", lambda: "Darwin")
    first = allocator.keep_freed_memory()
    monkeypatch.setenv("HYBRIDNDE_KEEP_FREED_MEMORY", "0")
    assert allocator.keep_freed_memory() == first == allocator.allocator_setting() == "unchanged (not glibc)"
