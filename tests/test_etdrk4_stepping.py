"""The fast ETDRK4 paths of the spectral KS solver (``solvers.etdrk4_stepping``) agree with the
differentiable reference path, keep states independent, and work in float32.

The reference is the autograd path (``fourier_step``: fresh tensors, no rearrangement tricks beyond
the exact algebra); its accuracy against an independent solution is tested in
test_kuramoto_sivashinsky_spectral.py.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from solvers import KuramotoSivashinskySpectral
from solvers.etdrk4_stepping import circulant_matrix


def make_solver(**options) -> KuramotoSivashinskySpectral:
    options.setdefault("domain_length", 22.0)
    options.setdefault("n_points", 64)
    return KuramotoSivashinskySpectral(**options)


def smooth_fields(solver, batch: int, seed: int = 3) -> torch.Tensor:
    """(batch, n) smooth random fields with a non-zero mean."""
    generator = torch.Generator().manual_seed(seed)
    x = solver.x.cpu().to(torch.float64)
    modes = torch.arange(1, 7, dtype=torch.float64)
    phase = 2 * math.pi / solver.domain_length * modes[:, None] * x[None, :]
    a = torch.randn(batch, 6, generator=generator, dtype=torch.float64) / modes
    b = torch.randn(batch, 6, generator=generator, dtype=torch.float64) / modes
    u = a @ torch.cos(phase) + b @ torch.sin(phase) + 0.3
    return u.to(solver.dtype)


def reference_rollout(solver, u0, n_steps, dt=None):
    """The differentiable path: u0 requires grad, so neither in-place nor dense shortcuts apply."""
    u = u0.clone().requires_grad_(True)
    return solver.rollout(u, n_steps, dt=dt).detach()


@pytest.mark.parametrize("implementation", ["fft", "dense", "auto"])
@pytest.mark.parametrize("batch", [1, 5])
def test_fast_paths_match_differentiable_path(implementation, batch):
    solver = make_solver(implementation=implementation)
    u0 = smooth_fields(solver, batch)
    expected = reference_rollout(solver, u0, 40)
    with torch.inference_mode():
        got = solver.rollout(u0, 40)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() < 1e-12 * scale
    assert (expected[:, -1] - u0).abs().max() > 0.1  # the state did evolve


def test_step_and_step_fourier_leave_their_input_alone():
    solver = make_solver(implementation="fft")
    u0 = smooth_fields(solver, 3)
    u_hat = solver.to_fourier(u0)
    before, before_hat = u0.clone(), u_hat.clone()
    with torch.no_grad():
        solver.step(0.0, u0)
        solver.step_fourier(0.0, u_hat)
    assert torch.equal(u0, before) and torch.equal(u_hat, before_hat)


@pytest.mark.parametrize("implementation", ["fft", "dense"])
def test_saved_states_are_not_overwritten_by_later_steps(implementation):
    """The no-grad path updates its internal state in place; what trajectory yielded must stay put."""
    solver = make_solver(implementation=implementation)
    u0 = smooth_fields(solver, 2)
    with torch.no_grad():
        saved = [u for _, u in solver.trajectory(u0, 6)]
        copies = [u.clone() for u in saved]
        for _ in solver.trajectory(u0, 6):  # more steps through the same cached buffers
            pass
    for u, copy in zip(saved, copies):
        assert torch.equal(u, copy)
    assert not torch.equal(saved[0], saved[-1])


def test_interleaved_trajectories_are_independent():
    """Two generators of the same batch size share the workspace buffers but not their states."""
    solver = make_solver(implementation="fft")
    first, second = smooth_fields(solver, 4, seed=1), smooth_fields(solver, 4, seed=2)
    with torch.no_grad():
        alone = [solver.rollout(u0, 10) for u0 in (first, second)]
        together = list(zip(solver.trajectory(first, 10), solver.trajectory(second, 10)))
    for index in range(2):
        interleaved = torch.stack([pair[index][1] for pair in together], dim=1)
        torch.testing.assert_close(interleaved, alone[index], rtol=0, atol=0)


@pytest.mark.parametrize("implementation", ["fft", "dense"])
def test_closure_path_without_gradients_matches_differentiable_path(implementation):
    closure_calls = []

    def closure(t, u):
        closure_calls.append((u, u.clone()))
        return 0.1 * torch.sin(u) * torch.cos(t)

    solver = make_solver(closure=closure, dt=0.2, implementation=implementation)
    u0 = smooth_fields(solver, 3)
    expected = reference_rollout(solver, u0, 15, dt=0.2)
    closure_calls.clear()
    with torch.inference_mode():
        got = solver.rollout(u0, 15, dt=0.2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * expected.abs().max().item())
    # the closure's inputs were left as it saw them (never squared in place: a squared input is still
    # finite, so compare with copies taken when it was called)
    assert len(closure_calls) == 4 * 15 and all(torch.equal(u, seen) for u, seen in closure_calls)


@pytest.mark.parametrize("implementation", ["fft", "dense"])
def test_closure_inputs_are_not_modified_after_the_call(implementation):
    kept = []

    def closure(t, u):
        kept.append((u, u.clone()))
        return u  # returning its input: the solver must copy it out before reusing any buffer

    solver = make_solver(closure=closure, implementation=implementation)
    with torch.no_grad():
        solver.rollout(smooth_fields(solver, 2), 3)
    assert len(kept) == 12
    assert all(torch.equal(u, copy) for u, copy in kept)


def sine_closure(t, u):
    return 0.1 * torch.sin(u) * torch.cos(t)


@pytest.mark.parametrize("closure", [None, sine_closure], ids=["bare", "closure"])
def test_dense_path_in_float32_and_with_another_dt(closure):
    double = make_solver(implementation="dense", closure=closure)
    single = make_solver(implementation="dense", closure=closure, dtype=torch.float32)
    u0 = smooth_fields(double, 2)
    with torch.no_grad():
        reference = double.rollout(u0, 20, dt=0.1)
        got = single.rollout(u0.float(), 20, dt=0.1)
    assert got.dtype == torch.float32
    assert (got.double() - reference).abs().max().item() < 1e-4 * reference.abs().max().item()
    torch.testing.assert_close(reference, reference_rollout(double, u0, 20, dt=0.1), rtol=0,
                               atol=1e-12 * reference.abs().max().item())


def test_full_dealiasing_fraction_uses_every_mode():
    """With dealiasing off every mode but the Nyquist one carries the nonlinear term."""
    solver = make_solver(dealiasing_fraction=1.0, implementation="fft", n_points=32, dt=0.05)
    u0 = 0.3 * smooth_fields(solver, 2)
    expected = reference_rollout(solver, u0, 10)
    with torch.no_grad():
        got = solver.rollout(u0, 10)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * expected.abs().max().item())
    assert solver.plan(solver.dt).folded_low.q.shape[-1] == solver.n_points // 2  # Nyquist dropped


def test_auto_picks_dense_only_for_small_float64_work(stage_kernels):
    solver, with_closure = make_solver(), make_solver(closure=lambda t, u: u)
    small, large = torch.zeros(2, 64, dtype=torch.float64), torch.zeros(64, 64, dtype=torch.float64)
    eight = torch.zeros(8, 64, dtype=torch.float64)  # at the CPU limit without a closure, over it with one
    with torch.no_grad():
        assert solver._use_dense(small) and not solver._use_dense(large)
        assert not make_solver(dtype=torch.float32)._use_dense(small.float())
        assert with_closure._use_dense(small) and solver._use_dense(eight) and not with_closure._use_dense(eight)
        assert not make_solver(n_points=128)._use_dense(torch.zeros(1, 128, dtype=torch.float64))
        solver.dense_limits = {"cpu": (128, 1 << 20)}  # the table decides, per device type
        assert solver._use_dense(large)
        solver.dense_limits = {"cuda": (128, 1 << 20)}
        assert not solver._use_dense(small)
    assert not solver._use_dense(small.clone().requires_grad_(True))
    assert not with_closure._use_dense(small)  # gradients on and a closure: autograd must see it


def test_only_gpus_with_full_rate_fp64_take_the_dense_step(monkeypatch):
    """The dense step's O(N^2) float64 products pay on P100/V100/A100/H100/B200 (FP64 at half the FP32
    rate or better); consumer and inference GPUs run FP64 at 1/32-1/64 and keep the FFT step."""
    from solvers import dense_path

    for capability, name, full_rate in (((9, 0), "NVIDIA H100 80GB HBM3", True), ((9, 0), "NVIDIA H200", True),
                                        ((8, 0), "NVIDIA A100-SXM4-80GB", True), ((10, 0), "NVIDIA B200", True),
                                        ((6, 0), "Tesla P100-PCIE-16GB", True), ((9, 0), "NVIDIA H800", False),
                                        ((9, 0), "NVIDIA H20", False), ((8, 6), "NVIDIA A10", False),
                                        ((8, 9), "NVIDIA L40S", False), ((7, 5), "Tesla T4", False),
                                        ((12, 0), "NVIDIA GeForce RTX 5090", False), ((10, 3), "NVIDIA B300", False)):
        dense_path._capability.cache_clear()
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index, answer=capability: answer)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index, answer=name: answer)
        assert dense_path.full_rate_fp64(torch.device("cuda", 0)) is full_rate, name
    dense_path._capability.cache_clear()
    # and _use_dense asks it: a cuda state on such a GPU keeps the FFT step (a stand-in: no GPU here)
    solver = make_solver()
    cuda_state = SimpleNamespace(is_cuda=True, device=torch.device("cuda", 0), shape=(2, 64), dtype=torch.float64,
                                 requires_grad=False)
    solver.dense_limits = {"cuda": (512, 1 << 25)}
    monkeypatch.setattr(dense_path, "full_rate_fp64", lambda device: True)
    with torch.no_grad():
        assert solver._use_dense(cuda_state)
        monkeypatch.setattr(dense_path, "full_rate_fp64", lambda device: False)
        assert not solver._use_dense(cuda_state)


def test_circulant_matrix_applies_the_symbol():
    n = 16
    generator = torch.Generator().manual_seed(0)
    symbol = torch.randn(n // 2 + 1, generator=generator, dtype=torch.float64) * 1j \
        + torch.randn(n // 2 + 1, generator=generator, dtype=torch.float64)
    x = torch.randn(3, n, generator=generator, dtype=torch.float64)
    expected = torch.fft.irfft(symbol * torch.fft.rfft(x), n=n)
    torch.testing.assert_close(x @ circulant_matrix(symbol, n), expected, rtol=0, atol=1e-13)


def test_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="implementation"):
        make_solver(implementation="cuda-graphs")


def test_the_capability_asked_is_the_devices(monkeypatch):
    from solvers import dense_path

    capabilities = {0: ((9, 0), "NVIDIA H100 80GB HBM3"), 1: ((8, 6), "NVIDIA A10")}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capabilities[index][0])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: capabilities[index][1])
    dense_path._capability.cache_clear()
    try:
        assert dense_path.full_rate_fp64(torch.device("cuda", 0))
        assert not dense_path.full_rate_fp64(torch.device("cuda", 1))
    finally:
        dense_path._capability.cache_clear()
