"""Pseudo-spectral ETDRK4 Kuramoto-Sivashinsky (``KuramotoSivashinskySpectral``, ``etdrk4_coefficients``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import (
    KS_DOMAIN_LENGTH,
    fitted_order,
    numpy_ks_reference,
    periodic_smooth_field,
    spectral_derivatives,
    tolerance_for,
)
from solvers.kuramoto_sivashinsky import KuramotoSivashinskySpectral, etdrk4_coefficients


def make_solver(**options) -> KuramotoSivashinskySpectral:
    options.setdefault("domain_length", KS_DOMAIN_LENGTH)
    options.setdefault("n_points", 64)
    return KuramotoSivashinskySpectral(**options)


def initial_state(solver: KuramotoSivashinskySpectral) -> torch.Tensor:
    """(1, n) the smooth periodic initial condition on the solver's grid."""
    x = solver.x.detach().cpu().numpy()
    return torch.as_tensor(periodic_smooth_field(x, solver.domain_length), dtype=solver.dtype,
                           device=solver.device)[None]


def random_smooth_fields(solver, batch, generator, n_modes=6, amplitude=1.0) -> torch.Tensor:
    """(batch, n) random fields made of the lowest ``n_modes`` Fourier modes, plus a random mean."""
    x = solver.x.detach().cpu().to(torch.float64)
    modes = torch.arange(1, n_modes + 1, dtype=torch.float64)
    phase = 2 * math.pi / solver.domain_length * modes[:, None] * x[None, :]  # (modes, n)
    a = torch.randn(batch, n_modes, generator=generator, dtype=torch.float64) / modes
    b = torch.randn(batch, n_modes, generator=generator, dtype=torch.float64) / modes
    mean = torch.randn(batch, 1, generator=generator, dtype=torch.float64)
    u = amplitude * (a @ torch.cos(phase) + b @ torch.sin(phase)) + mean
    return u.to(dtype=solver.dtype, device=solver.device)


def final_state(solver, u0, horizon, dt):
    n_steps = int(round(horizon / dt))
    return solver.rollout(u0, n_steps, dt=dt, save_every=n_steps)[:, -1]


@pytest.fixture(scope="module")
def reference_at_5() -> np.ndarray:
    """Independent numpy solution (N = 128, integrating-factor RK4, dt = 1e-3) at t = 5."""
    return numpy_ks_reference(128, 5.0, 1e-3)


# -- accuracy ---------------------------------------------------------------------------------------
def test_known_rhs_matches_analytic_derivatives(device):
    """``known_rhs`` of a resolved field is ``-u u_x - u_xx - u_xxxx`` computed independently."""
    solver = make_solver(device=device)
    x = solver.x.cpu().numpy()
    u = periodic_smooth_field(x)
    derivative = spectral_derivatives(u, solver.domain_length)
    expected = -u * derivative[1] - derivative[2] - derivative[4]
    got = solver.known_rhs(torch.tensor(0.0), torch.as_tensor(u, device=device)[None])[0].cpu().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-11 * np.abs(expected).max())


@pytest.mark.parametrize("implementation", ["auto", "dense", "fft"])
@pytest.mark.parametrize("closure", [False, True])
def test_two_thirds_dealiasing_leaves_the_cut_modes_untouched(implementation, closure):
    """Orszag's 2/3 rule: the nonlinear term keeps modes k < (2/3)(N/2) only. u = cos(11) + cos(12)
    (mode numbers) makes u^2 modes 1 and 22-24, all cut at N = 64 (k <= 21) but for mode 1: so the
    known tendency is exactly the linear one above k = 21, and a step from u leaves modes 22-24 at
    0 in every path (the compiled whole step, the dense step, the FFT stages; with and without a
    closure). Without the cut they get ~dt * k * |u|^2 (checked: 55 in the tendency)."""
    solver = make_solver(implementation=implementation, dt=1e-3,
                         closure=(lambda t, u: 0.0 * u) if closure else None)
    x = solver.x
    mode = 2 * math.pi / solver.domain_length
    u = (torch.cos(11 * mode * x) + torch.cos(12 * mode * x))[None].repeat(3, 1)  # (3, 64)
    cut = int(2 / 3 * (solver.n_points // 2))
    assert cut == 21
    tendency_hat = torch.fft.rfft(solver.known_rhs(torch.tensor(0.0), u), dim=-1)
    nonlinear_hat = tendency_hat - solver.linear_hat * torch.fft.rfft(u, dim=-1)
    assert nonlinear_hat[:, cut + 1:].abs().max() < 1e-11
    assert nonlinear_hat[:, 1].abs().max() > 1.0  # the kept product mode is there (-c/2 i k |u_11 u_12|)
    with torch.no_grad():
        stepped = solver.rollout(u, 3)[:, -1]
    stepped_hat = torch.fft.rfft(stepped, dim=-1)
    assert stepped_hat[:, cut + 1:].abs().max() < 1e-12 * solver.n_points
    assert stepped_hat[:, 1].abs().max() > 5e-3  # the step did add the kept mode (~3 dt |nonlinear_hat[1]|)


@pytest.mark.parametrize("implementation", ["auto", "dense", "fft"])
@pytest.mark.parametrize("n_points, cut", [(64, 21), (48, 15), (96, 31)])
def test_products_of_fields_band_limited_to_the_cut_are_alias_free(implementation, n_points, cut, generator):
    """The 2/3 rule's promise: for a field with modes 1..21 only (N = 64), the kept modes of the
    quadratic term equal the exact product's, although the product's modes 22..42 wrap around the
    grid (onto modes 22..32, which are cut): the exact nonlinear term here is computed on a grid 4x
    finer, where nothing wraps. The test of dealiasing above has no wrapping modes (u^2 stays below N/2).
    At N divisible by 3 the cut mode is below N/3 (3 m < N): keeping m = N/3 (16 at N = 48) took mode
    2N/3's product wrapped onto it, 3e-3 of the term (helper-101's audit)."""
    solver = make_solver(implementation=implementation, n_points=n_points)
    n = solver.n_points
    assert int(solver.nonlinear_hat.abs().nonzero().max()) == cut  # the highest mode the product keeps
    modes = torch.arange(1, cut + 1, dtype=torch.float64)
    a, b = (torch.randn(2, cut, generator=generator, dtype=torch.float64) / modes for _ in range(2))
    mode = 2 * math.pi / solver.domain_length

    def field(points: int) -> torch.Tensor:
        x = torch.arange(points, dtype=torch.float64) * solver.domain_length / points
        phase = mode * modes[:, None] * x[None, :]
        return a @ torch.cos(phase) + b @ torch.sin(phase)

    u, fine = field(n), field(4 * n)
    wavenumber = mode * torch.arange(n // 2 + 1, dtype=torch.float64)
    exact = -0.5j * wavenumber * torch.fft.rfft(fine * fine)[:, :n // 2 + 1] / 4  # coefficients of -(u^2)_x / 2
    exact[:, cut + 1:] = 0
    got = torch.fft.rfft(solver.known_rhs(torch.tensor(0.0), u)) - solver.linear_hat * torch.fft.rfft(u)
    assert (got - exact).abs().max() < 1e-11 * exact.abs().max()
    # the grid's product does wrap: its modes above the cut differ from the exact ones (and are cut)
    wrapped = torch.fft.rfft(u * u)[:, cut + 1:] - torch.fft.rfft(fine * fine)[:, cut + 1:n // 2 + 1] / 4
    assert wrapped.abs().max() > 1e-3 * torch.fft.rfft(fine * fine)[:, 1:cut + 1].abs().max() / 4  # ~4e-3
    with torch.no_grad():  # and every path's step keeps the field band-limited
        stepped = solver.rollout(u, 4)[:, -1]
    assert torch.fft.rfft(stepped)[:, cut + 1:].abs().max() < 1e-12 * n


@pytest.mark.parametrize("options, name", [({"contour_points": 0}, "contour_points"),
                                           ({"dtype": torch.int64}, "dtype"), ({"dtype": torch.float16}, "dtype"),
                                           ({"domain_length": float("inf")}, "domain_length"),
                                           ({"dt": float("inf")}, "dt")])
def test_constructor_refuses_what_gave_nan_or_the_wrong_precision(options, name):
    """contour_points = 0 gave NaN coefficients, int64 built a float32 solver, float16 failed in torch."""
    with pytest.raises(ValueError, match=name):
        make_solver(**options)


@pytest.mark.parametrize("implementation", ["auto", "dense", "fft"])
def test_a_step_refuses_a_state_of_another_dtype(implementation):
    """A float32 field on a float64 solver came back float64 (auto, dense) or float32 (fft); int64 ran."""
    from solvers import SolverStateError

    solver = make_solver(implementation=implementation)
    for dtype in (torch.float32, torch.int64):
        with pytest.raises(SolverStateError, match="dtype"):
            solver.step(0.0, initial_state(solver).to(dtype))
    with pytest.raises(ValueError, match="dt"):
        solver.step(0.0, initial_state(solver), dt=-0.25)


def test_etdrk4_fourth_order_in_dt():
    """ETDRK4 converges at fourth order in dt (self-convergence at fixed N, horizon 10).

    On L = 22 the order is reduced (~3) for dt >= 1/8 (stiff pre-asymptotic regime); from
    dt = 1/16 down it is 4.
    """
    solver = make_solver()
    u0 = initial_state(solver)
    horizon = 10.0
    reference = final_state(solver, u0, horizon, 1 / 512)
    step_sizes = [1 / 16, 1 / 32, 1 / 64, 1 / 128]
    errors = [(final_state(solver, u0, horizon, dt) - reference).abs().max().item() for dt in step_sizes]
    order = fitted_order(step_sizes, errors)
    assert abs(order - 4) < 0.3, (order, errors)


def test_matches_independent_fine_reference(reference_at_5):
    """N = 64 ETDRK4 against an independent N = 128 integrating-factor RK4 solution on the coarse grid."""
    coarse_reference = reference_at_5[::2]
    amplitude = np.abs(coarse_reference).max()
    assert amplitude > 1.0  # the solution is not trivially small
    for dt, tolerance in ((0.25, 2e-4), (0.05, 2e-6)):
        solver = make_solver(dt=dt)
        got = final_state(solver, initial_state(solver), 5.0, dt)[0].numpy()
        error = np.abs(got - coarse_reference).max()
        assert error < tolerance * amplitude, (dt, error)


def test_finer_grid_matches_reference_too(reference_at_5):
    """N = 128 solver (dealiased) on the reference's own grid."""
    solver = make_solver(n_points=128, dt=0.05)
    got = final_state(solver, initial_state(solver), 5.0, 0.05)[0].numpy()
    assert np.abs(got - reference_at_5).max() < 2e-6 * np.abs(reference_at_5).max()


# -- ETDRK4 coefficients ---------------------------------------------------------------------------
def closed_form_coefficients(z: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Cox & Matthews 2002 closed forms, z = L dt (cancellation-prone near z = 0)."""
    ez = np.exp(z)
    return {
        "E": ez,
        "E2": np.exp(z / 2),
        "Q": dt * (np.exp(z / 2) - 1) / z,
        "f1": dt * (-4 - z + ez * (4 - 3 * z + z**2)) / z**3,
        "f2": dt * (2 + z + ez * (z - 2)) / z**3,
        "f3": dt * (-4 - 3 * z - z**2 + ez * (4 - z)) / z**3,
    }


def series_coefficients(z: np.ndarray, dt: float, terms: int = 30) -> dict[str, np.ndarray]:
    """The same coefficients from phi_k(z) = sum_n z^n / (n + k)!, accurate for small |z|.

    Q = phi_1(z/2)/2, f1 = phi_1 - 3 phi_2 + 4 phi_3, f2 = phi_2 - 2 phi_3, f3 = -phi_2 + 4 phi_3.
    """
    def phi(k, w):
        return sum(w**n / math.factorial(n + k) for n in range(terms))

    return {
        "E": np.exp(z),
        "E2": np.exp(z / 2),
        "Q": dt * 0.5 * phi(1, z / 2),
        "f1": dt * (phi(1, z) - 3 * phi(2, z) + 4 * phi(3, z)),
        "f2": dt * (phi(2, z) - 2 * phi(3, z)),
        "f3": dt * (-phi(2, z) + 4 * phi(3, z)),
    }


def test_series_and_closed_forms_agree_where_both_are_accurate():
    """Sanity check of the two independent formulas the next tests rely on."""
    z = np.array([-1.5, -1.0, -0.5, 0.5, 1.0])
    closed, series = closed_form_coefficients(z, 1.0), series_coefficients(z, 1.0)
    for name in closed:
        np.testing.assert_allclose(series[name], closed[name], rtol=1e-13, err_msg=name)


def test_coefficients_match_closed_forms_for_order_one_and_stiff_modes():
    dt = 0.3
    z = np.array([-1.7, -1.0, -0.8, -0.25, 0.25, 0.9, 1.2, -30.0, -1000.0])
    got = etdrk4_coefficients(z / dt, dt)
    expected = closed_form_coefficients(z, dt)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-300, err_msg=name)
        assert got[name].dtype == np.float64


def test_coefficients_do_not_cancel_for_tiny_modes():
    """At |L dt| ~ 1e-8 the closed forms lose every digit; the contour integral must not."""
    dt = 0.25
    z = np.array([-1e-8, 1e-8, -3e-10, 0.0, 2e-6])
    got = etdrk4_coefficients(z / dt, dt)
    expected = series_coefficients(z, dt)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-13, err_msg=name)
    # the limits at z = 0: Q = dt/2, f1 = f2 = f3 = dt/6
    np.testing.assert_allclose([got[n][3] for n in ("Q", "f1", "f2", "f3")],
                               [dt / 2, dt / 6, dt / 6, dt / 6], rtol=1e-14)
    with np.errstate(all="ignore"):  # and the closed forms really do fail there
        naive = closed_form_coefficients(z[:2], dt)["f1"]
    assert not np.allclose(naive, dt / 6, rtol=1e-3)


# -- chaos ------------------------------------------------------------------------------------------
def test_leading_lyapunov_exponent_l22(generator):
    """lambda_1 for L = 22, N = 64, dt = 0.25 lies in the published band (NOTES.md: 0.038-0.056).

    Two-trajectory renormalisation every time unit after 500 time units of spin-up; 16 independent
    members of 2000 time units each, averaged (32000 time units in all).
    """
    solver = make_solver(dt=0.25)
    members, spin_up, horizon, separation = 16, 500, 2000, 1e-8
    steps_per_unit = 4
    u = 0.5 * torch.randn(members, solver.n_points, generator=generator, dtype=torch.float64)
    u = u - u.mean(-1, keepdim=True)
    with torch.no_grad():
        for _ in range(spin_up * steps_per_unit):
            u = solver.step(0.0, u)
        perturbation = torch.randn(members, solver.n_points, generator=generator, dtype=torch.float64)
        perturbation = perturbation - perturbation.mean(-1, keepdim=True)
        v = u + separation * perturbation / perturbation.norm(dim=-1, keepdim=True)
        both = torch.cat([u, v])  # (2 members, n): reference trajectories, then their twins
        log_growth = torch.zeros(members, dtype=torch.float64)
        for _ in range(horizon):
            for _ in range(steps_per_unit):
                both = solver.step(0.0, both)
            reference, twin = both[:members], both[members:]
            distance = (twin - reference).norm(dim=-1)
            log_growth += torch.log(distance / separation)
            twin = reference + (twin - reference) * (separation / distance)[:, None]
            both = torch.cat([reference, twin])
    exponents = log_growth / horizon
    assert torch.isfinite(exponents).all()
    assert 0.038 <= exponents.mean().item() <= 0.056, (exponents.mean().item(), exponents)


# -- Jacobian-vector product ---------------------------------------------------------------------------
def test_jvp_matches_autodiff_and_finite_differences(device, generator):
    solver = make_solver(device=device)
    u = random_smooth_fields(solver, 4, generator)
    v = random_smooth_fields(solver, 4, generator)
    t = torch.tensor(0.0, dtype=torch.float64, device=device)
    got = solver.jvp(t, u, v)
    _, expected = torch.func.jvp(lambda w: solver.known_rhs(t, w), (u,), (v,))
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * scale)
    epsilon = 1e-4
    central = (solver.known_rhs(t, u + epsilon * v) - solver.known_rhs(t, u - epsilon * v)) / (2 * epsilon)
    torch.testing.assert_close(got, central, rtol=0, atol=1e-7 * scale)
    # jvp is linear in v and not a constant: doubling v doubles it
    torch.testing.assert_close(solver.jvp(t, u, 2 * v), 2 * got, rtol=1e-14, atol=1e-14 * scale)



def test_jvp_in_float32_matches_float64_to_its_precision(generator):
    """The float32 solver's exact JVP (a float32 training's regularizer target) is the float64 one, rounded."""
    double, single = make_solver(), make_solver(dtype=torch.float32)
    u, v = random_smooth_fields(double, 4, generator), random_smooth_fields(double, 4, generator)
    t = torch.tensor(0.0, dtype=torch.float64)
    expected = double.jvp(t, u, v)
    got = single.jvp(t.float(), u.float(), v.float())
    assert got.dtype == torch.float32
    # float32 rounding of the transforms, amplified by the k^4 of -v_xxxx at the high modes (k^4 ~ 7e3 at
    # N = 64): 2e-4 of the largest value measured; an error of the scheme would be O(1)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-3 * expected.abs().max().item())


# -- the closure hook --------------------------------------------------------------------------------------
class LinearClosure(torch.nn.Module):
    def __init__(self, strength: float):
        super().__init__()
        self.strength = torch.nn.Parameter(torch.tensor(strength, dtype=torch.float64))

    def forward(self, t, u):
        return self.strength * u


def test_linear_closure_equals_linear_term_in_physics(reference_at_5):
    """closure = c u reproduces u_t = KS + c u (independent reference with c in the linear symbol)."""
    c = -0.35
    shifted_reference = numpy_ks_reference(128, 5.0, 1e-3, linear_shift=c)[::2]
    assert np.abs(shifted_reference - reference_at_5[::2]).max() > 0.1  # the term matters
    errors = []
    for dt in (0.2, 0.1, 0.05):
        solver = make_solver(dt=dt, closure=lambda t, u: c * u)
        with torch.no_grad():
            got = final_state(solver, initial_state(solver), 5.0, dt)[0].numpy()
        errors.append(np.abs(got - shifted_reference).max())
    assert errors[-1] < 2e-7 * np.abs(shifted_reference).max(), errors
    assert errors[0] > errors[1] > errors[2], errors  # converging to the reference, not to something else


def test_time_dependent_closure_sees_stage_times(device):
    solver = make_solver(device=device, dt=0.25)
    seen = []

    def closure(t, u):
        seen.append(t)
        return torch.zeros_like(u)

    solver.closure = closure
    solver.step(1.0, initial_state(solver))
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 for t in seen)
    assert all(t.dtype == solver.dtype and t.device.type == device.type for t in seen)
    assert [t.item() for t in seen] == pytest.approx([1.0, 1.125, 1.125, 1.25], abs=1e-15)

    seen.clear()
    solver.rollout(initial_state(solver), 2, t0=2.0, dt=0.5)
    assert [t.item() for t in seen] == pytest.approx([2.0, 2.25, 2.25, 2.5, 2.5, 2.75, 2.75, 3.0], abs=1e-15)


def test_time_dependent_forcing_is_integrated_at_fourth_order():
    """A uniform forcing a cos(w t) moves the mean by exactly (a/w) sin(w t): checks stage times end to end."""
    amplitude, frequency = 0.8, 3.0
    u0 = initial_state(make_solver()) + 0.2
    errors = []
    step_sizes = [0.4, 0.2, 0.1]
    for dt in step_sizes:
        solver = make_solver(dt=dt, closure=lambda t, u: amplitude * torch.cos(frequency * t) * torch.ones_like(u))
        final = final_state(solver, u0, 4.0, dt)
        expected_mean = u0.mean().item() + amplitude / frequency * math.sin(frequency * 4.0)
        errors.append(abs(final.mean().item() - expected_mean))
    assert abs(fitted_order(step_sizes, errors) - 4) < 0.3, errors


@pytest.mark.parametrize("implementation", ["auto", "fft", "dense"])
def test_a_time_dependent_forcing_of_a_moving_mode_is_exact_at_fourth_order(implementation):
    """The uniform forcing above reaches mode 0 only, where L = 0. Here, with the quadratic term off,
    A cos(w t) cos(k_m x) on mode m = 3 (L = k^2 - k^4 != 0) has the exact solution
    y(t) = e^{L t} (y0 - y_p(0)) + y_p(t), y_p = A (w sin(w t) - L cos(w t)) / (L^2 + w^2), so the stage
    times and the phi-functions are checked together on every path."""
    amplitude, frequency, mode, horizon = 0.8, 3.0, 3, 4.0
    k = 2 * math.pi * mode / KS_DOMAIN_LENGTH
    rate = k**2 - k**4

    def particular(t):
        return amplitude * (frequency * math.sin(frequency * t) - rate * math.cos(frequency * t)) / (rate**2 + frequency**2)

    errors, step_sizes = [], [0.4, 0.2, 0.1]
    for dt in step_sizes:
        solver = make_solver(dt=dt, nonlinear_coefficient=0.0, implementation=implementation)
        shape = torch.cos(k * solver.x)[None]  # (1, n)
        solver.closure = lambda t, u: amplitude * torch.cos(frequency * t) * shape.expand_as(u)
        with torch.no_grad():
            final = final_state(solver, torch.zeros(2, solver.n_points, dtype=torch.float64), horizon, dt)
        got = 2 * torch.fft.rfft(final)[:, mode].real / solver.n_points  # the cos(k_m x) amplitude
        exact = math.exp(rate * horizon) * (0.0 - particular(0.0)) + particular(horizon)
        errors.append(float((got - exact).abs().max()))
    assert errors[-1] < 1e-6 and abs(fitted_order(step_sizes, errors) - 4) < 0.3, errors


def test_gradients_flow_through_step_to_closure_parameters(device):
    closure = LinearClosure(0.3).to(device)
    solver = make_solver(device=device, dt=0.25, closure=lambda t, u: closure.strength * torch.sin(u))
    u0 = initial_state(solver)

    def loss(strength_value=None):
        if strength_value is not None:
            with torch.no_grad():
                closure.strength.fill_(strength_value)
        u = u0
        for i in range(3):
            u = solver.step(i * 0.25, u)
        return (u**2).sum()

    closure.strength.grad = None
    loss().backward()
    gradient = closure.strength.grad.item()
    epsilon = 1e-5
    with torch.no_grad():
        central = (loss(0.3 + epsilon) - loss(0.3 - epsilon)).item() / (2 * epsilon)
    assert gradient != 0.0
    assert gradient == pytest.approx(central, rel=1e-7)


def test_gradients_flow_through_rollout_to_initial_state():
    solver = make_solver(dt=0.25, closure=LinearClosure(-0.1))
    u0 = initial_state(solver).requires_grad_(True)
    solver.rollout(u0, 5)[:, -1].pow(2).sum().backward()
    assert u0.grad is not None and torch.isfinite(u0.grad).all() and u0.grad.abs().max() > 0
    assert solver.closure.strength.grad is not None and solver.closure.strength.grad != 0


# -- batching, dtypes, invariants ---------------------------------------------------------------------------
def test_batched_rollout_equals_member_rollouts(device, generator):
    solver = make_solver(device=device, closure=lambda t, u: 0.05 * torch.cos(t) * u**2)
    u0 = random_smooth_fields(solver, 3, generator)
    together = solver.rollout(u0, 20, save_every=5)
    assert together.shape == (3, 5, solver.n_points)
    for member in range(3):
        alone = solver.rollout(u0[member:member + 1], 20, save_every=5)
        torch.testing.assert_close(together[member:member + 1], alone, rtol=0, atol=1e-12)


def test_rollout_returns_initial_state_and_matches_steps():
    solver = make_solver()
    u0 = initial_state(solver)
    saved = solver.rollout(u0, 6, save_every=2)
    torch.testing.assert_close(saved[:, 0], u0, rtol=0, atol=0)
    u = u0
    for i in range(6):
        u = solver.step(i * solver.dt, u)
    torch.testing.assert_close(saved[:, -1], u, rtol=0, atol=1e-13)
    assert solver.times(6, save_every=2) == pytest.approx([0.0, 0.5, 1.0, 1.5])


def test_float32_matches_float64(device, generator):
    double = make_solver(device=device, closure=lambda t, u: -0.1 * u)
    single = make_solver(device=device, dtype=torch.float32, closure=lambda t, u: -0.1 * u)
    u0 = random_smooth_fields(double, 2, generator)
    reference = double.rollout(u0, 20)
    got = single.rollout(u0.float(), 20)
    assert got.dtype == torch.float32 and got.device.type == device.type
    assert torch.isfinite(got).all()
    scale = reference.abs().max().item()
    assert (got.double() - reference).abs().max().item() < 1e-4 * scale


def test_mean_is_conserved(dtype, device, generator):
    solver = make_solver(dtype=dtype, device=device)
    u0 = random_smooth_fields(solver, 3, generator)
    assert u0.mean(-1).abs().min() > 0.01  # a non-zero mean to conserve
    saved = solver.rollout(u0, 400, save_every=100)
    drift = (saved.mean(-1) - u0.mean(-1, keepdim=True)).abs().max().item()
    assert drift < tolerance_for(dtype, 1e-12, 1e-5), drift
    assert (saved[:, -1] - u0).abs().max() > 0.1  # and the field itself did evolve


def test_rejects_bad_construction_and_states():
    with pytest.raises(ValueError, match="n_points"):
        make_solver(n_points=63)
    with pytest.raises(ValueError, match="dealiasing_fraction"):
        make_solver(dealiasing_fraction=0.0)
    with pytest.raises(ValueError, match="dt"):
        make_solver(dt=0.0)
    from solvers import SolverStateError

    solver = make_solver()
    with pytest.raises(SolverStateError):
        solver.rollout(torch.zeros(2, 32, dtype=torch.float64), 1)
    with pytest.raises(SolverStateError):
        solver.rollout(torch.zeros(2, 64, dtype=torch.float32), 1)


@pytest.mark.parametrize("implementation", ["auto", "dense", "fft"])
def test_a_closure_of_the_wrong_shape_is_refused_not_broadcast(implementation):
    """The dense step copies the closure into ``(batch, n)`` slots, the FFT step adds it: both broadcast."""
    from solvers import SolverStateError

    u0 = 0.1 * torch.randn(3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for wrong in [lambda t, u: torch.zeros(u.shape[0], 1, dtype=u.dtype), lambda t, u: torch.zeros(32, dtype=u.dtype)]:
        solver = make_solver(n_points=32, implementation=implementation, closure=wrong)
        for method, arguments in (("rhs", (0.0, u0)), ("step", (0.0, u0)), ("rollout", (u0, 2))):
            with pytest.raises(SolverStateError, match="same shape as u"):
                getattr(solver, method)(*arguments)
    single = make_solver(n_points=32, implementation=implementation,  # rounded every step, silently
                         closure=lambda t, u: torch.zeros_like(u, dtype=torch.float32))
    for method, arguments in (("rhs", (0.0, u0)), ("step", (0.0, u0)), ("rollout", (u0, 2))):
        with pytest.raises(SolverStateError, match=r"returned torch.float32 for u of dtype torch.float64"):
            getattr(single, method)(*arguments)
    zero = make_solver(n_points=32, implementation=implementation, closure=lambda t, u: torch.zeros_like(u))
    torch.testing.assert_close(zero.rollout(u0, 2), make_solver(n_points=32, implementation=implementation).rollout(u0, 2),
                               rtol=0, atol=1e-13)
    # a float32 network fails inside itself first ("Input type (double) and bias type (float)"): the same
    # refusal, naming the fix, not torch's words
    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(1, 1, 3, padding=1)  # float32

        def forward(self, t, u):
            return self.conv(u[:, None])[:, 0]

    float32 = make_solver(n_points=32, implementation=implementation, closure=Network())
    with pytest.raises(SolverStateError, match=r"parameters are torch.float32 and u is torch.float64: .*closure.to"):
        float32.rollout(u0, 2)


@pytest.mark.parametrize("implementation", ["auto", "dense", "fft"])
def test_an_empty_batch_steps_to_an_empty_batch(implementation):
    """Nothing to step: MKL's FFTs refuse empty batches, and the fused paths' first check ran one."""
    solver = make_solver(implementation=implementation)
    empty = torch.zeros(0, solver.n_points, dtype=torch.float64)
    with torch.no_grad():
        assert solver.rollout(empty, 4, save_every=2).shape == (0, 3, solver.n_points)
        assert solver.step(0.0, empty).shape == (0, solver.n_points)
    assert [t for t, _ in solver.trajectory(empty, 4, save_every=2)] == solver.times(4, save_every=2)
