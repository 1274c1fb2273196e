"""ODE host systems (``solvers/odes.py``), the shared ``ExplicitSolver`` machinery and package hygiene."""
from __future__ import annotations

import ast
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.integrate
import torch

from conftest import fitted_order, tolerance_for
from solvers import SolverStateError
from solvers.odes import ODE_SYSTEMS, DoublePendulum, LotkaVolterra, Lorenz63, RigidBody, TwoBody

SOLVERS_DIR = pathlib.Path(__file__).resolve().parents[1] / "solvers"


def sample_states(name: str, batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, n) random states inside each system's domain (r > 0 for two-body, positive populations)."""
    n = len(ODE_SYSTEMS[name].component_names)
    u = torch.randn(batch, n, generator=generator, dtype=torch.float64)
    if name == "two_body":
        u[:, :2] = u[:, :2] / u[:, :2].norm(dim=-1, keepdim=True) * (0.5 + torch.rand(batch, 1, generator=generator,
                                                                                        dtype=torch.float64))
    if name == "lotka_volterra":
        u = 0.2 + 3 * torch.rand(batch, n, generator=generator, dtype=torch.float64)
    if name == "lorenz63":
        u = 10 * u
    return u


def final_state(solver, u0, horizon, dt):
    n_steps = int(round(horizon / dt))
    with torch.no_grad():
        *_, (_, u) = solver.trajectory(u0, n_steps, dt=dt, save_every=n_steps)
    return u


# -- conservation at the integrator's order ------------------------------------------------------------------------
def kepler_initial_state(eccentricity: float) -> list[float]:
    return [1 - eccentricity, 0.0, 0.0, math.sqrt((1 + eccentricity) / (1 - eccentricity))]


CONSERVATION_CASES = {
    # name: (system, initial states, horizon, step sizes, spacing of the times the drift is measured at)
    "two_body": (TwoBody, [kepler_initial_state(0.5), kepler_initial_state(0.3)], 5.0, [0.01, 0.005, 0.0025],
                 0.04),
    "rigid_body": (RigidBody, [[math.cos(1.1), 0.0, math.sin(1.1)], [math.cos(0.6), 0.0, math.sin(0.6)]], 10.0,
                   [0.1, 0.05, 0.025], 0.2),
    "lotka_volterra": (LotkaVolterra, [[0.4425, 4.628], [1.0, 2.0]], 5.0, [0.04, 0.02, 0.01], 0.04),
    "double_pendulum": (DoublePendulum, [[1.0, 2.0, 0.0, 0.0], [0.3, -0.5, 1.0, 0.2], [1.5, 0.0, 0.0, 0.0]], 2.0,
                        [0.01, 0.005, 0.0025], 0.04),
}


@pytest.mark.parametrize("name", sorted(CONSERVATION_CASES))
def test_invariant_drift_falls_at_rk4_order(name):
    """max_t |I(u(t)) - I(u0)| over a fixed horizon shrinks like dt^4 for every invariant of every system.

    The maximum over common output times is used because the drift at one instant can vanish by
    accident. Energies, the Casimir and the Lotka-Volterra integral drift at order 4; the two-body
    angular momentum superconverges (order 5), so for it only "at least 4" is asserted.
    """
    system, states, horizon, step_sizes, spacing = CONSERVATION_CASES[name]
    solver = system(integrator="rk4")
    u0 = torch.tensor(states, dtype=torch.float64)
    initial = solver.invariants(u0)
    assert initial, f"{name} declares no invariants"
    drifts = {key: [] for key in initial}
    for dt in step_sizes:
        with torch.no_grad():
            saved = solver.rollout(u0, int(round(horizon / dt)), dt=dt, save_every=int(round(spacing / dt)))
        for key, value in solver.invariants(saved).items():  # value: (batch, n_saved)
            drifts[key].append((value - initial[key][:, None]).abs().max().item())
    for key, values in drifts.items():
        order = fitted_order(step_sizes, values)
        if (name, key) == ("two_body", "angular_momentum"):
            assert order > 4 - 0.3, (key, order, values)
        else:
            assert abs(order - 4) < 0.5, (key, order, values)


def test_euler_drift_is_first_order():
    """The same drift falls only linearly with Euler (the test tells the integrators apart)."""
    solver = RigidBody(integrator="euler")
    u0 = torch.tensor([[math.cos(1.1), 0.0, math.sin(1.1)]], dtype=torch.float64)
    step_sizes = [0.004, 0.002, 0.001]
    casimir = [abs(solver.invariants(final_state(solver, u0, 2.0, dt))["casimir"].item()
                   - solver.invariants(u0)["casimir"].item()) for dt in step_sizes]
    assert abs(fitted_order(step_sizes, casimir) - 1) < 0.3, casimir


def test_invariants_are_invariant_under_the_exact_flow(generator):
    """d I / dt = grad I . F = 0 for the known vector field (checked by autograd at random states)."""
    for name, system in ODE_SYSTEMS.items():
        solver = system()
        u = sample_states(name, 8, generator).requires_grad_(True)
        for key, value in solver.invariants(u).items():
            (gradient,) = torch.autograd.grad(value.sum(), u)
            rate = (gradient * solver.known_rhs(torch.tensor(0.0), u)).sum(-1)
            scale = gradient.abs().max().item() * solver.known_rhs(torch.tensor(0.0), u).abs().max().item()
            assert rate.abs().max().item() < 1e-12 * scale, (name, key)


def test_the_lotka_volterra_first_integral_is_zero_at_the_equilibrium_and_positive_elsewhere(generator):
    """Its additive constant is fixed so that relative drifts compare with the orbit's size."""
    solver = LotkaVolterra()
    equilibrium = torch.tensor([[solver.d / solver.c, solver.a / solver.b]], dtype=torch.float64)
    assert abs(solver.invariants(equilibrium)["first_integral"].item()) < 1e-15
    assert (solver.invariants(sample_states("lotka_volterra", 64, generator))["first_integral"] > 0).all()


def test_the_double_pendulum_energy_is_zero_hanging_at_rest_and_positive_elsewhere(generator):
    """Measured from the rest state, so that a release from rest at theta = pi/2 (cases/double_pendulum.toml)
    has the energy m g l of lifting the masses, (m1 + m2) g l1 + m2 g l2, not 0 up to rounding, which
    made its relative drift ~1e17."""
    solver = DoublePendulum(mass1=1.5, mass2=0.5, length1=2.0, length2=0.75, gravity=9.81)
    rest = torch.zeros(1, 4, dtype=torch.float64)
    assert solver.invariants(rest)["energy"].item() == 0.0
    released = torch.tensor([[math.pi / 2, math.pi / 2, 0.0, 0.0]], dtype=torch.float64)
    assert math.isclose(solver.invariants(released)["energy"].item(), (1.5 + 0.5) * 9.81 * 2.0 + 0.5 * 9.81 * 0.75,
                        rel_tol=1e-14)
    assert (solver.invariants(sample_states("double_pendulum", 64, generator))["energy"] > 0).all()


# -- the vector fields against independent formulas -------------------------------------------------------------
def test_two_body_circular_orbit_returns_after_one_period():
    solver = TwoBody(dt=2 * math.pi / 400)
    u0 = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    u = final_state(solver, u0, 2 * math.pi, solver.dt)
    assert (u - u0).abs().max().item() < 1e-7


def test_rigid_body_is_m_cross_inverse_inertia_m(generator):
    inertia = (2.0, 1.3, 0.7)
    solver = RigidBody(moments_of_inertia=inertia)
    m = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    expected = torch.linalg.cross(m, m / torch.tensor(inertia, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(solver.known_rhs(torch.tensor(0.0), m), expected, rtol=1e-14, atol=1e-14)


def test_lotka_volterra_is_the_documented_field(generator):
    solver = LotkaVolterra(a=1.1, b=0.4, c=0.3, d=0.9)
    u = sample_states("lotka_volterra", 5, generator)
    x, y = u.unbind(-1)
    expected = torch.stack([1.1 * x - 0.4 * x * y, 0.3 * x * y - 0.9 * y], dim=-1)
    torch.testing.assert_close(solver.known_rhs(torch.tensor(0.0), u), expected, rtol=1e-14, atol=1e-14)


def test_double_pendulum_matches_lagrangian_mass_matrix(generator):
    """Solve M(theta) omega' = f(theta, omega) from the Lagrangian, with unequal masses and lengths."""
    m1, m2, l1, l2, g = 1.3, 0.7, 0.9, 1.4, 9.81
    solver = DoublePendulum(mass1=m1, mass2=m2, length1=l1, length2=l2, gravity=g)
    u = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    got = solver.known_rhs(torch.tensor(0.0), u).numpy()
    for row, (th1, th2, w1, w2) in zip(got, u.numpy()):
        mass = np.array([[(m1 + m2) * l1**2, m2 * l1 * l2 * np.cos(th1 - th2)],
                         [m2 * l1 * l2 * np.cos(th1 - th2), m2 * l2**2]])
        force = np.array([-m2 * l1 * l2 * w2**2 * np.sin(th1 - th2) - (m1 + m2) * g * l1 * np.sin(th1),
                          m2 * l1 * l2 * w1**2 * np.sin(th1 - th2) - m2 * g * l2 * np.sin(th2)])
        np.testing.assert_allclose(row, np.concatenate([[w1, w2], np.linalg.solve(mass, force)]),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameters", [{}, {"sigma": 12.0, "rho": 21.0, "beta": 1.3}], ids=["defaults", "given"])
def test_lorenz_matches_scipy_dop853(parameters):
    """RK4 at dt = 1e-3 against DOP853 (rtol = atol = 1e-12) over t in [0, 2], u0 = (1.2, 2.1, 1.7), at
    the default parameters and with each given away from its default (each must reach the field)."""
    sigma, rho, beta = (parameters.get(name, default) for name, default in
                        (("sigma", 10.0), ("rho", 28.0), ("beta", 8.0 / 3.0)))

    def lorenz(t, u):
        x, y, z = u
        return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]

    u0 = [1.2, 2.1, 1.7]
    times = np.linspace(0.0, 2.0, 2001)
    reference = scipy.integrate.solve_ivp(lorenz, (0.0, 2.0), u0, method="DOP853", rtol=1e-12, atol=1e-12,
                                          t_eval=times).y.T
    solver = Lorenz63(dt=1e-3, **parameters)
    with torch.no_grad():
        got = solver.rollout(torch.tensor([u0], dtype=torch.float64), 2000)[0].numpy()
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() < 1e-7 * scale
    # the solution moves well away from its start, so the comparison is not vacuous
    assert np.abs(reference[-1] - reference[0]).max() > 1.0


# -- Jacobian-vector products -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ODE_SYSTEMS))
def test_jvp_matches_autodiff_and_finite_differences(name, dtype, device, generator):
    solver = ODE_SYSTEMS[name](dtype=dtype, device=device)
    u = sample_states(name, 16, generator)
    v = torch.randn(u.shape, generator=generator, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=dtype, device=device)
    cast = dict(dtype=dtype, device=device)
    got = solver.jvp(t, u.to(**cast), v.to(**cast))
    _, expected = torch.func.jvp(lambda w: solver.known_rhs(t, w), (u.to(**cast),), (v.to(**cast),))
    scale = max(expected.abs().max().item(), 1.0)
    assert got.shape == u.shape and got.dtype == dtype and got.device.type == device.type
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance_for(dtype, 1e-12, 1e-5) * scale)
    # central differences in float64 (independent of autodiff)
    double = ODE_SYSTEMS[name]()
    epsilon = 1e-5
    t64 = torch.tensor(0.3, dtype=torch.float64)
    central = (double.known_rhs(t64, u + epsilon * v) - double.known_rhs(t64, u - epsilon * v)) / (2 * epsilon)
    torch.testing.assert_close(double.jvp(t64, u, v), central, rtol=0, atol=1e-6 * scale)


# -- the closure hook -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("integrator", ["rk4", "euler"])
@pytest.mark.parametrize("name", sorted(ODE_SYSTEMS))
def test_linear_closure_equals_linear_term(name, integrator, generator):
    """closure = c u changes the discrete solution exactly as adding c u to the equation (to rounding)."""
    c, dt, n_steps = -0.3, 1e-3, 50
    with_closure = ODE_SYSTEMS[name](dt=dt, integrator=integrator, closure=lambda t, u: c * u)
    plain = ODE_SYSTEMS[name](dt=dt, integrator=integrator)
    u0 = sample_states(name, 4, generator)
    got = with_closure.rollout(u0, n_steps)

    def field(t, u):
        return plain.known_rhs(t, u) + c * u

    u, expected = u0, [u0]
    for i in range(n_steps):
        t = torch.tensor(i * dt, dtype=torch.float64)
        if integrator == "rk4":
            k1 = field(t, u)
            k2 = field(t + dt / 2, u + dt / 2 * k1)
            k3 = field(t + dt / 2, u + dt / 2 * k2)
            k4 = field(t + dt, u + dt * k3)
            u = u + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:
            u = u + dt * field(t, u)
        expected.append(u)
    expected = torch.stack(expected, dim=1)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-13 * scale)
    assert (got - plain.rollout(u0, n_steps)).abs().max().item() > 1e-4 * scale


def test_time_dependent_closure_and_gradients_to_its_parameters():
    """Forcing a cos(w t) on Lorenz' x: stage times reach the closure, and d u / d a matches finite differences."""
    amplitude = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
    direction = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    seen = []

    def closure(t, u):
        seen.append(t)
        return amplitude * torch.cos(3.0 * t) * direction.expand_as(u)

    solver = Lorenz63(dt=0.01, closure=closure)
    u0 = torch.tensor([[1.2, 2.1, 1.7]], dtype=torch.float64)
    solver.step(0.2, u0)
    assert [t.ndim for t in seen] == [0] * 4
    assert [t.item() for t in seen] == pytest.approx([0.2, 0.205, 0.205, 0.21], abs=1e-15)
    seen.clear()  # a one-element t of another shape reaches the closure 0-dim too (it came as (1, 1))
    solver.step(torch.tensor([[0.2]], dtype=torch.float64), u0)
    assert [t.ndim for t in seen] == [0] * 4
    with pytest.raises(ValueError, match=r"t has shape \(2,\); a step takes one time"):
        solver.step(torch.tensor([0.2, 0.3]), u0)

    def loss():
        return solver.rollout(u0, 20)[:, -1].pow(2).sum()

    loss().backward()
    gradient = amplitude.grad.item()
    epsilon = 1e-6
    with torch.no_grad():
        amplitude += epsilon
        up = loss().item()
        amplitude -= 2 * epsilon
        down = loss().item()
        amplitude += epsilon
    assert gradient != 0 and gradient == pytest.approx((up - down) / (2 * epsilon), rel=1e-6)


# -- adaptive solves --------------------------------------------------------------------------------------------------
def test_solve_adaptive_reports_nfe_and_agrees_with_rk4():
    solver = TwoBody(dt=1e-3)
    u0 = torch.tensor([kepler_initial_state(0.5)], dtype=torch.float64)
    times = [0.0, 0.5, 1.0]
    u, nfe = solver.solve_adaptive(u0, times, rtol=1e-10, atol=1e-12)
    assert isinstance(nfe, int) and nfe > 0
    assert u.shape == (1, 3, 4)
    fixed = solver.rollout(u0, 1000, save_every=500)
    assert (u - fixed).abs().max().item() < 1e-8
    _, loose = solver.solve_adaptive(u0, times, rtol=1e-4, atol=1e-6)
    assert 0 < loose < nfe


class SmallLinearClosure(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.layer = torch.nn.Linear(n, n, dtype=torch.float64)

    def forward(self, t, u):
        return 0.01 * self.layer(u)


def test_solve_adaptive_with_adjoint_trains_closure_parameters():
    closure = SmallLinearClosure(2)
    solver = LotkaVolterra(closure=closure)  # a Module: solve_adaptive hands its parameters to the adjoint
    u0 = torch.tensor([[0.4425, 4.628]], dtype=torch.float64)
    u, nfe = solver.solve_adaptive(u0, [0.0, 0.5], adjoint=True)
    u[:, -1].sum().backward()
    assert nfe > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in closure.parameters())
    # and they are the gradients: the adjoint's equal backpropagation through the solver's steps and
    # a central difference in one weight (all at tight tolerances, so the solves' own errors are small)
    gradients = {}
    for adjoint in (True, False):
        closure.zero_grad()
        u, _ = solver.solve_adaptive(u0, [0.0, 0.5], adjoint=adjoint, rtol=1e-10, atol=1e-12)
        u[:, -1].sum().backward()
        gradients[adjoint] = [p.grad.clone() for p in closure.parameters()]
    for by_adjoint, by_backpropagation in zip(gradients[True], gradients[False]):
        torch.testing.assert_close(by_adjoint, by_backpropagation, rtol=1e-7, atol=1e-10)
    weight, h = closure.layer.weight, 1e-4
    with torch.no_grad():
        ends = []
        for sign in (1, -1):
            weight[1, 0] += sign * h
            ends.append(solver.solve_adaptive(u0, [0.0, 0.5], rtol=1e-12, atol=1e-14)[0][:, -1].sum())
            weight[1, 0] -= sign * h
    assert gradients[True][0][1, 0].item() == pytest.approx(((ends[0] - ends[1]) / (2 * h)).item(), rel=1e-6)


# -- state checks and construction errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ODE_SYSTEMS))
def test_check_state_rejects_bad_states(name):
    solver = ODE_SYSTEMS[name]()
    n = len(solver.component_names)
    solver.check_state(torch.zeros(2, n, dtype=torch.float64))  # fine
    bad = [torch.zeros(n, dtype=torch.float64),                  # no batch dimension
           torch.zeros(2, n + 1, dtype=torch.float64),           # wrong state size
           torch.zeros(2, n, 1, dtype=torch.float64),            # extra dimension
           torch.zeros(2, n, dtype=torch.float32),               # wrong dtype
           np.zeros((2, n))]                                     # not a tensor
    for u in bad:
        with pytest.raises(SolverStateError):
            solver.check_state(u)
        with pytest.raises(SolverStateError):
            solver.rollout(u, 1)
        with pytest.raises(SolverStateError):  # one step too (it took an unbatched or float32 state before)
            solver.step(0.0, u)
    assert issubclass(SolverStateError, ValueError)
    assert solver.state_shape == (n,) and len(set(solver.component_names)) == n


@pytest.mark.parametrize("name", sorted(ODE_SYSTEMS))
def test_a_closure_of_the_wrong_shape_is_refused_not_broadcast(name):
    """``(batch, 1)`` or ``(n,)`` tendencies would broadcast into every member or component."""
    n = len(ODE_SYSTEMS[name].component_names)
    u0 = sample_states(name, 3, torch.Generator().manual_seed(0))
    for wrong in [lambda t, u: torch.zeros(u.shape[0], 1, dtype=u.dtype), lambda t, u: torch.zeros(n, dtype=u.dtype),
                  lambda t, u: u.sum().item()]:
        solver = ODE_SYSTEMS[name](closure=wrong)
        for method, arguments in (("rhs", (0.0, u0)), ("step", (0.0, u0)), ("rollout", (u0, 2))):
            with pytest.raises(SolverStateError, match="same shape as u"):
                getattr(solver, method)(*arguments)
    solver = ODE_SYSTEMS[name](closure=lambda t, u: torch.zeros_like(u, dtype=torch.float32))
    with pytest.raises(SolverStateError, match=r"returned torch.float32 for u of dtype torch.float64"):
        solver.rollout(u0, 2)
    # a finer answer is rounded to the state's precision: type promotion carried the state into float64
    finer = ODE_SYSTEMS[name](closure=lambda t, u: 1e-3 * u.double(), dtype=torch.float32)
    assert finer.step(0.0, u0.float()).dtype == finer.rollout(u0.float(), 2).dtype == torch.float32
    solver = ODE_SYSTEMS[name](closure=lambda t, u: torch.zeros_like(u))
    assert torch.equal(solver.rollout(u0, 2), ODE_SYSTEMS[name]().rollout(u0, 2))


def test_constructor_errors_name_the_fix():
    with pytest.raises(ValueError, match="dt"):
        Lorenz63(dt=-0.1)
    with pytest.raises(ValueError, match="rk4"):
        Lorenz63(integrator="rk45")
    with pytest.raises(ValueError, match="moments_of_inertia"):
        RigidBody(moments_of_inertia=(1.0, 0.0, 2.0))
    with pytest.raises(ValueError, match="n_steps"):
        next(Lorenz63().trajectory(torch.zeros(1, 3, dtype=torch.float64), -1))


@pytest.mark.parametrize("make, name", [
    (lambda: ODE_SYSTEMS["two_body"](gravitational_parameter=-1.0), "gravitational_parameter"),
    (lambda: RigidBody(moments_of_inertia=(1.0, float("nan"), 2.0)), "moments_of_inertia"),
    (lambda: ODE_SYSTEMS["lotka_volterra"](a=-1.0), "a="),
    (lambda: ODE_SYSTEMS["lotka_volterra"](c=0.0), "c="),
    (lambda: Lorenz63(rho=float("inf")), "rho"),
    (lambda: ODE_SYSTEMS["double_pendulum"](mass1=0.0), "mass1"),
    (lambda: ODE_SYSTEMS["double_pendulum"](length2=-1.0), "length2"),
    (lambda: ODE_SYSTEMS["double_pendulum"](gravity=float("nan")), "gravity"),
    (lambda: Lorenz63(dt=float("inf")), "dt"),
    (lambda: Lorenz63(dtype=torch.int64), "dtype"),
])
def test_parameters_that_give_nan_or_fail_later_are_refused_at_construction(make, name):
    """Before, each of these built a solver whose steps gave NaN or raised ZeroDivisionError or a math
    domain error at run time (or ran a mirrored system)."""
    with pytest.raises(ValueError, match=name):
        make()


def test_a_step_size_given_to_one_call_is_checked_as_the_constructors():
    solver, u0 = Lorenz63(), torch.ones(1, 3, dtype=torch.float64)
    for dt in (0.0, -0.01, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="dt"):
            solver.rollout(u0, 2, dt=dt)
        with pytest.raises(ValueError, match="dt"):
            solver.step(0.0, u0, dt=dt)
    # any real number type is a step size (numpy's float32 is no Python float)
    assert torch.allclose(solver.step(0.0, u0, dt=0.02), solver.step(0.0, u0, dt=np.float32(0.02)), rtol=1e-6)


# -- package hygiene -----------------------------------------------------------------------------------------------------
FORBIDDEN_IMPORTS = ("hybridnde", "xarray", "mpi4py")


def test_solvers_never_import_hybridnde_xarray_or_mpi4py():
    sources = sorted(SOLVERS_DIR.rglob("*.py"))
    assert sources, SOLVERS_DIR
    offending = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 1:  # from .. import x: reaches outside the package
                    offending.append(f"{path.name}:{node.lineno} relative import beyond solvers/")
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            offending += [f"{path.name}:{node.lineno} imports {name}" for name in names
                          if name.split(".")[0] in FORBIDDEN_IMPORTS]
    assert not offending, offending


def test_importing_solvers_loads_none_of_them():
    code = ("import sys, solvers; bad = [m for m in sys.modules if m.split('.')[0] in "
            f"{FORBIDDEN_IMPORTS!r}]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=SOLVERS_DIR.parent, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_solver_arguments_that_failed_later_are_refused_up_front():
    """A closure that is not callable and a float step count raised bare TypeErrors at run time; a
    CUDA device without CUDA built a solver that failed at its first step."""
    with pytest.raises(ValueError, match="give a callable closure"):
        Lorenz63(closure=3.0)
    u0 = torch.ones(1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="step counts"):
        Lorenz63().rollout(u0, 2.0)
    assert Lorenz63().rollout(u0, np.int64(2)).shape == (1, 3, 3)  # numpy's integers are counts
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Lorenz63(device="cuda")


def test_a_subclass_that_overrides_step_is_stepped_by_its_own_step_in_rollouts():
    """Rollouts skip the public step's state check (done once per trajectory); a subclass's own step
    must still be what they take."""
    class Clamped(Lorenz63):
        def step(self, t, u, dt=None):
            return super().step(t, u, dt).clamp(-1.0, 1.0)

    u0 = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        assert float(Clamped().rollout(u0, 50).abs().max()) == 1.0
        assert float(Lorenz63().rollout(u0, 50).abs().max()) > 10.0


def test_a_trajectory_takes_no_step_past_its_last_save():
    """10 steps saved every 3: the saves after 3, 6 and 9 steps, as a whole-trajectory call gives them;
    the tenth step would be computed and thrown away."""
    class Counted(Lorenz63):
        steps = 0

        def step(self, t, u, dt=None):
            Counted.steps += 1
            return super().step(t, u, dt)

    u0 = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        saves = list(Counted().trajectory(u0, 10, save_every=3, dt=0.01))
        assert Counted.steps == 9 and [t for t, _ in saves] == pytest.approx([0.0, 0.03, 0.06, 0.09])
        torch.testing.assert_close(saves[-1][1], Lorenz63().rollout(u0, 9, save_every=9, dt=0.01)[:, -1],
                                   rtol=0, atol=0)


def test_a_python_number_becomes_the_time_as_torch_rounds_it(device, dtype):
    """Python times are filled in on the device (a copy to a GPU would wait for its stream) and rounded as
    ``torch.as_tensor`` rounds them."""
    solver = Lorenz63(dt=0.01, dtype=dtype, device=device)
    for t in (0.1, 3, 1e-9, 123456.789, -2.5e7 / 3):
        got = solver.as_time(t)
        assert got.ndim == 0 and got.dtype == dtype and got.device.type == device.type
        assert got.item() == torch.as_tensor(t, dtype=dtype).item(), t


def test_a_python_time_is_made_on_the_solvers_device():
    """On the meta device (no GPU here) a fill without device= lands on the CPU."""
    from solvers import Lorenz63

    solver = Lorenz63(dt=0.01, device="meta")
    assert solver.as_time(0.5).device.type == "meta" and solver.as_time(3).device.type == "meta"
