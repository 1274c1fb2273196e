"""Every parameter of the ODE systems reaches their right-hand sides and invariants, checked away from
its default against scipy's DOP853 or a formula by hand (Lorenz's in test_odes.py), and the Python
API's defaults are the documented constants (the shipped tests ran mostly at the defaults: mu = 1,
Lorenz's 10, 28, 8/3)."""
from __future__ import annotations

import numpy as np
import scipy.integrate
import torch

from solvers.odes import Lorenz63, TwoBody


def _scipy(f, u0, horizon, n_out):
    times = np.linspace(0.0, horizon, n_out + 1)
    return scipy.integrate.solve_ivp(f, (0.0, horizon), u0, method="DOP853", rtol=1e-12, atol=1e-12,
                                     t_eval=times).y.T


def test_two_body_with_a_non_unit_gravitational_parameter_matches_scipy():
    """x'' = -mu x / r^3 with mu = 2.5 on an eccentric orbit, RK4 dt = 1e-3 against DOP853."""
    mu = 2.5

    def kepler(t, u):
        x, y, vx, vy = u
        r3 = (x * x + y * y) ** 1.5
        return [vx, vy, -mu * x / r3, -mu * y / r3]

    u0 = [1.0, 0.0, 0.0, 1.3]  # bound (energy 0.845 - 2.5 < 0), eccentric
    reference = _scipy(kepler, u0, 2.0, 2000)
    solver = TwoBody(gravitational_parameter=mu, dt=1e-3)
    with torch.no_grad():
        got = solver.rollout(torch.tensor([u0], dtype=torch.float64), 2000)[0].numpy()
    assert np.abs(reference[-1] - reference[0]).max() > 0.5
    assert np.abs(got - reference).max() < 1e-8 * np.abs(reference).max()


def test_two_body_energy_uses_the_gravitational_parameter():
    """Energy |v|^2/2 - mu/r by hand at a state, and conserved by the exact mu != 1 flow (autograd)."""
    mu = 3.0
    solver = TwoBody(gravitational_parameter=mu)
    u = torch.tensor([[0.6, 0.8, 0.3, -1.1], [1.5, -0.2, 0.7, 0.9]], dtype=torch.float64, requires_grad=True)
    x, y, vx, vy = u.detach().unbind(-1)
    expected = 0.5 * (vx**2 + vy**2) - mu / torch.sqrt(x**2 + y**2)
    torch.testing.assert_close(solver.invariants(u.detach())["energy"], expected, rtol=1e-14, atol=1e-14)
    for key, value in solver.invariants(u).items():
        (gradient,) = torch.autograd.grad(value.sum(), u)
        rate = (gradient * solver.known_rhs(torch.tensor(0.0), u)).sum(-1)
        assert rate.abs().max().item() < 1e-12, key


def test_default_constructed_systems_have_the_documented_parameters():
    """The Python API's defaults (``LotkaVolterra()``, ``RigidBody()``, ...) are the documented constants,
    the same ones the case configuration defaults to: Ko et al.'s Lotka-Volterra (1.3, 0.9, 0.8, 1.8),
    I = (1.6, 1, 2/3), mu = 1, Lorenz (10, 28, 8/3), double pendulum m = l = 1, g = 9.81."""
    from solvers.odes import DoublePendulum, LotkaVolterra, RigidBody

    u = torch.tensor([[0.7, 1.9], [2.2, 0.4]], dtype=torch.float64)
    x, y = u.unbind(-1)
    expected = torch.stack([1.3 * x - 0.9 * x * y, 0.8 * x * y - 1.8 * y], -1)
    torch.testing.assert_close(LotkaVolterra().known_rhs(torch.tensor(0.0), u), expected, rtol=1e-14, atol=1e-14)
    m = torch.tensor([[0.3, -1.2, 0.8]], dtype=torch.float64)
    inertia = torch.tensor([1.6, 1.0, 2.0 / 3.0], dtype=torch.float64)
    torch.testing.assert_close(RigidBody().known_rhs(torch.tensor(0.0), m),
                               torch.linalg.cross(m, m / inertia, dim=-1), rtol=1e-14, atol=1e-14)
    q = torch.tensor([[1.0, 0.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(TwoBody().known_rhs(torch.tensor(0.0), q),
                               torch.tensor([[0.0, -1.0, -1.0, 0.0]], dtype=torch.float64))
    lz = Lorenz63()
    assert (lz.sigma, lz.rho, lz.beta) == (10.0, 28.0, 8.0 / 3.0)
    dp = DoublePendulum()
    assert (dp.mass1, dp.mass2, dp.length1, dp.length2, dp.gravity) == (1.0, 1.0, 1.0, 1.0, 9.81)
