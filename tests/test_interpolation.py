"""Natural and smoothing cubic splines: exact on the knots, C2, fourth-order, and equal to scipy's."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.interpolate
import torch

from conftest import fitted_order
from hybridnde.interpolation import CubicSpline, natural_cubic_spline, smoothing_cubic_spline


def _noisy_samples(m: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.0, 6.0, m))
    y = np.stack([np.sin(t), np.cos(2 * t)], axis=1) + 0.05 * rng.standard_normal((m, 2))
    return t, y


def test_natural_spline_is_exact_on_its_knots_and_keeps_device_and_dtype(dtype, device):
    t, y = _noisy_samples()
    spline = natural_cubic_spline(torch.tensor(t), torch.tensor(y), device=device, dtype=dtype)
    assert spline.dtype == dtype and spline.device.type == device.type
    on_knots = spline(torch.tensor(t, dtype=dtype, device=device))
    assert on_knots.dtype == dtype and on_knots.device.type == device.type
    tolerance = 1e-14 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(on_knots, torch.tensor(y, dtype=dtype, device=device), rtol=0, atol=tolerance)
    # natural: zero curvature at both ends
    ends = spline.derivative(torch.tensor([t[0], t[-1]], dtype=dtype, device=device), order=2)
    assert ends.abs().max() < 1e3 * tolerance


def test_spline_is_twice_continuously_differentiable_at_the_knots():
    t, y = _noisy_samples()
    spline = smoothing_cubic_spline(torch.tensor(t), torch.tensor(y), 1e-3)
    knots = torch.tensor(t[1:-1])
    epsilon = 1e-7
    for order in (0, 1, 2):
        evaluate = spline if order == 0 else (lambda s, k=order: spline.derivative(s, order=k))
        left, right = evaluate(knots - epsilon), evaluate(knots + epsilon)
        jump = (right - left).abs().max()
        assert jump < 1e-4, f"derivative {order} jumps by {jump} at a knot"
    # the third derivative is piecewise constant and does jump (a cubic spline is not C3)
    third_jump = (spline.derivative(knots + epsilon, order=3) - spline.derivative(knots - epsilon, order=3)).abs().max()
    assert third_jump > 1e-2


def test_first_derivative_matches_finite_differences():
    t, y = _noisy_samples()
    spline = natural_cubic_spline(torch.tensor(t), torch.tensor(y))
    s = torch.linspace(0.5, 5.5, 50, dtype=torch.float64)
    h = 1e-6
    torch.testing.assert_close(spline.derivative(s), (spline(s + h) - spline(s - h)) / (2 * h), rtol=1e-6, atol=1e-6)


def test_interpolation_error_is_fourth_order():
    """sin on [0, pi] has zero second derivative at both ends, so the natural end conditions are
    exact and the error falls like h^4 (de Boor, A Practical Guide to Splines, Ch. IV)."""
    errors, spacings = [], []
    s = torch.linspace(0.0, np.pi, 1001, dtype=torch.float64)
    for m in (9, 17, 33, 65):
        t = torch.linspace(0.0, np.pi, m, dtype=torch.float64)
        spline = natural_cubic_spline(t, torch.sin(t))
        errors.append(float((spline(s) - torch.sin(s)).abs().max()))
        spacings.append(np.pi / (m - 1))
    assert fitted_order(spacings, errors) == pytest.approx(4.0, abs=0.25)


@pytest.mark.parametrize("lam", [0.0, 1e-4, 1e-3, 1e-1, 10.0])
def test_smoothing_spline_equals_scipy_make_smoothing_spline(lam):
    t, y = _noisy_samples()
    spline = smoothing_cubic_spline(torch.tensor(t), torch.tensor(y), lam)
    s = np.linspace(-0.5, 6.5, 500)  # extrapolation included: both continue the end cubics
    if lam == 0.0:
        reference = scipy.interpolate.CubicSpline(t, y, bc_type="natural")(s)
    else:
        reference = np.stack([scipy.interpolate.make_smoothing_spline(t, y[:, k], lam=lam)(s) for k in range(2)], 1)
    np.testing.assert_allclose(spline(torch.tensor(s)).numpy(), reference, rtol=0, atol=1e-9 * max(1.0, lam))


def test_smoothing_spline_with_weights_equals_scipy():
    t, y = _noisy_samples()
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(t))
    spline = smoothing_cubic_spline(torch.tensor(t), torch.tensor(y[:, 0]), 1e-2, weights=torch.tensor(weights))
    reference = scipy.interpolate.make_smoothing_spline(t, y[:, 0], w=weights, lam=1e-2)
    s = np.linspace(0.0, 6.0, 300)
    np.testing.assert_allclose(spline(torch.tensor(s)).numpy(), reference(s), rtol=0, atol=1e-10)


def test_smoothing_spline_minimises_its_objective():
    """Perturbing the fitted knot values (keeping a natural spline through them) raises
    sum (y - g)^2 + lam * integral S''^2; lam -> inf gives the least-squares line."""
    t, y = _noisy_samples(m=25)
    t_, y_ = torch.tensor(t), torch.tensor(y[:, 0])
    lam = 1e-2
    fitted = smoothing_cubic_spline(t_, y_, lam)

    def objective(spline: CubicSpline) -> float:
        return float(((y_ - spline(t_)) ** 2).sum() + lam * spline.roughness())

    best = objective(fitted)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        perturbed = natural_cubic_spline(t_, fitted.values + 1e-3 * torch.randn(len(t), generator=generator,
                                                                                 dtype=torch.float64))
        assert objective(perturbed) > best
    line = smoothing_cubic_spline(t_, y_, 1e9)
    slope, intercept = np.polyfit(t, y[:, 0], 1)
    np.testing.assert_allclose(line(t_).numpy(), slope * t + intercept, atol=1e-5)


def test_vectorised_evaluation_shapes():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    y = torch.randn(11, 3, 2, dtype=torch.float64)  # (time, members, n)
    spline = natural_cubic_spline(t, y)
    assert spline(torch.tensor(0.35, dtype=torch.float64)).shape == (3, 2)
    assert spline(torch.rand(4, 5, dtype=torch.float64)).shape == (4, 5, 3, 2)
    assert spline.to(dtype=torch.float32)(torch.tensor([0.2])).dtype == torch.float32


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="strictly increasing"):
        natural_cubic_spline(torch.tensor([0.0, 1.0, 1.0]), torch.zeros(3))
    with pytest.raises(ValueError, match="time"):
        natural_cubic_spline(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(4))
    with pytest.raises(ValueError, match="lam"):
        smoothing_cubic_spline(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3), -1.0)
    for lam in (float("nan"), float("inf")):  # inf was refused as "not positive definite ... knots"
        with pytest.raises(ValueError, match=f"lam={lam} must be a finite number, zero or positive"):
            smoothing_cubic_spline(torch.tensor([0.0, 1.0, 2.0]), torch.zeros(3), lam)
    # two samples need no system to solve: the knot check alone stands between them and a 0/0 spline
    with pytest.raises(ValueError, match="strictly increasing"):
        natural_cubic_spline(torch.tensor([1.0, 1.0]), torch.zeros(2))
    # a zero weight divides by zero and a negative one makes the objective unbounded: both refused
    for bad in ([1.0, 0.0, 1.0, 1.0], [1.0, 1.0, -0.5, 1.0]):
        with pytest.raises(ValueError, match="weights must be 4 positive numbers"):
            smoothing_cubic_spline(torch.arange(4.0), torch.zeros(4), 1e-2, weights=torch.tensor(bad))


def test_a_spline_needs_two_knots_and_one_value_and_curvature_per_knot():
    knots = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="at least 2 times"):
        CubicSpline(knots[:1], torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="must both be"):
        CubicSpline(knots, torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="must both be"):
        CubicSpline(knots, torch.zeros(3), torch.zeros(3, 1))


def test_roughness_is_the_integral_of_the_squared_second_derivative():
    """Against 3-point Gauss-Legendre quadrature of (S'')^2 per interval (exact: S'' is linear there)."""
    t = torch.linspace(0, 2, 12, dtype=torch.float64)
    y = torch.sin(3 * t)[:, None] + 0.1 * torch.randn(12, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    spline = smoothing_cubic_spline(t, y, 1e-3)
    nodes, weights = np.polynomial.legendre.leggauss(3)
    total = 0.0
    for a, b in zip(t[:-1].tolist(), t[1:].tolist()):
        points = torch.tensor(0.5 * (b - a) * nodes + 0.5 * (a + b))
        total += float((0.5 * (b - a) * torch.tensor(weights) * spline.derivative(points, order=2)[:, 0] ** 2).sum())
    assert float(spline.roughness()[0]) == pytest.approx(total, rel=1e-12)


def test_the_third_derivative_is_the_slope_of_the_second():
    t = torch.linspace(0, 2, 12, dtype=torch.float64)
    spline = smoothing_cubic_spline(t, torch.sin(3 * t)[:, None], 0.0)
    middle, h = 0.5 * (t[:-1] + t[1:]), 1e-4
    slope = (spline.derivative(middle + h, order=2) - spline.derivative(middle - h, order=2)) / (2 * h)
    torch.testing.assert_close(spline.derivative(middle, order=3), slope, rtol=1e-6, atol=1e-8)
