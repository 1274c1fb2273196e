"""Finite-difference method-of-lines Kuramoto-Sivashinsky (``KuramotoSivashinskyFiniteDifference``)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import KS_DOMAIN_LENGTH, fitted_order, periodic_smooth_field, spectral_derivatives, tolerance_for
from solvers.integrators import REAL_AXIS_STABILITY_LIMIT, rk4_step
from solvers import KuramotoSivashinskySpectral
from solvers.kuramoto_sivashinsky_fd import KuramotoSivashinskyFiniteDifference, central_difference_weights

RK4_REAL_AXIS_LIMIT = 2.785293563405282  # root of |1 - x + x^2/2 - x^3/6 + x^4/24| = 1 (checked in test_integrators)


def make_solver(**options) -> KuramotoSivashinskyFiniteDifference:
    options.setdefault("domain_length", KS_DOMAIN_LENGTH)
    options.setdefault("n_points", 64)
    return KuramotoSivashinskyFiniteDifference(**options)


def stable_dt(n_points: int, fd_order: int, fraction: float = 0.9) -> float:
    return fraction * make_solver(n_points=n_points, fd_order=fd_order, check_stability=False).linear_stability_dt()


def rich_periodic_field(x: np.ndarray, domain_length: float = KS_DOMAIN_LENGTH) -> np.ndarray:
    """Smooth, periodic and not a trigonometric polynomial (all Fourier modes present)."""
    phase = 2 * np.pi * x / domain_length
    return np.exp(np.sin(phase)) + 0.5 * np.cos(2 * phase + 0.3)


def random_fields(solver, batch, generator) -> torch.Tensor:
    u = torch.randn(batch, solver.n_points, generator=generator, dtype=torch.float64)
    return u.to(dtype=solver.dtype, device=solver.device)


# -- stencils and spatial order ------------------------------------------------------------------------------
@pytest.mark.parametrize("derivative, order, weights", [
    (1, 2, [-1 / 2, 0, 1 / 2]),
    (2, 2, [1, -2, 1]),
    (4, 2, [1, -4, 6, -4, 1]),
    (1, 4, [1 / 12, -2 / 3, 0, 2 / 3, -1 / 12]),
    (2, 4, [-1 / 12, 4 / 3, -5 / 2, 4 / 3, -1 / 12]),
    (4, 4, [-1 / 6, 2, -13 / 2, 28 / 3, -13 / 2, 2, -1 / 6]),
])
def test_central_difference_weights_are_the_textbook_ones(derivative, order, weights):
    """Fornberg 1988, Table 1."""
    offsets, got = central_difference_weights(derivative, order)
    assert offsets == tuple(range(-(len(weights) // 2), len(weights) // 2 + 1))
    np.testing.assert_allclose(got, weights, rtol=1e-12, atol=1e-12)


def test_central_difference_weights_reject_odd_orders():
    with pytest.raises(ValueError, match="even"):
        central_difference_weights(2, 3)


@pytest.mark.parametrize("fd_order", [2, 4, 6])
def test_known_rhs_spatial_order(fd_order):
    """``known_rhs`` of a smooth field converges to the exact ``-u u_x - u_xx - u_xxxx`` at order fd_order."""
    grid_sizes = [32, 64, 128, 256]
    errors = []
    for n_points in grid_sizes:
        solver = make_solver(n_points=n_points, fd_order=fd_order, check_stability=False)
        x = np.arange(n_points) * KS_DOMAIN_LENGTH / n_points
        u = rich_periodic_field(x)
        derivative = spectral_derivatives(u, KS_DOMAIN_LENGTH)  # exact to rounding for this field
        exact = -u * derivative[1] - derivative[2] - derivative[4]
        got = solver.known_rhs(torch.tensor(0.0), torch.as_tensor(u)[None])[0].numpy()
        errors.append(np.abs(got - exact).max())
    order = fitted_order([KS_DOMAIN_LENGTH / n for n in grid_sizes], errors)
    tolerance = 0.3 if fd_order < 6 else 0.5  # sixth order is still pre-asymptotic at N = 32
    assert abs(order - fd_order) < tolerance, (order, errors)


@pytest.mark.parametrize("fd_order", [2, 4])
def test_rollout_spatial_order_against_spectral(fd_order):
    """A short rollout converges to the (spectrally accurate) solution at order fd_order in h."""
    horizon = 1.0
    spectral = KuramotoSivashinskySpectral(domain_length=KS_DOMAIN_LENGTH, n_points=128, dt=0.01)
    u0_fine = torch.as_tensor(periodic_smooth_field(spectral.x.numpy()))[None]
    reference = spectral.rollout(u0_fine, 100, save_every=100)[0, -1]
    errors = []
    for n_points in (32, 64):
        n_steps = int(np.ceil(horizon / stable_dt(n_points, fd_order)))
        solver = make_solver(n_points=n_points, fd_order=fd_order, dt=horizon / n_steps)
        u0 = u0_fine[:, ::128 // n_points]
        with torch.no_grad():
            got = solver.rollout(u0, n_steps, save_every=n_steps)[0, -1]
        errors.append((got - reference[::128 // n_points]).abs().max().item())
    observed = np.log2(errors[0] / errors[1])
    assert abs(observed - fd_order) < 0.3, (observed, errors)


# -- explicit stability -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_points", [32, 64])
def test_linear_stability_dt_matches_analytic_order_two(n_points):
    """Order 2: the most negative eigenvalue is 4/h^2 - 16/h^4 (theta = pi), so dt_max = 2.7853 / (16/h^4 - 4/h^2)."""
    h = KS_DOMAIN_LENGTH / n_points
    analytic = RK4_REAL_AXIS_LIMIT / (16 / h**4 - 4 / h**2)
    solver = make_solver(n_points=n_points, fd_order=2, dt=0.5 * analytic)
    assert solver.linear_stability_dt() == pytest.approx(analytic, rel=1e-12)
    euler = make_solver(n_points=n_points, fd_order=2, dt=0.5 * analytic / 2, integrator="euler")
    assert euler.linear_stability_dt() == pytest.approx(2.0 / (16 / h**4 - 4 / h**2), rel=1e-12)


@pytest.mark.parametrize("fd_order", [2, 4, 6])
def test_linear_stability_dt_matches_eigenvalues_of_the_operator(fd_order):
    """Build the linear operator column by column from ``known_rhs`` (c = 0) and take its spectrum."""
    solver = make_solver(n_points=48, fd_order=fd_order, nonlinear_coefficient=0.0, check_stability=False)
    identity = torch.eye(solver.n_points, dtype=torch.float64)
    matrix = solver.known_rhs(torch.tensor(0.0), identity).T.numpy()  # (n, n) columns = images of unit vectors
    eigenvalues = np.linalg.eigvals(matrix)
    assert np.abs(eigenvalues.imag).max() < 1e-9 * np.abs(eigenvalues).max()  # symmetric stencil
    expected = REAL_AXIS_STABILITY_LIMIT["rk4"] / -eigenvalues.real.min()
    assert solver.linear_stability_dt() == pytest.approx(expected, rel=1e-10)
    symbol = np.sort(solver.linear_symbol())
    np.testing.assert_allclose(symbol[[0, -1]], [eigenvalues.real.min(), eigenvalues.real.max()], rtol=1e-10)


@pytest.mark.parametrize("fd_order", [2, 4])
def test_stability_check_raises_with_the_limit_in_the_message(fd_order):
    limit = make_solver(fd_order=fd_order, check_stability=False).linear_stability_dt()
    from solvers import StabilityLimitError  # a ValueError callers can tell from other set-up errors

    with pytest.raises(StabilityLimitError, match=re.escape(f"{limit:.4g}")) as raised:
        make_solver(fd_order=fd_order, dt=1.05 * limit)
    assert "dt" in str(raised.value)
    make_solver(fd_order=fd_order, dt=0.99 * limit)  # right below: accepted


@pytest.mark.parametrize("fd_order", [2, 4])
def test_limit_is_sharp_bounded_below_blows_up_above(fd_order, generator):
    """Just below the limit a rough field stays bounded; just above (check switched off) it blows up."""
    limit = make_solver(fd_order=fd_order, check_stability=False).linear_stability_dt()
    x = np.arange(64) * KS_DOMAIN_LENGTH / 64
    u0 = torch.as_tensor(periodic_smooth_field(x))[None] + 1e-3 * torch.randn(1, 64, generator=generator,
                                                                             dtype=torch.float64)
    n_steps = 1500
    with torch.no_grad():
        below = make_solver(fd_order=fd_order, dt=0.97 * limit).rollout(u0, n_steps, save_every=n_steps)[0, -1]
        above = make_solver(fd_order=fd_order, dt=1.06 * limit, check_stability=False).rollout(
            u0, n_steps, save_every=n_steps)[0, -1]
    assert torch.isfinite(below).all() and below.abs().max() < 10
    assert not torch.isfinite(above).all() or above.abs().max() > 1e3


@pytest.mark.parametrize("fd_order", [2, 4])
def test_a_step_size_given_to_one_call_is_checked_against_the_limit_too(fd_order):
    """The limit held for the constructor's dt only: rollout(..., dt=3 * limit) returned NaN silently."""
    from solvers import StabilityLimitError

    solver = make_solver(fd_order=fd_order)
    limit = solver.linear_stability_dt()
    u0 = torch.as_tensor(periodic_smooth_field(np.arange(64) * KS_DOMAIN_LENGTH / 64))[None]
    for call in (lambda: solver.rollout(u0, 10, dt=3 * limit), lambda: solver.step(0.0, u0, dt=1.05 * limit),
                 lambda: next(iter(list(solver.trajectory(u0, 2, dt=3 * limit))))):
        with pytest.raises(StabilityLimitError, match=re.escape(f"use dt <= {limit:.4g}")):
            call()
    assert torch.isfinite(solver.rollout(u0, 10, dt=0.99 * limit)).all()  # below the limit: fine
    unchecked = make_solver(fd_order=fd_order, check_stability=False)
    assert unchecked.rollout(u0, 2, dt=3 * limit).shape == (1, 3, 64)  # switched off: the caller's call


@pytest.mark.parametrize("length", [-22.0, 0.0, float("nan"), float("inf")])
def test_a_domain_length_that_is_not_positive_and_finite_is_refused(length):
    """-22 ran the mirrored equation, 0 raised ZeroDivisionError, NaN ran (the limit compared against NaN)."""
    with pytest.raises(ValueError, match="domain_length"):
        make_solver(domain_length=length)


def test_default_construction_is_stable():
    """The documented defaults must construct (and respect their own stability check)."""
    solver = KuramotoSivashinskyFiniteDifference()
    assert solver.dt <= solver.linear_stability_dt()


# -- Jacobian-vector product ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fd_order", [2, 4])
def test_jvp_matches_autodiff_and_finite_differences(fd_order, device, generator):
    solver = make_solver(fd_order=fd_order, device=device, dt=1e-4)
    u, v = random_fields(solver, 3, generator), random_fields(solver, 3, generator)
    t = torch.tensor(0.0, dtype=torch.float64, device=device)
    got = solver.jvp(t, u, v)
    _, expected = torch.func.jvp(lambda w: solver.known_rhs(t, w), (u,), (v,))
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * scale)
    epsilon = 1e-3
    central = (solver.known_rhs(t, u + epsilon * v) - solver.known_rhs(t, u - epsilon * v)) / (2 * epsilon)
    torch.testing.assert_close(got, central, rtol=0, atol=1e-9 * scale)


# -- closure hook -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("integrator", ["rk4", "euler"])
def test_linear_closure_is_exactly_a_linear_term(integrator, dtype, device, generator):
    """closure = c u gives the same steps as an explicit scheme on known_rhs + c u (to rounding)."""
    c = -0.4
    dt = 2e-4
    solver = make_solver(closure=lambda t, u: c * u, integrator=integrator, dt=dt, dtype=dtype, device=device)
    u0 = random_fields(solver, 2, generator)
    got = solver.rollout(u0, 10)[:, -1]

    def field(t, u):
        return solver.known_rhs(t, u) + c * u

    u = u0
    for i in range(10):
        t = torch.tensor(i * dt, dtype=dtype, device=device)
        u = rk4_step(field, t, u, dt) if integrator == "rk4" else u + dt * field(t, u)
    scale = u.abs().max().item()
    torch.testing.assert_close(got, u, rtol=0, atol=tolerance_for(dtype, 1e-14, 1e-5) * scale)
    without = make_solver(integrator=integrator, dt=dt, dtype=dtype, device=device).rollout(u0, 10)[:, -1]
    assert (got - without).abs().max().item() > 1e-4 * scale  # and the closure does change the solution


def test_closure_sees_stage_times_and_gradients_reach_its_parameters():
    strength = torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64))
    seen = []

    def closure(t, u):
        seen.append(t)
        return strength * torch.sin(t) * u

    solver = make_solver(closure=closure, dt=1e-3)
    x = solver.x.numpy()
    u = solver.step(0.5, torch.as_tensor(periodic_smooth_field(x))[None])
    assert [t.ndim for t in seen] == [0] * 4
    assert [t.item() for t in seen] == pytest.approx([0.5, 0.5005, 0.5005, 0.501], abs=1e-15)
    u.pow(2).sum().backward()
    assert strength.grad is not None and strength.grad.item() != 0.0


# -- batching and invariants --------------------------------------------------------------------------------------
def test_batched_rollout_equals_member_rollouts(generator):
    solver = make_solver(dt=1e-3)
    u0 = torch.as_tensor(periodic_smooth_field(solver.x.numpy()))[None] + 0.1 * random_fields(solver, 3, generator)
    together = solver.rollout(u0, 30, save_every=10)
    for member in range(3):
        torch.testing.assert_close(together[member:member + 1], solver.rollout(u0[member:member + 1], 30, save_every=10),
                                   rtol=0, atol=1e-13)


def test_mean_is_conserved(dtype):
    solver = make_solver(dt=1e-3, dtype=dtype)
    u0 = torch.as_tensor(periodic_smooth_field(solver.x.double().numpy()) + 0.3, dtype=dtype)[None]
    saved = solver.rollout(u0, 500, save_every=250)
    drift = (saved.mean(-1) - u0.mean()).abs().max().item()
    assert drift < tolerance_for(dtype, 1e-13, 1e-5), drift
    assert (saved[:, -1] - u0).abs().max() > 0.05


def test_float32_stencils_run_without_onednn_and_leave_its_switch_as_it_was(monkeypatch, generator):
    """oneDNN's one-channel float32 convolutions cost 3x torch's own here (464 against 163 us a step,
    N = 64, batch 8): the stencils switch it off for their call only; float64 never takes it."""
    seen = []
    real = torch.nn.functional.conv1d

    def spy(*args, **kwargs):
        seen.append((args[0].dtype, torch.backends.mkldnn.enabled))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv1d", spy)
    u = random_fields(make_solver(dt=1e-4), 3, generator)
    double = make_solver(dt=1e-4).step(0.0, u)
    single = make_solver(dt=1e-4, dtype=torch.float32).step(0.0, u.float())
    torch.testing.assert_close(single, double.float(), rtol=1e-4, atol=1e-5)
    assert {enabled for dtype, enabled in seen if dtype == torch.float32} == {False}
    assert torch.backends.mkldnn.enabled  # restored


@pytest.mark.parametrize("fd_order", [2, 4])
def test_float32_tendency_keeps_float32_accuracy_on_every_device(fd_order, device, generator):
    """The 1/h^4 stencil's terms cancel: float32 keeps its tendency to 1.5e-4 of its size at N = 64, inputs
    rounded to TF32 (what cuDNN may do with float32 convolutions) put it 1.3x its size off. On a GPU the
    stencils therefore run as window sums (``stencil_by_windows``), which equal the convolution."""
    from solvers.kuramoto_sivashinsky_fd import stencil_by_windows

    solver = make_solver(fd_order=fd_order, dt=1e-4)
    u = random_fields(solver, 4, generator)
    exact = solver.known_rhs(torch.zeros((), dtype=torch.float64), u)
    single = make_solver(fd_order=fd_order, dt=1e-4, dtype=torch.float32, device=device)
    tendency = single.known_rhs(torch.zeros((), dtype=torch.float32, device=device), u.float().to(device))
    assert (tendency.double().cpu() - exact).abs().max() <= 1e-3 * exact.abs().max()
    for kernel, pad in ((solver._linear_kernel, solver._linear_pad), (solver._advection_kernel, solver._advection_pad)):
        padded = torch.nn.functional.pad(u.unsqueeze(1), (pad, pad), mode="circular")
        torch.testing.assert_close(stencil_by_windows(padded, kernel), torch.nn.functional.conv1d(padded, kernel),
                                   rtol=1e-13, atol=1e-12 * kernel.abs().sum().item())


def test_float32_stencils_off_the_cpu_never_take_a_convolution(monkeypatch):
    """A GPU's float32 convolutions may run in TF32: off the CPU the stencil is a window sum."""
    from solvers.kuramoto_sivashinsky_fd import _stencil

    monkeypatch.setattr(torch.nn.functional, "conv1d", lambda *a, **k: pytest.fail("conv1d off the CPU"))
    padded, kernel = torch.zeros(2, 1, 20, device="meta"), torch.zeros(1, 1, 5, device="meta")
    assert _stencil(padded, kernel).shape == (2, 1, 16)
