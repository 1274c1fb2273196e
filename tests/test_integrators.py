"""Fixed-step RK4 / Euler and the torchdiffeq adaptive path (``solvers/integrators.py``)."""
from __future__ import annotations

import math

import pytest
import scipy.optimize
import torch

from conftest import fitted_order, tolerance_for
from solvers.integrators import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    REAL_AXIS_STABILITY_LIMIT,
    euler_step,
    odeint_adaptive,
    rk4_step,
)

ORDERS = {"euler": 1, "rk4": 4}


def integrate(step, f, u0, horizon, n_steps):
    dt = horizon / n_steps
    u = u0
    for i in range(n_steps):
        u = step(f, torch.as_tensor(i * dt, dtype=u0.dtype, device=u0.device), u, dt)
    return u


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_step_order(method, analytic_problem, device):
    """Global error at a fixed horizon falls like dt^order (float64: RK4 errors are far above rounding)."""
    dtype = torch.float64
    u0 = analytic_problem.u0(dtype, device)
    horizon = 2.0
    step_counts = [20, 40, 80, 160] if method == "rk4" else [100, 200, 400, 800]
    errors = []
    for n in step_counts:
        u = integrate(FIXED_STEP_METHODS[method], analytic_problem.f, u0, horizon, n)
        errors.append((u - analytic_problem.exact(horizon, u0)).abs().max().item())
    order = fitted_order([horizon / n for n in step_counts], errors)
    assert abs(order - ORDERS[method]) < 0.3, (method, order, errors)


def test_euler_order_float32(analytic_problem):
    """Euler's first order is visible in float32 too (its errors stay far above float32 rounding)."""
    u0 = analytic_problem.u0(torch.float32, torch.device("cpu"))
    step_counts = [50, 100, 200]
    errors = [(integrate(euler_step, analytic_problem.f, u0, 1.0, n) - analytic_problem.exact(1.0, u0))
              .abs().max().item() for n in step_counts]
    assert abs(fitted_order([1.0 / n for n in step_counts], errors) - 1) < 0.3, errors


def test_rk4_one_step_is_the_taylor_polynomial(dtype, device):
    """For u' = lambda u one RK4 step multiplies by 1 + z + z^2/2 + z^3/6 + z^4/24, z = lambda dt."""
    rate, dt = -1.3, 0.37
    u0 = torch.tensor([[1.0], [-2.0]], dtype=dtype, device=device)
    z = rate * dt
    factor = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    u1 = rk4_step(lambda t, u: rate * u, torch.zeros((), dtype=dtype, device=device), u0, dt)
    torch.testing.assert_close(u1, factor * u0, rtol=tolerance_for(dtype, 1e-14, 1e-6), atol=0)
    assert u1.dtype == dtype and u1.device.type == device.type


@pytest.mark.parametrize("method", sorted(REAL_AXIS_STABILITY_LIMIT))
def test_real_axis_stability_limits(method):
    """The tabulated limit is where |R(-x)| = 1 for the method's stability polynomial R."""
    polynomial = {"euler": lambda z: 1 + z,
                  "rk4": lambda z: 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24}[method]
    limit = scipy.optimize.brentq(lambda x: abs(polynomial(-x)) - 1.0, 1.5, 3.5, xtol=1e-15)
    assert REAL_AXIS_STABILITY_LIMIT[method] == pytest.approx(limit, rel=1e-12)
    # and the step functions agree: just inside the limit a decaying mode does not grow, just outside it does
    step = FIXED_STEP_METHODS[method]
    u0 = torch.ones(1, 1, dtype=torch.float64)
    for scale, grows in ((0.99, False), (1.01, True)):
        u1 = step(lambda t, u: -u, torch.zeros((), dtype=torch.float64), u0, scale * limit)
        assert (u1.abs().item() > 1.0) == grows, (method, scale, u1.item())


def test_fixed_steps_pass_stage_times():
    """Stages see the documented times, as 0-dim tensors (what a time-dependent closure receives)."""
    seen = []

    def f(t, u):
        seen.append(t)
        return torch.zeros_like(u)

    t = torch.tensor(0.5, dtype=torch.float64)
    rk4_step(f, t, torch.zeros(1, 2, dtype=torch.float64), 0.2)
    assert [s.ndim for s in seen] == [0, 0, 0, 0]
    assert [s.item() for s in seen] == pytest.approx([0.5, 0.6, 0.6, 0.7], abs=1e-15)
    seen.clear()
    euler_step(f, t, torch.zeros(1, 2, dtype=torch.float64), 0.2)
    assert [s.item() for s in seen] == [0.5]


def test_gradients_flow_through_rk4_step(device):
    """d u1 / d(rate, u0) for u' = rate * u: autograd through rk4_step equals the analytic derivative."""
    dt = 0.3
    rate = torch.tensor(-0.8, dtype=torch.float64, device=device, requires_grad=True)
    u0 = torch.tensor([[1.5], [-0.5]], dtype=torch.float64, device=device, requires_grad=True)
    u1 = rk4_step(lambda t, u: rate * u, torch.zeros((), dtype=torch.float64, device=device), u0, dt)
    u1.sum().backward()
    z = rate.item() * dt
    factor = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    d_factor_dz = 1 + z + z**2 / 2 + z**3 / 6
    assert u0.grad is not None and rate.grad is not None
    torch.testing.assert_close(u0.grad, torch.full_like(u0, factor), rtol=1e-14, atol=0)
    assert rate.grad.item() == pytest.approx(dt * d_factor_dz * u0.sum().item(), rel=1e-13)

    # and a general nonlinear field passes torch's own gradient check
    weight = torch.randn(3, 3, dtype=torch.float64, device=device, requires_grad=True)
    state = torch.randn(2, 3, dtype=torch.float64, device=device, requires_grad=True)
    field = lambda w: (lambda t, u: torch.tanh(u @ w) * torch.cos(t))
    torch.autograd.gradcheck(
        lambda w, u: rk4_step(field(w), torch.tensor(0.2, dtype=torch.float64, device=device), u, 0.1),
        (weight, state))


@pytest.mark.parametrize("rtol", [1e-4, 1e-8])
def test_adaptive_matches_analytic(analytic_problem, dtype, device, rtol):
    rtol = max(rtol, tolerance_for(dtype, 0.0, 1e-5))  # float32 cannot resolve 1e-8
    u0 = analytic_problem.u0(dtype, device)
    times = torch.linspace(0.0, 3.0, 7, dtype=dtype, device=device)
    atol = rtol * 1e-2
    u, counter = odeint_adaptive(analytic_problem.f, u0, times, method="dopri5", rtol=rtol, atol=atol)
    assert u.shape == (u0.shape[0], len(times), *u0.shape[1:])
    assert u.dtype == dtype and u.device.type == device.type
    exact = torch.stack([analytic_problem.exact(t, u0) for t in times], dim=1)
    scale = exact.abs().max().item()
    # global error of a well-conditioned problem stays within a small multiple of the local tolerance
    error = (u - exact).abs().max().item()
    assert error < 20 * (rtol * scale + atol) + tolerance_for(dtype, 0, 1e-6), (error, rtol)
    torch.testing.assert_close(u[:, 0], u0, rtol=0, atol=0)
    assert counter.nfe > 0


def test_adaptive_nfe_grows_as_tolerance_tightens(analytic_problem):
    u0 = analytic_problem.u0(torch.float64, torch.device("cpu"))
    times = [0.0, 5.0]
    counts = []
    for rtol in (1e-4, 1e-7, 1e-10):
        _, counter = odeint_adaptive(analytic_problem.f, u0, times, rtol=rtol, atol=rtol * 1e-2)
        counts.append(counter.nfe)
    assert 0 < counts[0] < counts[1] < counts[2], counts


def test_adaptive_counts_backward_evaluations_with_adjoint():
    """With the adjoint method the counter keeps counting during backward(), and gradients are right."""
    rate = torch.nn.Parameter(torch.tensor(-0.7, dtype=torch.float64))
    u0 = torch.tensor([[1.0]], dtype=torch.float64)
    u, counter = odeint_adaptive(lambda t, u: rate * u, u0, [0.0, 2.0], rtol=1e-10, atol=1e-12,
                                 adjoint=True, adjoint_params=[rate])
    forward = counter.nfe
    u[:, -1].sum().backward()
    assert counter.nfe > forward > 0
    # d/d rate of exp(2 rate) = 2 exp(2 rate)
    assert rate.grad.item() == pytest.approx(2.0 * math.exp(2.0 * rate.item()), rel=1e-6)


def test_adaptive_rejects_fixed_step_methods():
    with pytest.raises(ValueError, match="dopri5"):
        odeint_adaptive(lambda t, u: u, torch.ones(1, 1), [0.0, 1.0], method="rk4")
    assert "dopri5" in ADAPTIVE_METHODS


def test_adaptive_output_times_keep_the_states_precision():
    """u' = u from u0 = 1 at times not representable in float32: exp(t) to ~1e-11, which a float32
    copy of the output times (0.1 -> 0.10000000149) misses by ~1e-9."""
    from solvers.integrators import odeint_adaptive

    times = [0.0, 0.1, 0.7, 1.3]
    u, _ = odeint_adaptive(lambda t, u: u, torch.ones(1, 1, dtype=torch.float64), times, rtol=1e-13, atol=1e-14)
    exact = torch.tensor([math.exp(t) for t in times], dtype=torch.float64)
    assert (u[0, :, 0] - exact).abs().max().item() < 5e-11


def test_adaptive_time_dependent_field_sees_float64_times():
    """u' = cos(t) integrates to sin(t): a time grid rounded to float32 shows at ~1e-9."""
    from solvers.integrators import odeint_adaptive

    times = [0.0, 0.3, 1.1, 2.9]
    u, _ = odeint_adaptive(lambda t, u: torch.cos(t) * torch.ones_like(u), torch.zeros(1, 1, dtype=torch.float64),
                           times, rtol=1e-13, atol=1e-14)
    exact = torch.tensor([math.sin(t) for t in times], dtype=torch.float64)
    assert (u[0, :, 0] - exact).abs().max().item() < 5e-11
