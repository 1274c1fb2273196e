"""The fused ETDRK4 updates (``solvers.fused_stages``) give the unfused step, or are not used.

The Triton kernels run under Triton's CPU interpreter where Triton is installed (in a subprocess:
Triton reads ``TRITON_INTERPRET`` when the kernels are defined) and natively on a GPU. The safety net
(a kernel that fails or disagrees on its first step is dropped) is checked everywhere with stand-ins.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from solvers import KuramotoSivashinskySpectral, fused_stages

ROOT = Path(__file__).resolve().parents[1]
needs_cuda_and_triton = pytest.mark.skipif(not (torch.cuda.is_available() and fused_stages.triton is not None),
                                           reason="needs a CUDA device and Triton")


def time_dependent_closure(t, u):
    return 0.1 * torch.sin(u) * torch.cos(3.0 * t)


def fused_and_unfused(n_points, batch, *, dtype=torch.float64, closure=None, device="cpu", steps=30):
    """(fused solver, fused rollout, unfused rollout) from the same smooth state."""
    solvers = [KuramotoSivashinskySpectral(n_points=n_points, implementation="fft", dtype=dtype, closure=closure,
                                           device=device, capture_closure=True) for _ in range(2)]
    solvers[1].fused_updates = False
    x = solvers[0].x
    phase = torch.arange(batch, dtype=dtype, device=device)[:, None] / batch
    u0 = torch.cos(2 * torch.pi * (x / 22.0 + phase)) + 0.3 * torch.sin(6 * torch.pi * x / 22.0)
    with torch.no_grad():
        fused, unfused = (solver.rollout(u0, steps, save_every=10) for solver in solvers)
    return solvers[0], fused, unfused


INTERPRETED = """
import json, torch
from tests.test_fused_stages import fused_and_unfused, time_dependent_closure
results = []
for dtype in (torch.float64, torch.float32):
    for n_points, batch in ((64, 5), (256, 7)):  # 165 and 903 modes: one partial block, several blocks
        for closure in (None, time_dependent_closure):
            solver, fused, unfused = fused_and_unfused(n_points, batch, dtype=dtype, closure=closure, steps=20)
            results.append({"dtype": str(dtype), "closure": closure is not None, "used": solver.fused_updates,
                            "checked": solver._fused_checked,
                            "error": float((fused - unfused).abs().max() / unfused.abs().max()),
                            "moved": float((unfused[:, -1] - unfused[:, 0]).abs().max())})
print(json.dumps(results))
"""


def test_fused_kernels_match_the_unfused_step_in_the_triton_interpreter():
    pytest.importorskip("triton")
    environment = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    completed = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, env=environment,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    for result in results:
        assert result["used"] and result["checked"], result  # the kernels ran and passed their first check
        tolerance = 1e-13 if result["dtype"] == "torch.float64" else 1e-5
        assert result["error"] < tolerance, result
        assert result["moved"] > 0.1, result


@pytest.mark.parametrize("broken", ["raises", "does nothing"])
def test_a_fused_kernel_that_fails_its_first_step_is_dropped(monkeypatch, broken):
    calls = []

    def fused_step(u_hat, *args):
        calls.append(u_hat)
        if broken == "raises":
            raise RuntimeError("PTX compilation failed")
        return u_hat

    monkeypatch.setattr(fused_stages, "available", lambda u_hat: True)
    monkeypatch.setattr(fused_stages, "fused_fourier_step_into", fused_step)
    with pytest.warns(RuntimeWarning, match="failed" if broken == "raises" else "differ from the unfused"):
        solver, fused, unfused = fused_and_unfused(64, 3, closure=time_dependent_closure)
    assert not solver.fused_updates and len(calls) == 1  # tried once, then never again
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0)


def test_fused_updates_are_not_used_with_gradients_or_out_of_place(monkeypatch):
    monkeypatch.setattr(fused_stages, "available", lambda u_hat: True)
    monkeypatch.setattr(fused_stages, "fused_fourier_step_into", lambda *args: pytest.fail("fused step used"))
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
    u = torch.cos(2 * torch.pi * solver.x / 22.0)[None].repeat(2, 1)
    solver.rollout(u.clone().requires_grad_(True), 3)  # autograd path
    with torch.no_grad():
        solver.step(0.0, u)  # the public step leaves its input alone: not in place


@needs_cuda_and_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("closure", [None, time_dependent_closure], ids=["bare", "closure"])
def test_fused_kernels_match_the_unfused_step_on_cuda(dtype, closure, recwarn):
    for n_points, batch in ((1024, 64), (128, 3)):
        solver, fused, unfused = fused_and_unfused(n_points, batch, dtype=dtype, closure=closure, device="cuda")
        assert solver.fused_updates and solver._fused_checked
        tolerance = 1e-12 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(fused, unfused, rtol=0, atol=tolerance * unfused.abs().max().item())
    assert not [w for w in recwarn if "fused" in str(w.message) or "CUDA graphs" in str(w.message)]
