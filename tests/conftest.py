"""Shared fixtures for the solver tests: dtypes, devices, analytic problems and an order fit.

Analytic problems live here once (torchdiffeq style) and are looped over dtype and device; every
convergence test fits the slope of log(error) against log(dt) with ``fitted_order``.
"""
from __future__ import annotations

import math
import signal
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float64, torch.float32]


@pytest.fixture(autouse=True)
def single_cpu_thread():
    """Run every test on one intra-op thread: the tests step small tensors, where a second OpenMP
    thread gains nothing, and on a busy 2-core machine its barrier waits made some tests 40x slower.
    Per test, because in-process CLI calls (``rollout.threads``, ``run --threads``) may change it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def ctrl_c_raises_keyboard_interrupt():
    """Python's own SIGINT handler for the session. A suite started in the background (``nohup``, ``&``
    in a script) inherits SIGINT ignored, and Python then installs no handler: the tests that press
    Ctrl-C on themselves (os.kill) saw nothing and failed, 7 of them."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture
def stage_kernels(monkeypatch):
    """Steps take the compiled stage kernels (and DUCC), not the compiled whole Fourier step that would
    otherwise take every step without a closure (``compiled_steps.whole_step_fits``)."""
    from solvers import compiled_steps

    monkeypatch.setattr(compiled_steps, "whole_step_fits", lambda batch, n_points: False)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator; draw on CPU and move, so every device sees the same numbers."""
    return torch.Generator().manual_seed(20240601)


def fitted_order(step_sizes: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of ``log(error)`` against ``log(step_size)``."""
    errors = np.asarray(errors, dtype=np.float64)
    assert np.all(np.isfinite(errors)) and np.all(errors > 0), f"errors must be positive: {errors}"
    return float(np.polyfit(np.log(np.asarray(step_sizes, dtype=np.float64)), np.log(errors), 1)[0])


def tolerance_for(dtype: torch.dtype, float64: float, float32: float) -> float:
    return float64 if dtype == torch.float64 else float32


@dataclass(frozen=True)
class AnalyticProblem:
    """``du/dt = f(t, u)`` with a closed-form solution ``exact(t, u0)``; ``u: (batch, n)``."""

    name: str
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    exact: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    u0: Callable[[torch.dtype, torch.device], torch.Tensor]


def _forced_decay_f(t, u):
    return -u + torch.sin(t)


def _forced_decay_exact(t, u0):
    # u' = -u + sin t  =>  u = (u0 + 1/2) e^{-t} + (sin t - cos t) / 2
    t = torch.as_tensor(t, dtype=u0.dtype, device=u0.device)
    return (u0 + 0.5) * torch.exp(-t) + 0.5 * (torch.sin(t) - torch.cos(t))


_OMEGA = 1.7


def _oscillator_f(t, u):
    position, velocity = u.unbind(-1)
    return torch.stack([velocity, -_OMEGA**2 * position], dim=-1)


def _oscillator_exact(t, u0):
    t = torch.as_tensor(t, dtype=u0.dtype, device=u0.device)
    position, velocity = u0.unbind(-1)
    c, s = torch.cos(_OMEGA * t), torch.sin(_OMEGA * t)
    return torch.stack([position * c + velocity / _OMEGA * s,
                        -position * _OMEGA * s + velocity * c], dim=-1)


ANALYTIC_PROBLEMS = {
    "forced_decay": AnalyticProblem(
        "forced_decay", _forced_decay_f, _forced_decay_exact,
        lambda dtype, device: torch.tensor([[1.0], [-0.3], [2.5]], dtype=dtype, device=device)),
    "harmonic_oscillator": AnalyticProblem(
        "harmonic_oscillator", _oscillator_f, _oscillator_exact,
        lambda dtype, device: torch.tensor([[1.0, 0.0], [0.3, -1.2]], dtype=dtype, device=device)),
}


@pytest.fixture(params=sorted(ANALYTIC_PROBLEMS))
def analytic_problem(request) -> AnalyticProblem:
    return ANALYTIC_PROBLEMS[request.param]


# -- Kuramoto-Sivashinsky ------------------------------------------------------------------------
KS_DOMAIN_LENGTH = 22.0


def periodic_smooth_field(x: np.ndarray, domain_length: float = KS_DOMAIN_LENGTH) -> np.ndarray:
    """``cos(2 pi x / L) (1 + sin(2 pi x / L))``: smooth and exactly periodic on ``[0, L)``."""
    phase = 2 * math.pi * np.asarray(x) / domain_length
    return np.cos(phase) * (1 + np.sin(phase))


def numpy_ks_reference(n_points: int, horizon: float, dt: float, *, domain_length: float = KS_DOMAIN_LENGTH,
                       linear_shift: float = 0.0) -> np.ndarray:
    """An independent KS solution: full complex FFT, no dealiasing, integrating-factor RK4.

    Solves ``u_t = -u u_x - u_xx - u_xxxx + linear_shift * u`` from ``periodic_smooth_field`` and
    returns ``u(horizon)`` on ``x_j = j L / n_points``. Lawson 1967 (integrating factor), classical RK4.
    """
    x = np.arange(n_points) * domain_length / n_points
    wavenumber = 2 * np.pi / domain_length * np.fft.fftfreq(n_points, 1.0 / n_points)
    linear = wavenumber**2 - wavenumber**4 + linear_shift
    derivative = 1j * wavenumber
    derivative[n_points // 2] = 0.0

    def nonlinear(v_hat):
        u = np.fft.ifft(v_hat).real
        return -0.5 * derivative * np.fft.fft(u * u)

    half = np.exp(linear * dt / 2)
    full = half * half
    v_hat = np.fft.fft(periodic_smooth_field(x, domain_length))
    for _ in range(int(round(horizon / dt))):
        k1 = nonlinear(v_hat)
        k2 = nonlinear(half * (v_hat + 0.5 * dt * k1))
        k3 = nonlinear(half * v_hat + 0.5 * dt * k2)
        k4 = nonlinear(full * v_hat + dt * half * k3)
        v_hat = full * v_hat + dt / 6 * (full * k1 + 2 * half * (k2 + k3) + k4)
    return np.fft.ifft(v_hat).real


def spectral_derivatives(u: np.ndarray, domain_length: float) -> dict[int, np.ndarray]:
    """Derivatives of orders 1, 2, 4 of a periodic sample ``u`` by FFT (exact for resolved fields)."""
    n_points = u.shape[-1]
    wavenumber = 2 * np.pi / domain_length * np.fft.fftfreq(n_points, 1.0 / n_points)
    u_hat = np.fft.fft(u)
    first = 1j * wavenumber
    first[n_points // 2] = 0.0
    return {1: np.fft.ifft(first * u_hat).real,
            2: np.fft.ifft(-(wavenumber**2) * u_hat).real,
            4: np.fft.ifft(wavenumber**4 * u_hat).real}


# -- fused / compiled ETDRK4 paths against the plain torch step (test_fused_stages, test_c_kernels) --
def time_dependent_closure(t, u):
    return 0.1 * torch.sin(u) * torch.cos(3.0 * t)


def run_in_triton_interpreter(script: str) -> dict:
    """Run ``script`` (Python source printing one JSON object last) in a subprocess with Triton's CPU
    interpreter (``TRITON_INTERPRET=1``, read when Triton defines its kernels, hence the subprocess);
    return that object. Skips where Triton is not installed."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    completed = subprocess.run([sys.executable, "-c", script], cwd=root, env=environment,
                               capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def smooth_state(solver, batch: int, dtype: torch.dtype = torch.float64, device="cpu"):
    """(batch, n) smooth fields on ``solver``'s grid with member-dependent phases."""
    x = solver.x
    phase = torch.arange(batch, dtype=dtype, device=device)[:, None] / batch
    return torch.cos(2 * torch.pi * (x / 22.0 + phase)) + 0.3 * torch.sin(6 * torch.pi * x / 22.0)


def fused_and_unfused(n_points: int, batch: int, *, dtype=torch.float64, closure=None, device="cpu", steps: int = 30,
                      implementation: str = "fft"):
    """(fused solver, fused rollout, unfused rollout) from the same smooth state (``fused_updates``
    on and off: Triton or C kernels, DUCC transforms, the compiled dense step)."""
    from solvers import KuramotoSivashinskySpectral

    solvers = [KuramotoSivashinskySpectral(n_points=n_points, implementation=implementation, dtype=dtype,
                                           closure=closure, device=device, capture_closure=True) for _ in range(2)]
    solvers[1].fused_updates = False
    u0 = smooth_state(solvers[0], batch, dtype, device)
    with torch.no_grad():
        fused, unfused = (solver.rollout(u0, steps, save_every=min(10, steps)) for solver in solvers)
    return solvers[0], fused, unfused


def leftovers(folder) -> list[str]:
    """The names in ``folder``, sorted: what a write or a lock left there."""
    return sorted(p.name for p in folder.iterdir())


def a_dead_pid() -> int:
    """The PID of a process that has ended (a killed writer's, for the orphan sweeps)."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


def break_chunk_index(partial) -> int:
    """Overwrite the signatures of a partial file's version-1 B-tree nodes of chunk type (``u``'s chunk
    index; HDF5 file format, "Version 1 B-trees"), as a kill between a split's writes can leave them
    unreadable; returns how many."""
    from pathlib import Path

    partial = Path(partial)
    damaged = bytearray(partial.read_bytes())
    nodes = [at for at in range(len(damaged) - 4) if damaged.startswith(b"TREE\x01", at)]
    for at in nodes:
        damaged[at:at + 4] = b"XXXX"
    partial.write_bytes(bytes(damaged))
    return len(nodes)
