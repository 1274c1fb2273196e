"""The CPU kernels of ``solvers/_kernels.c``, compiled with the system C compiler at first use.

On the CPU the ETDRK4 step costs its FFTs plus ~14 elementwise torch operations (each a pass over
memory and ~1-2 us of dispatch), and at batch 1 the dense step's 9 operations are nearly all
dispatch. The C functions do each stretch between two FFTs in one pass (``fused_fourier_step_into``,
here), the whole Fourier step with its own transforms in one call, members in vector lanes, and the
whole dense step in one call (``solvers.compiled_steps``: ``FourierStep``, ``DenseStep``);
docs/performance.md has the measurements. This module builds, loads and declares the library.

The library is built once per source, compiler and CPU (``-O3 -march=native``) into a cache
directory -- ``$HYBRIDNDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/hybridnde`` or ``~/.cache/hybridnde``
-- written to a temporary file and renamed, so concurrent processes (MPI ranks) never load a partial
one. The compiler is ``$CC``, else ``cc``, ``gcc`` or ``clang`` from ``PATH``. Without one (or with
``HYBRIDNDE_C_KERNELS=0``) ``library()`` is ``None`` and the solvers use their torch operations;
a compiler that rejects the source warns once per process, and the cache remembers it (a
``.failed`` file beside where the library would be: delete it to try again).

The Fourier-stage kernels share their rows among torch's intra-op threads
(``torch.get_num_threads()``) once an array has more than ``PARALLEL_GRAIN`` entries. They are built
with OpenMP where the compiler has it (``-fopenmp``; else without, single-threaded) and then run on
the OpenMP runtime torch itself loaded (on Linux torch's libgomp: one thread pool, not two).
Results do not depend on the thread count (each entry's arithmetic is the same).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["library", "available", "unavailable_reason", "openmp", "threads_for", "fused_fourier_step_into",
           "cache_directory"]

SOURCE = Path(__file__).with_name("_kernels.c")
#: ``-ffp-contract=off``: no FMA contraction of the vector-lane arithmetic, so a member's bits do not
#: depend on its lane or the build's vector width; GCC's ISO C mode already does this, clang's does not
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c99", "-ffp-contract=off")
#: tried first; a compiler without OpenMP (Apple's clang) builds the kernels without it
OPENMP_FLAG = "-fopenmp"
#: the stage kernels share their rows among threads from this many complex entries on (2 threads:
#: 1.3x at 4224 entries, 1.4x at 8448, 1.8x from 33792; docs/performance.md, "Threads")
PARALLEL_GRAIN = 4096
_SUFFIX = {torch.float64: "f64", torch.complex128: "f64", torch.float32: "f32", torch.complex64: "f32"}

_state: dict[str, object] = {"tried": False, "library": None, "reason": "not built yet"}


def cache_directory() -> Path:
    configured = os.environ.get("HYBRIDNDE_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridnde"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate:
            found = shutil.which(candidate)
            if found:
                return found
    return None


def _cpu_identity() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _library_path(compiler: str, source: bytes) -> Path:
    stat = os.stat(compiler)
    key = hashlib.sha256(b"\0".join([source, os.path.realpath(compiler).encode(), str(stat.st_size).encode(),
                                     str(stat.st_mtime_ns).encode(), " ".join((*FLAGS, OPENMP_FLAG)).encode(),
                                     platform.machine().encode(), _cpu_identity().encode()])).hexdigest()[:16]
    return cache_directory() / f"ks_kernels-{key}{'.dll' if os.name == 'nt' else '.so'}"


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside ``target``, then rename (atomic: never a partial library)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        for flags in ((*FLAGS, OPENMP_FLAG), FLAGS):
            completed = subprocess.run([compiler, *flags, "-o", temporary, str(SOURCE)], capture_output=True,
                                       text=True, timeout=300, check=False)
            if completed.returncode == 0:
                break
        if completed.returncode != 0:
            message = f"{Path(compiler).name} exited with {completed.returncode}: {completed.stderr.strip()[-500:]}"
            _remember_failure(_failure_path(target), message)
            raise RuntimeError(message)
        os.chmod(temporary, 0o755)  # mkstemp made it 0600; a shared cache directory needs it readable
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _failure_path(target: Path) -> Path:
    return target.with_name(target.name + ".failed")


def _remember_failure(path: Path, message: str) -> None:
    """A compiler that rejects the source does so again (same source, compiler and flags: same key), so
    later processes -- every MPI rank -- read why instead of compiling again."""
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(message)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def _trusted(status: os.stat_result) -> bool:
    """A cached library is loaded only if this user (or root) owns it and no one else may write it: the
    cache directory may be shared, and loading a library runs its code."""
    if not hasattr(os, "getuid"):
        return True
    return status.st_uid in (os.getuid(), 0) and not status.st_mode & 0o022


def _load_trusted(path: Path) -> ctypes.CDLL | None:
    """The library at ``path`` if it is ``_trusted``, else ``None``. Loaded from the very file that was
    checked, through its descriptor where ``/proc`` offers one: in a shared folder the name could be
    pointed at another file between the check and the load. The descriptor stays open (``_LOADED_FROM``):
    the dynamic loader knows a library by its name, and a closed descriptor's number, hence its
    ``/proc`` name, would be given to the next file opened."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    checked = f"/proc/self/fd/{descriptor}"
    if not _trusted(os.fstat(descriptor)):
        os.close(descriptor)
        return None
    if not os.path.exists(checked):  # no /proc (macOS): the name, checked a moment ago
        os.close(descriptor)
        return ctypes.CDLL(str(path))
    try:
        lib = ctypes.CDLL(checked)
    except OSError:
        os.close(descriptor)
        raise
    _LOADED_FROM.append(descriptor)
    return lib


#: descriptors of the files the loaded libraries came from, open for the life of the process
_LOADED_FROM: list[int] = []


def _declare(lib: ctypes.CDLL) -> None:
    """Argument types, so that Python ints pass as 64-bit integers and pointers without per-call wrapping."""
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f64", "f32"):
        for name, pointers in (("stage_a", 5), ("stage_b", 9), ("stage_d", 9), ("stage_out", 5)):
            function = getattr(lib, f"{name}_{suffix}")
            function.argtypes = [integer] * 4 + [pointer] * pointers
            function.restype = None
        function = getattr(lib, f"dense_step_{suffix}")
        function.argtypes = [integer] * 2 + [pointer] * 8
        function.restype = None
        function = getattr(lib, f"fourier_step_packed_{suffix}")
        function.argtypes = [integer] * 2 + [pointer] * 2
        function.restype = None
        function = getattr(lib, f"physical_step_packed_{suffix}")
        function.argtypes = [integer] * 2 + [pointer] * 3
        function.restype = None
        function = getattr(lib, f"whole_step_lanes_{suffix}")
        function.argtypes, function.restype = [], integer
        function = getattr(lib, f"squared_hat_{suffix}")
        function.argtypes = [integer] * 2 + [pointer] * 4
        function.restype = None
    lib.kernels_openmp.argtypes, lib.kernels_openmp.restype = [], ctypes.c_int
    lib.built_with_openmp = bool(lib.kernels_openmp())  # read once, a plain attribute after


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on the first call; ``None`` if they cannot be had (the reason
    is ``unavailable_reason()``)."""
    if _state["tried"]:
        return _state["library"]  # type: ignore[return-value]
    _state["tried"] = True
    if os.environ.get("HYBRIDNDE_C_KERNELS", "1") == "0":
        _state["reason"] = "switched off by HYBRIDNDE_C_KERNELS=0"
        return None
    compiler = _compiler()
    if compiler is None:
        _state["reason"] = "no C compiler found ($CC, cc, gcc, clang)"
        return None
    try:
        target = _library_path(compiler, SOURCE.read_bytes())
        failure = _failure_path(target)
        if failure.exists():
            raise RuntimeError(f"{failure.read_text(encoding='utf-8', errors='replace')} "
                               f"(remembered from an earlier build; delete {failure} to try again)")
        lib = _load_trusted(target)
        if lib is None:
            _build(compiler, target)
            lib = _load_trusted(target)
            if lib is None:
                status = target.stat()
                if hasattr(os, "getuid") and status.st_uid == os.getuid():  # ours, yet writable by others
                    raise RuntimeError(f"the file system of {target.parent} does not keep file modes (the "
                                       "library just built is writable by others); set HYBRIDNDE_CACHE_DIR to a "
                                       "folder on a local disk")
                raise RuntimeError(f"{target} was replaced by another user's file right after it was built; "
                                   f"check who else writes in {target.parent}")
        _declare(lib)
    except Exception as error:  # noqa: BLE001 -- any build or load failure: the torch operations
        _state["reason"] = f"building them failed ({type(error).__name__}: {error})"
        warnings.warn(f"hybridnde's compiled CPU kernels are unavailable, {_state['reason']}; the solvers use "
                      "torch operations (slower at small sizes). HYBRIDNDE_C_KERNELS=0 silences this.",
                      RuntimeWarning, stacklevel=3)
        return None
    _state["library"] = lib
    return lib


def unavailable_reason() -> str | None:
    return None if _state["library"] is not None else str(_state["reason"])


def available(x: Tensor) -> bool:
    """Whether the kernels can take ``x`` (a CPU tensor of a supported dtype) -- building them on the
    first call."""
    if x.device.type != "cpu" or x.dtype not in _SUFFIX:
        return False
    return library() is not None


def openmp() -> bool:
    """Whether the loaded kernels were built with OpenMP (share large arrays among threads)."""
    lib = library()
    return lib is not None and lib.built_with_openmp


def threads_for(x: Tensor, grain: int | None = None) -> int:
    """How many threads the stage kernels give ``x``: torch's intra-op count for arrays of more than
    ``grain`` entries (``PARALLEL_GRAIN`` if ``None``), else 1."""
    return torch.get_num_threads() if x.numel() > (PARALLEL_GRAIN if grain is None else grain) else 1


def _address(x: Tensor) -> int:
    if not x.is_contiguous():
        raise ValueError("the compiled ETDRK4 kernels need contiguous tensors")
    return x.data_ptr()


def _like(x: Tensor, state: Tensor) -> Tensor:
    """A nonlinear term as the kernels read it: the state's dtype (a closure may return another
    precision, which the torch step would promote), contiguous, the state's shape."""
    if x.shape != state.shape:
        raise ValueError(f"the nonlinear term has shape {tuple(x.shape)}, the state {tuple(state.shape)}")
    if x.dtype is state.dtype and x.is_contiguous():  # the usual case: no conversion call (~1.5 us each)
        return x
    return x.to(state.dtype).contiguous()


def fused_fourier_step_into(u_hat: Tensor, plan, coefficients, nonlinear, workspace, kept: int | None = None) -> Tensor:
    """``fourier_step_into(u_hat, u_hat, ...)`` with one compiled pass between FFTs (in place).

    Same arguments as ``solvers.fused_stages.fused_fourier_step_into``; ``kept``: the coefficients
    vanish from this mode on (the dealiasing cut; all modes if ``None``).
    """
    (stage_a, stage_b, stage_d, stage_out), stage, s, e, e2, q, d_u, d_b, f_u, f_ab, f_d = _stage_arguments(
        plan, coefficients, workspace, _SUFFIX[u_hat.dtype])
    batch, modes = u_hat.shape
    kept = modes if kept is None else kept
    v = _address(u_hat)
    threads = threads_for(u_hat)
    n_u = _like(nonlinear(0, u_hat), u_hat)
    stage_a(threads, batch, modes, kept, v, n_u.data_ptr(), e2, q, stage)
    n_a = _like(nonlinear(1, workspace.stage), u_hat)
    stage_b(threads, batch, modes, kept, v, n_u.data_ptr(), n_a.data_ptr(), e2, q, f_u, f_ab, stage, s)
    n_b = _like(nonlinear(1, workspace.stage), u_hat)
    stage_d(threads, batch, modes, kept, v, n_u.data_ptr(), n_b.data_ptr(), e, d_u, d_b, f_ab, stage, s)
    n_d = _like(nonlinear(2, workspace.stage), u_hat)
    stage_out(threads, batch, modes, kept, v, n_d.data_ptr(), s, e, f_d)
    # written behind torch's back: bump the version counter as an in-place torch op would, so that a
    # graph that saved u_hat refuses to backpropagate through the overwritten values
    torch.autograd.graph.increment_version(u_hat)
    return u_hat


def _stage_arguments(plan, coefficients, workspace, suffix: str) -> tuple:
    """The four stage kernels and the addresses that stay put from step to step -- the workspace's
    buffers, the plan's and coefficients' tensors -- taken once and kept on the workspace with the plan
    and coefficients they came from (held there, so the addresses stay valid): at N = 64 a step's
    Python-side argument work was ~10% of it."""
    cached = getattr(workspace, "_c_stage_arguments", None)
    if cached is not None and cached[0] is plan and cached[1] is coefficients and cached[2] == suffix:
        return cached[3]
    lib, c = library(), coefficients
    arguments = (tuple(getattr(lib, f"stage_{name}_{suffix}") for name in ("a", "b", "d", "out")),
                 _address(workspace.stage), _address(workspace.e2_u), _address(plan.E), _address(plan.E2),
                 *(_address(x) for x in (c.q, c.d_u, c.d_b, c.f_u, c.f_ab, c.f_d)))
    workspace._c_stage_arguments = (plan, coefficients, suffix, arguments)
    return arguments
