"""The CPU kernels of ``solvers/_kernels.c``, compiled with the system C compiler at first use.

On the CPU the ETDRK4 step costs its FFTs plus ~14 elementwise torch operations (each a pass over
memory and ~1-2 us of dispatch), and at batch 1 the dense step's 9 operations are nearly all
dispatch. The C functions do each stretch between two FFTs in one pass (``fused_fourier_step_into``),
the whole Fourier step with its own transforms in one call, members in vector lanes (``FourierStep``:
where it applies, the step without a closure at any batch) and the whole dense step in one call (``DenseStep``);
docs/performance.md has the measurements.

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

import numpy as np
import torch
from torch import Tensor

__all__ = ["library", "available", "unavailable_reason", "openmp", "threads_for", "whole_step_fits",
           "fused_fourier_step_into", "FourierStep", "DenseStep", "cache_directory"]

SOURCE = Path(__file__).with_name("_kernels.c")
#: ``-ffp-contract=off``: no FMA contraction of the vector-lane arithmetic, so a member's bits do not
#: depend on its lane or the build's vector width; GCC's ISO C mode already does this, clang's does not
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-std=c99", "-ffp-contract=off")
#: tried first; a compiler without OpenMP (Apple's clang) builds the kernels without it
OPENMP_FLAG = "-fopenmp"
#: the stage kernels share their rows among threads from this many complex entries on (2 threads:
#: 1.3x at 4224 entries, 1.4x at 8448, 1.8x from 33792; docs/performance.md, "Threads")
PARALLEL_GRAIN = 4096
#: the whole Fourier step shares its groups of lanes among threads from this many complex entries on
#: (and two groups): it does more work per entry than a stage kernel (2 threads / 1, N = 64: 1.02x at
#: 528 entries, 1.20x at 1056, 1.49x at 2112; N = 256, 2064 entries: 1.54x)
WHOLE_STEP_GRAIN = 1024
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


def whole_step_fits(batch: int, n_points: int) -> bool:
    """Whether ``FourierStep`` is the faster step for ``batch`` members of ``n_points``: at every size
    measured, on one thread and on several (its members in vector lanes: 1.6-1.9x the DUCC transforms
    with the stage kernels between them at the issue's batched sizes, level with the per-member step it
    replaced at batch 1; docs/performance.md, "Members in vector lanes"). The one place that chooses, so
    that tests can send a step to the stage kernels instead (``tests/conftest.py``, ``stage_kernels``)."""
    return True


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


class FourierStep:
    """The whole ETDRK4 Fourier step without a closure as one compiled call (``fourier_step`` in
    ``_kernels.c``: the four stages and eight real transforms of ``lanes`` members at once, one member
    per vector lane, in cache): ``u_hat: (batch, n // 2 + 1)``, a contiguous CPU tensor of
    ``complex_dtype``, stepped in place.

    One ctypes call a step where the FFT path makes ~12 Python-level calls, and ~2x its arithmetic
    speed (docs/performance.md, "Members in vector lanes"); ``n_points`` a power of two (``supports``).
    The plan's addresses are packed once per plan, so a step is one ctypes call of four arguments plus
    a few attribute reads.
    """

    def __init__(self, n_points: int, complex_dtype: torch.dtype):
        if not self.supports(n_points):
            raise ValueError(f"the compiled Fourier step needs a power of two >= 4 points, not {n_points}")
        self.n_points, self.complex_dtype = n_points, complex_dtype
        half, suffix = n_points // 2, _SUFFIX[complex_dtype]
        # twiddles in float64, rounded once to the step's precision
        self.omega = torch.as_tensor(np.exp(-2j * np.pi * np.arange(half) / n_points), dtype=complex_dtype)
        lib = library()
        #: members a call steps together (32 bytes of them, 64 with AVX-512: 4 or 8 in float64)
        self.lanes = int(getattr(lib, "whole_step_lanes_" + suffix)())
        #: batches whose probes take every code path: wide groups and a lone member (lanes + 1), a
        #: narrow group (2); the solver checks each entry point on them before first use
        self.probe_batches = (self.lanes + 1, 2)
        # per thread: 7 rows of modes + the transform's m complex values, each entry a vector of lanes
        self._scratch_entries = (16 * half + 14) * self.lanes
        self._scratch = torch.empty(self._scratch_entries, dtype=self.omega.real.dtype)
        self._function = getattr(lib, "fourier_step_packed_" + suffix)
        self._physical_function = getattr(lib, "physical_step_packed_" + suffix)
        #: position of complex sample j in the transforms' bit-reversed order (log2(n / 2) bits)
        bits = (half - 1).bit_length()
        self._bit_reversal = torch.tensor([int(f"{j:0{bits}b}"[::-1], 2) if bits else 0 for j in range(half)],
                                          dtype=torch.int64)
        self._plan, self._arguments = None, None
        #: whether ``physical`` made the torch step on the probes (the solver checks before first use)
        self.physical_checked = False

    @staticmethod
    def supports(n_points: int) -> bool:
        return n_points >= 4 and n_points & (n_points - 1) == 0

    def __reduce__(self):
        return FourierStep, (self.n_points, self.complex_dtype)

    def _bind(self, plan) -> None:
        """Pack the grid sizes and the addresses of ``plan``'s folded coefficients (no closure), the
        scratch and the bit-reversal table into one int64 tensor, the kernel's one argument besides the
        states."""
        c = plan.folded
        self._plan = plan  # keeps the tensors behind the addresses alive
        self._arguments = torch.tensor([self.n_points // 2, plan.folded_low.q.shape[-1], *(
            _address(x) for x in (plan.E, plan.E2, c.q, c.d_u, c.d_b, c.f_u, c.f_ab, c.f_d, self.omega, self._scratch,
                                  self._bit_reversal))], dtype=torch.int64)

    def _threads(self, batch: int, entries: Tensor, plan) -> int:
        """Threads for ``batch`` members (``entries``: the state, its size deciding), with the scratch
        grown for them and the arguments packed for ``plan``."""
        threads = min(threads_for(entries, WHOLE_STEP_GRAIN), -(-batch // self.lanes)) or 1
        if threads * self._scratch_entries > self._scratch.numel():
            self._scratch = torch.empty(threads * self._scratch_entries, dtype=self.omega.real.dtype)
            self._plan = None
        if plan is not self._plan:
            self._bind(plan)
        return threads

    def __call__(self, u_hat: Tensor, plan) -> Tensor:
        """One step of ``u_hat`` in place with ``plan`` (an ``ETDRK4Plan`` of this grid and dtype)."""
        batch = u_hat.shape[0]
        threads = self._threads(batch, u_hat, plan)
        self._function(threads, batch, u_hat.data_ptr(), self._arguments.data_ptr())
        torch.autograd.graph.increment_version(u_hat)
        return u_hat

    def physical(self, u: Tensor, plan) -> Tensor:
        """One step of physical fields ``u: (batch, n)`` (contiguous, CPU, the real dtype): a new tensor,
        ``u`` left alone. The transforms to Fourier space and back run in the same call, in cache."""
        batch = u.shape[0]
        out = torch.empty_like(u)
        threads = self._threads(batch, u, plan)
        self._physical_function(threads, batch, u.data_ptr(), out.data_ptr(), self._arguments.data_ptr())
        return out


class DenseStep:
    """``DenseStepper.step`` (no closure) as one compiled call: ``u: (batch, n)`` -> a new tensor.

    Holds the stepper's workspace and matrices (their addresses are taken once); ``u`` must be a
    contiguous CPU tensor of the stepper's dtype and batch size (``accepts``).
    """

    def __init__(self, stepper):
        if stepper.with_closure:
            raise ValueError("the compiled dense step has no closure slots")
        self.batch, self.n_points = stepper.workspace.shape[0], stepper.stage.shape[-1]
        self.dtype = stepper.workspace.dtype
        self.shape = torch.Size((self.batch, self.n_points))
        self._stepper = stepper  # keeps the buffers below alive
        self._function = getattr(library(), "dense_step_" + _SUFFIX[self.dtype])
        self._buffers = tuple(_address(x) for x in (stepper.workspace, stepper.stage, stepper.a_matrix,
                                                    stepper.b_matrix, stepper.d_matrix, stepper.final_matrix))

    def accepts(self, u: Tensor) -> bool:
        return (u.dtype is self.dtype and u.is_cpu and u.shape == self.shape and u.is_contiguous()
                and not u.requires_grad)

    def __reduce__(self):
        # copies and pickles of a stepper drop the compiled step (its raw addresses point into the
        # original's buffers); they step with torch operations
        return _no_compiled_step, ()

    def __call__(self, u: Tensor) -> Tensor:
        out = torch.empty_like(u)
        self._function(self.batch, self.n_points, u.data_ptr(), *self._buffers, out.data_ptr())
        return out


def _no_compiled_step() -> None:
    """What a copied or unpickled ``DenseStep`` becomes (see ``DenseStep.__reduce__``)."""
    return None
