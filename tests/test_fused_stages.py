"""The fused ETDRK4 updates (``solvers.fused_stages``) give the unfused step, or are not used.

The Triton kernels run under Triton's CPU interpreter where Triton is installed (in a subprocess:
Triton reads ``TRITON_INTERPRET`` when the kernels are defined) and natively on a GPU. The safety net
(a kernel that fails or disagrees on its first step is dropped) is checked everywhere with stand-ins.
"""
from __future__ import annotations

import pytest
import torch

from conftest import fused_and_unfused, run_in_triton_interpreter, time_dependent_closure
from solvers import KuramotoSivashinskySpectral, fused_stages

needs_cuda_and_triton = pytest.mark.skipif(not (torch.cuda.is_available() and fused_stages.HAVE_TRITON),
                                           reason="needs a CUDA device and Triton")


INTERPRETED = """
import json, torch
from solvers import KuramotoSivashinskySpectral, c_kernels, compiled_steps
compiled_steps.whole_step_fits = lambda batch, n_points: False  # the stage kernels, not the compiled whole step
from tests.conftest import fused_and_unfused, time_dependent_closure
results = []
for dtype in (torch.float64, torch.float32):
    for n_points, batch in ((64, 5), (256, 7)):  # 165 and 903 modes: one partial block, several blocks
        for closure in (None, time_dependent_closure):
            solver, fused, unfused = fused_and_unfused(n_points, batch, dtype=dtype, closure=closure, steps=20)
            results.append({"dtype": str(dtype), "closure": closure is not None, "used": solver.fused_updates,
                            "checked": solver._fused_checked,
                            "error": float((fused - unfused).abs().max() / unfused.abs().max()),
                            "moved": float((unfused[:, -1] - unfused[:, 0]).abs().max())})
# a member whose square overflows in the first step: the kernels and the unfused step turn different
# modes into NaN, which must not fail the first check
overflowing = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
u = torch.cos(2 * torch.pi * overflowing.x / 22.0).repeat(2, 1)
u[1] *= 1e160
with torch.no_grad():
    saved = overflowing.rollout(u, 2)
overflow = {"used": overflowing.fused_updates, "checked": overflowing._fused_checked,
            "first_finite": bool(torch.isfinite(saved[0]).all()), "second_finite": bool(torch.isfinite(saved[1, -1]).all())}
# a float32 solver whose closure answers in float64: the kernels must read the term in float32
solver, fused, unfused = fused_and_unfused(64, 3, dtype=torch.float32, closure=lambda t, u: 0.1 * torch.sin(u.double()))
precision = {"used": solver.fused_updates, "error": float((fused - unfused).abs().max() / unfused.abs().max())}
print(json.dumps({"results": results, "overflow": overflow, "precision": precision}))
"""


def test_fused_kernels_match_the_unfused_step_in_the_triton_interpreter():
    printed = run_in_triton_interpreter(INTERPRETED)
    results = printed["results"]
    assert len(results) == 8
    for result in results:
        assert result["used"] and result["checked"], result  # the kernels ran and passed their first check
        tolerance = 1e-13 if result["dtype"] == "torch.float64" else 1e-5
        assert result["error"] < tolerance, result
        assert result["moved"] > 0.1, result
    overflow = printed["overflow"]
    assert overflow == {"used": True, "checked": True, "first_finite": True, "second_finite": False}, overflow
    assert printed["precision"]["used"] and printed["precision"]["error"] < 1e-5, printed["precision"]


@pytest.mark.parametrize("broken", ["raises", "does nothing"])
def test_a_fused_kernel_that_fails_its_first_step_is_dropped(monkeypatch, broken):
    calls = []

    def fused_step(u_hat, *args, **kwargs):
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


def stand_in_fused_step(u_hat, plan, coefficients, nonlinear, workspace, kept=None):
    """A correct stand-in for the kernels on the CPU: the unfused step over all modes, in place."""
    from solvers.etdrk4_stepping import fourier_step_into
    return fourier_step_into(u_hat, u_hat, plan, coefficients, coefficients, nonlinear, workspace)


def test_the_first_check_calls_neither_the_closure_nor_looks_at_the_state(monkeypatch):
    """The check runs on a smooth probe without the closure: the closure sees exactly 4 calls a step
    (a stochastic or stateful one would otherwise fail the check or see extra calls), and members
    blown up from the start do not fail it."""
    calls = []

    def noisy_closure(t, u):
        calls.append(float(t))
        return 0.01 * torch.randn_like(u)

    monkeypatch.setattr(fused_stages, "available", lambda u_hat: True)
    monkeypatch.setattr(fused_stages, "fused_fourier_step_into", stand_in_fused_step)
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="fft", closure=noisy_closure)
    u = torch.cos(2 * torch.pi * solver.x / 22.0).repeat(3, 1)
    u[1] = float("nan")
    with torch.no_grad():
        saved = solver.rollout(u, 2)
    assert solver.fused_updates and solver._fused_checked
    assert calls == [0.0, 0.125, 0.125, 0.25, 0.25, 0.375, 0.375, 0.5]  # 4 stage calls a step, dt = 0.25
    assert torch.isfinite(saved[[0, 2]]).all() and torch.isnan(saved[1, -1]).all()


def test_huge_states_do_not_take_the_fused_path(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(fused_stages, "INTERPRETED", True)  # any device passes then; only the size decides
    assert fused_stages.available(torch.empty(4, 33, dtype=torch.complex128, device="meta"))
    too_many = torch.empty(2, fused_stages.MAX_ENTRIES // 2 + 1, dtype=torch.complex64, device="meta")
    assert not fused_stages.available(too_many)


def test_a_dense_stepper_with_closure_slots_refuses_the_plain_step():
    solver = KuramotoSivashinskySpectral(n_points=16, closure=lambda t, u: u)
    u = torch.ones(2, 16, dtype=torch.float64)
    with torch.no_grad():
        stepper = solver._dense_stepper(u, solver.dt)
    with pytest.raises(ValueError, match="step_with_closure"):
        stepper.step(u)


def test_fused_updates_are_not_used_with_gradients_or_on_the_callers_tensors(monkeypatch):
    monkeypatch.setattr(fused_stages, "available", lambda u_hat: True)
    monkeypatch.setattr(fused_stages, "fused_fourier_step_into", lambda *args, **kwargs: pytest.fail("fused step used"))
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
    u = torch.cos(2 * torch.pi * solver.x / 22.0)[None].repeat(2, 1)
    solver.rollout(u.clone().requires_grad_(True), 3)  # autograd path
    u_hat = solver.to_fourier(u)
    with torch.no_grad():
        solver.step_fourier(0.0, u_hat)  # the caller's Fourier state: never updated in place


def test_the_public_step_fuses_on_its_own_transform(monkeypatch, stage_kernels):
    calls = []

    def fused_step(u_hat, *args, **kwargs):
        calls.append(u_hat)
        return stand_in_fused_step(u_hat, *args, **kwargs)

    monkeypatch.setattr(fused_stages, "available", lambda u_hat: True)
    monkeypatch.setattr(fused_stages, "fused_fourier_step_into", fused_step)
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
    reference = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
    reference.fused_updates = False
    u = torch.cos(2 * torch.pi * solver.x / 22.0)[None].repeat(2, 1)
    with torch.no_grad():
        stepped = solver.step(0.0, u)
    assert len(calls) == 2  # the first check on a probe, then the step
    with torch.no_grad():
        torch.testing.assert_close(stepped, reference.step(0.0, u), rtol=0, atol=1e-13)


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
