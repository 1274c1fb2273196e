"""Shared timing helpers for the benchmark scripts: threads, warm-up, interleaved repeats, medians,
a plain-text table and JSON lines.

Timing protocol (what every figure in docs/performance.md means):

* every contender is warmed up (its first call compiles/plans), then timed for ``repeats`` rounds;
* the rounds are **interleaved** (round-robin over the contenders), so a load spike on the shared
  machine hits all of them alike and the *ratios* stay meaningful;
* one timed call runs enough work to last about ``min_seconds`` (calibrated once after warm-up);
* we record wall time and process CPU time (``time.process_time``, all threads of this process) and
  report the **median** over the rounds. With one thread, CPU time is the fairer measure on a busy
  machine (it does not count time the scheduler gave to other processes); with several threads wall
  time is the one that matters. Both are printed and written to the JSON lines;
* with them, the minor page faults per call (``Timing.faults``): a loop that faults its temporaries
  in afresh every call is measuring the allocator, not the code;
* glibc's malloc keeps freed memory, as the ``hybridnde`` command does (``configure_threads`` calls
  ``hybridnde.allocator.keep_freed_memory``; ``HYBRIDNDE_KEEP_FREED_MEMORY=0`` measures without).

Thread control must happen before numpy/torch/jax start their pools, so call ``configure_threads``
before importing jax (XLA reads ``XLA_FLAGS`` once, at start-up).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = [
    "add_common_arguments", "configure_threads", "pin_to_cores", "parse_cores", "ConfinedCalls", "Timing", "calibrate", "time_interleaved",
    "print_table", "emit_json", "machine_description", "peak_rss_bytes", "format_rate", "synchronize",
    "clock_for", "on_gpu",
]


def add_common_arguments(parser: argparse.ArgumentParser, *, device: bool = True) -> None:
    """``--tiny`` (CI smoke run), ``--threads``, ``--cores``, ``--repeats``, ``--min-seconds``, ``--jsonl`` and,
    with ``device``, ``--device``."""
    parser.add_argument("--tiny", action="store_true",
                        help="smallest sizes and one short repeat: checks that the script runs (CI)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for torch and XLA (default 1; 0 = all cores)")
    parser.add_argument("--cores", default=None,
                        help="run the whole process (every library's threads, XLA's runtime threads included) "
                             "on these CPU cores, e.g. 0 or 0,1: with --threads 1 and one core, wall clock "
                             "compares one core against one core (Linux only)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds (median reported)")
    parser.add_argument("--min-seconds", type=float, default=0.2,
                        help="each timed call runs for at least this long (calibrated)")
    parser.add_argument("--jsonl", default=None, help="also append the JSON lines to this file")
    if device:
        parser.add_argument("--device", default="cpu",
                            help="torch device of our solver, closure and model (e.g. cuda); on a GPU the "
                                 "ratios use the wall clock")


def on_gpu(device) -> bool:
    """Whether ``device`` (a name or ``torch.device``) is a CUDA device."""
    import torch

    return torch.device(device).type == "cuda"


def synchronize(device) -> None:
    """Wait for queued GPU work, so a timed call covers it (no-op on CPU)."""
    import torch

    if on_gpu(device):
        torch.cuda.synchronize(device)


def clock_for(device) -> str:
    """The clock ratios are quoted in: process CPU time on the CPU (fair on a busy machine), wall time
    on a GPU (the host thread's CPU time is not the GPU's)."""
    return "wall" if on_gpu(device) else "cpu"


def parse_cores(cores: str, option: str = "--cores") -> set[int]:
    """``"0"``, ``"0,1"``, ``"0-3"`` -> core numbers; refused (naming ``option``) unless this process may
    run on all of them (Linux only)."""
    chosen: set[int] = set()
    for part in cores.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise SystemExit(f"{option} {cores!r}: give core numbers, e.g. 0 or 0,1 or 0-3")
        if last and int(last) < int(first):
            raise SystemExit(f"{option} {cores!r}: a range goes up, e.g. 1-3")
        chosen.update(range(int(first), int(last or first) + 1))
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit(f"{option} needs Linux (os.sched_setaffinity); leave it out here")
    available = os.sched_getaffinity(0)
    if not chosen <= available:
        raise SystemExit(f"{option} {cores!r}: this process may only use cores {sorted(available)}")
    return chosen


def _set_every_thread(cores: set[int]) -> None:
    """Confine every thread of this process to ``cores`` (threads it starts later inherit the calling
    thread's set); a thread that ends meanwhile is skipped."""
    for task in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]:
        try:
            os.sched_setaffinity(int(task), cores)
        except ProcessLookupError:
            pass


def pin_to_cores(cores: str) -> list[int]:
    """Restrict every thread of this process, and the threads it starts later, to ``cores`` ("0", "0,1",
    "0-3"); returns them. XLA keeps runtime threads beside its one compute thread (exponax's "one thread"
    used 1.1-1.4 cores here): pinned to one core with the rest, they share it, and wall clock is fair."""
    chosen = parse_cores(cores)
    _set_every_thread(chosen)  # threads already started (e.g. by an earlier import) too
    return sorted(chosen)


class ConfinedCalls:
    """Runs a contender's timed rounds with the whole process confined to ``cores`` and the previous
    affinity restored after each round: a peer timed on the cores it runs fastest on (``--peer-cores``)
    in the same process and interleaved rounds as contenders that use every core.

    Use as ``time_interleaved(..., confined={name: ConfinedCalls(cores)})``: the switch (one
    ``sched_setaffinity`` per thread, 0.15 ms with ~20 threads) happens outside the timed calls. Around
    each call it was inside them, +13% on exponax at (64, 1) (a review measured it, 2026-11-27)."""

    def __init__(self, cores: set[int]):
        self.cores = set(cores)

    @contextlib.contextmanager
    def __call__(self):
        previous = os.sched_getaffinity(0)
        _set_every_thread(self.cores)
        try:
            yield
        finally:
            _set_every_thread(previous)


def configure_threads(threads: int, cores: str | None = None) -> int:
    """Pin torch, OpenMP/MKL and XLA to ``threads`` intra-op threads (0 = every core); returns the count.

    XLA: ``--xla_cpu_multi_thread_eigen=false`` makes jax run its CPU kernels (Eigen, and the DUCC FFT
    it calls) on one thread. Must run before ``import jax``. (``intra_op_parallelism_threads=1``, set
    here until 2026-11-27, is no XLA flag: alone it aborts jax, after a flag it is ignored.)
    ``cores``: also confine the whole process to those CPU cores (``pin_to_cores``); ``threads=0``
    then means one thread per pinned core.
    """
    if cores is not None:
        os.environ["HYBRIDNDE_BENCH_CORES"] = ",".join(map(str, pin_to_cores(cores)))
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = available if threads <= 0 else threads
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(count)
    if count == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    import torch

    from hybridnde.allocator import keep_freed_memory

    keep_freed_memory()  # as the hybridnde command runs (common.py's docstring)
    torch.set_num_threads(count)
    return count


@dataclass
class Timing:
    """Per-call seconds of one contender over the rounds; ``units`` per call (e.g. member-steps)."""

    name: str
    units_per_call: float
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    faults: list[float] = field(default_factory=list)  # minor page faults per call

    @property
    def wall_median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def rate(self, clock: str = "cpu") -> float:
        """Units per second from the median time of ``clock`` (``"cpu"`` or ``"wall"``)."""
        seconds = self.cpu_median if clock == "cpu" else self.wall_median
        return self.units_per_call / max(seconds, 1e-12)

    def paired_speedup(self, other: "Timing", clock: str = "cpu") -> float:
        """How many times ``self``'s rate is ``other``'s: the median over rounds of the ratio within each
        round. The contenders of a round run within a second or so of each other, so this cancels the
        drifts of a shared machine (its speed moved by up to 2x within seconds here) that a ratio of two
        medians keeps."""
        mine, theirs = (self.cpu, other.cpu) if clock == "cpu" else (self.wall, other.wall)
        return statistics.median((t / other.units_per_call) / max(m / self.units_per_call, 1e-15)
                                 for m, t in zip(mine, theirs))


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed(call: Callable[[], object], faults: list[int] | None = None) -> tuple[float, float]:
    """``(wall, cpu)`` seconds of ``call()``; appends its minor page faults to ``faults`` if given."""
    before = _minor_faults() if faults is not None else 0
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if faults is not None:
        faults.append(_minor_faults() - before)
    return wall, cpu


def calibrate(call: Callable[[], object], min_seconds: float, *, max_calls: int = 1 << 16) -> int:
    """How many back-to-back calls of ``call`` last about ``min_seconds`` (one warm-up call first)."""
    call()
    calls = 1
    while calls < max_calls:
        wall, _ = _timed(lambda: [call() for _ in range(calls)])
        if wall >= min_seconds:
            break
        grown = calls * 2 if wall < min_seconds / 8 else max(calls + 1, int(calls * min_seconds / wall * 1.1))
        calls = min(max_calls, grown)
    return calls


def time_interleaved(contenders: dict[str, tuple[Callable[[], object], float]], *, repeats: int,
                     min_seconds: float, confined: Mapping[str, Callable[[], Any]] | None = None
                     ) -> dict[str, Timing]:
    """Time each ``name: (call, units_per_call)`` for ``repeats`` interleaved rounds.

    Each contender's call is repeated (calibrated count) so a round lasts about ``min_seconds``;
    the recorded times are per call. ``confined``: ``name -> context manager factory`` entered around
    that contender's calibration and each of its rounds, outside the timed calls (``ConfinedCalls``).
    """
    confined = dict(confined or {})

    def scope(name: str):
        return confined[name]() if name in confined else contextlib.nullcontext()

    counts = {}
    for name, (call, _) in contenders.items():
        with scope(name):
            counts[name] = calibrate(call, min_seconds)
    timings = {name: Timing(name, units) for name, (_, units) in contenders.items()}
    names = list(contenders)
    for round_index in range(repeats):
        # each round starts one contender later: no one always runs first (after the others' caches
        # and clocks, or fresh from them)
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            call = contenders[name][0]
            count = counts[name]
            faults: list[int] = []
            with scope(name):
                wall, cpu = _timed(lambda: [call() for _ in range(count)], faults)
            timings[name].wall.append(wall / count)
            timings[name].cpu.append(cpu / count)
            timings[name].faults.append(faults[0] / count)
    return timings


class FreeClosure:
    """A closure that costs nothing: it returns one of 4 stored zero tensors of ``like``'s shape in turn.

    Distinct tensors, as a real closure's fresh outputs are: the fused dense step on a GPU reads the 4
    outputs of a step in place only when they share no memory (a closure returning one tensor for every
    call gets its outputs copied, 4 more kernels a step: ``solvers.fused_dense``)."""

    def __init__(self, like):
        import torch

        self.outputs = [torch.zeros_like(like) for _ in range(4)]
        self.calls = 0

    def __call__(self, t, u):
        self.calls += 1
        return self.outputs[self.calls % 4]


def format_rate(value: float) -> str:
    """``1234567 -> '1.23M'``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def print_table(rows: Sequence[dict[str, object]], columns: Sequence[str], *, title: str | None = None,
                stream=sys.stdout) -> None:
    """A fixed-width text table of ``rows`` (dicts) restricted to ``columns``."""
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    if title:
        print(f"\n{title}", file=stream)
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths)), file=stream)
    print("  ".join("-" * width for width in widths), file=stream)
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)), file=stream)
    stream.flush()


def emit_json(records: Iterable[dict[str, object]], jsonl_path: str | None = None, stream=sys.stdout) -> None:
    """One JSON object per line on ``stream`` (and appended to ``jsonl_path`` when given)."""
    lines = [json.dumps(record, sort_keys=True) for record in records]
    for line in lines:
        print(line, file=stream)
    stream.flush()
    if jsonl_path:
        with open(jsonl_path, "a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)


@functools.lru_cache(maxsize=1)
def _static_description() -> dict[str, object]:
    """What does not change within a run: the CPU, the code's commit, the fast paths our step can use."""
    cpu_model, avx512 = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            info = handle.read()
        models = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        cpu_model = models[0] if models else cpu_model
        avx512 = " avx512f " in f" {info} "
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__)), check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    fast = {}
    try:  # without them (the fast extra, a C compiler) our step is the slower torch path
        from solvers import c_kernels, cpu_fft

        fast = {"c_kernels": bool(c_kernels.library() is not None), "ducc0": bool(cpu_fft.HAVE_DUCC)}
    except Exception:  # noqa: BLE001 -- a description, never a failure
        pass
    return {"cpu_model": cpu_model, "avx512": avx512, "commit": commit, **fast}


def machine_description(threads: int, device: str = "cpu") -> dict[str, object]:
    """What the figures were measured on (goes into every JSON line): CPU model and AVX-512, cores,
    threads, versions (torch; jax and exponax when loaded), the commit, whether our compiled kernels
    and DUCC were in use; names the GPU when there is one."""
    import torch

    description = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
                   "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                   "device": str(device), **_static_description()}
    for name in ("jax", "exponax"):
        module = sys.modules.get(name)
        if module is not None:
            description[name] = getattr(module, "__version__", None)
    from hybridnde.allocator import allocator_setting

    description["allocator"] = allocator_setting()  # what configure_threads did
    if os.environ.get("HYBRIDNDE_BENCH_CORES"):
        description["pinned_cores"] = os.environ["HYBRIDNDE_BENCH_CORES"]
    if on_gpu(device):
        description["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return description


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM``), bytes; falls back to ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
