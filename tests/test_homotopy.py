"""Homotopy schedule, the data-coupled vector field, coupling-strength estimates, NFE counting and
multiple shooting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import fitted_order

from hybridnde.interpolation import natural_cubic_spline
from hybridnde.training.homotopy import (
    CoupledVectorField,
    HomotopySchedule,
    expansion_rates,
    homotopy_values,
)
from hybridnde.training.multiple_shooting import MultipleShooting, segment_bounds
from solvers import LotkaVolterra
from solvers.integrators import odeint_adaptive


@pytest.mark.parametrize("n_stages", [2, 5, 7, 12])
def test_schedule_starts_at_one_decreases_and_reaches_exactly_zero(n_stages):
    values = homotopy_values(n_stages, ratio=0.6)
    assert len(values) == n_stages and values[0] == 1.0 and values[-1] == 0.0
    decrements = [a - b for a, b in zip(values, values[1:])]
    assert all(d > 0 for d in decrements)
    assert math.isclose(sum(decrements), 1.0, rel_tol=0, abs_tol=1e-15)
    # each decrement is ratio times the previous (power law), up to the forced last value
    for first, second in zip(decrements[:-2], decrements[1:-1]):
        assert math.isclose(second / first, 0.6, rel_tol=1e-12)


@pytest.mark.parametrize("ratio", [1e-200, 1e-30, 0.6, 1.0, 2.0, 1e30, 1e200])
def test_schedule_holds_for_any_positive_ratio(ratio):
    """Extreme ratios: no OverflowError (1e200 raised one after the data were loaded) and no negative
    lam (1e-200 gave -1e-200); ratios a float can raise give the plain power law's values."""
    values = homotopy_values(7, ratio=ratio)
    assert values[0] == 1.0 and values[-1] == 0.0 and all(0.0 <= v <= 1.0 for v in values)
    assert all(a >= b for a, b in zip(values, values[1:]))
    if 1e-3 < ratio < 1e3:
        plain = [ratio**i for i in range(6)]
        expected = [1.0 - sum(plain[:k]) / sum(plain) for k in range(7)]
        assert values[:-1] == pytest.approx(expected[:-1], rel=1e-12, abs=1e-15)


def test_schedule_over_epochs():
    schedule = HomotopySchedule(n_stages=5, epochs_per_stage=100, ratio=0.6)
    assert schedule.total_epochs == 500
    assert schedule(0) == schedule(99) == 1.0
    assert schedule(100) == pytest.approx(1.0 - 1.0 / sum(0.6**i for i in range(4)))
    assert schedule(400) == schedule(499) == schedule(10_000) == 0.0
    assert homotopy_values(1) == (0.0,)
    with pytest.raises(ValueError):
        HomotopySchedule(n_stages=0)


def _lotka_volterra_data(dtype=torch.float64, device="cpu"):
    system = LotkaVolterra(dt=0.01, dtype=dtype, device=device)
    u = system.rollout(torch.tensor([[0.4425, 4.628]], dtype=dtype, device=device), 610, save_every=10)  # (1, 62, 2)
    times = torch.arange(u.shape[1], dtype=dtype, device=device) * 0.1
    return system, times, u


def _random_field(dtype, device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dtype=dtype,
                                                                                                device=device)


def test_coupled_trajectory_tracks_the_data_for_large_coupling(dtype, device):
    """With lam = 1 an untrained model follows the data to within ~|F - u_data'| / K."""
    _, times, u = _lotka_volterra_data(dtype, device)
    target = natural_cubic_spline(times, u.movedim(1, 0))  # u_data(t): (1, 2)
    net = _random_field(dtype, device)
    errors = {}
    for coupling in (20.0, 80.0):
        coupled = CoupledVectorField(lambda t, x: net(x), target, coupling, lam=1.0)
        tolerance = 1e-6 if dtype == torch.float64 else 1e-5
        with torch.no_grad():
            trajectory, _ = odeint_adaptive(coupled, u[:, 0], times, rtol=tolerance, atol=tolerance)
        errors[coupling] = float((trajectory - u).abs().max())
    scale = float(u.abs().max())
    assert errors[80.0] < 0.05 * scale
    assert errors[80.0] < 0.35 * errors[20.0]  # ~1/K
    # uncoupled, the random model drifts far from the data
    free = CoupledVectorField(lambda t, x: net(x), target, 80.0, lam=0.0)
    with torch.no_grad():
        trajectory, _ = odeint_adaptive(free, u[:, 0], times, rtol=1e-5, atol=1e-5)
    assert float((trajectory - u).abs().max()) > 10 * errors[80.0]


def test_coupled_field_with_the_true_dynamics_leaves_the_truth_unchanged():
    system, times, u = _lotka_volterra_data()
    target = natural_cubic_spline(times, u.movedim(1, 0))
    coupled = CoupledVectorField(system.known_rhs, target, torch.tensor([6.0, 3.0], dtype=torch.float64), lam=0.7)
    trajectory, _ = odeint_adaptive(coupled, u[:, 0], times, rtol=1e-9, atol=1e-11)
    # the only forcing left is the spline's interpolation error, small for data sampled every 0.1
    assert float((trajectory - u).abs().max()) < 1e-3
    with pytest.raises(ValueError, match="lam"):
        coupled.lam = 1.5
    with pytest.raises(ValueError, match="non-negative"):
        CoupledVectorField(system.known_rhs, target, -1.0)


def test_gradients_flow_through_the_coupled_solve():
    _, times, u = _lotka_volterra_data()
    target = natural_cubic_spline(times, u.movedim(1, 0))
    net = _random_field(torch.float64, "cpu")
    coupled = CoupledVectorField(lambda t, x: net(x), target, 6.0, lam=0.5)
    trajectory, _ = odeint_adaptive(coupled, u[:, 0], times[:20], rtol=1e-6, atol=1e-8)
    (trajectory - u[:, :20]).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in net.parameters())
    # the gradient through the coupled solve is the loss's: a central difference in one weight agrees
    net.zero_grad()

    def loss():
        trajectory, _ = odeint_adaptive(coupled, u[:, 0], times[:20], rtol=1e-11, atol=1e-13)
        return (trajectory - u[:, :20]).pow(2).mean()

    loss().backward()
    weight, h = net[0].weight, 1e-5
    with torch.no_grad():
        ends = []
        for sign in (1, -1):
            weight[3, 1] += sign * h
            ends.append(loss().item())
            weight[3, 1] -= sign * h
    assert weight.grad[3, 1].item() == pytest.approx((ends[0] - ends[1]) / (2 * h), rel=1e-5)


def test_nfe_counters_increase_with_tighter_tolerances():
    _, times, u = _lotka_volterra_data()
    target = natural_cubic_spline(times, u.movedim(1, 0))
    net = _random_field(torch.float64, "cpu")
    coupled = CoupledVectorField(lambda t, x: net(x), target, 6.0, lam=0.5)
    counts = []
    for tolerance in (1e-3, 1e-5, 1e-7):
        net.zero_grad()
        trajectory, counter = odeint_adaptive(coupled, u[:, 0], times[:30], rtol=tolerance, atol=tolerance,
                                              adjoint=True, adjoint_params=list(net.parameters()))
        forward = counter.nfe
        (trajectory - u[:, :30]).pow(2).mean().backward()
        counts.append((forward, counter.nfe - forward))
    forward_counts, backward_counts = zip(*counts)
    assert forward_counts[0] < forward_counts[1] < forward_counts[2]
    assert 0 < backward_counts[0] < backward_counts[1] < backward_counts[2]


def test_expansion_rates_of_a_linear_system():
    """du/dt = A u: the Lyapunov exponent is the largest real part of A's eigenvalues, the local
    expansion rate the largest eigenvalue of (A + A^T) / 2."""
    matrix = torch.tensor([[0.3, 2.0], [0.0, -1.0]], dtype=torch.float64)
    times = torch.linspace(0.0, 20.0, 201, dtype=torch.float64)
    u = torch.stack([torch.exp(0.3 * times), torch.zeros_like(times)], -1)[:, None]  # a solution, (time, 1, 2)
    target = natural_cubic_spline(times, u)
    rates = expansion_rates(lambda t, x: x @ matrix.T, target, 0.0, 20.0, steps=400)
    assert rates.lyapunov_exponent == pytest.approx(0.3, abs=0.05)  # finite-time: transient ~ log(c)/T
    # the finite-time rate itself, log|expm(A T) d0| / T for the seeded first tangent d0, at RK4's order
    first = torch.randn((1, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)[0].numpy()
    exact = math.log(np.linalg.norm(scipy.linalg.expm(20.0 * matrix.numpy()) @ first / np.linalg.norm(first))) / 20.0
    assert rates.lyapunov_exponent == pytest.approx(exact, abs=1e-9)
    errors = [abs(expansion_rates(lambda t, x: x @ matrix.T, target, 0.0, 20.0, steps=steps).lyapunov_exponent
                  - exact) for steps in (25, 50, 100)]
    assert fitted_order([20.0 / 25, 20.0 / 50, 20.0 / 100], errors) == pytest.approx(4.0, abs=0.3)
    symmetric = 0.5 * (matrix + matrix.T)
    assert rates.max_expansion_rate == pytest.approx(float(torch.linalg.eigvalsh(symmetric)[-1]), rel=1e-12)


def test_segment_bounds_cover_the_window_with_shared_ends():
    bounds = segment_bounds(62, 5)
    assert bounds[0][0] == 0 and bounds[-1][1] == 61
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    lengths = [stop - start for start, stop in bounds]
    assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError, match="n_segments"):
        segment_bounds(4, 5)


@pytest.mark.parametrize("autonomous", [True, False])
def test_multiple_shooting_is_exact_for_the_true_dynamics_and_trains_its_corrections(autonomous):
    system, times, u = _lotka_volterra_data()

    def integrate(field, u0, t):
        return odeint_adaptive(field, u0, t, rtol=1e-9, atol=1e-11)[0]

    shooting = MultipleShooting(u, times, n_segments=4, continuity_weight=1.0, autonomous=autonomous)
    assert shooting.batched == autonomous
    prediction, data_loss, continuity = shooting(system.known_rhs, integrate)
    assert prediction.shape == u.shape
    assert float(data_loss) < 1e-12 and float(continuity) < 1e-12
    # noisy starts: the continuity penalty sees the jumps and its gradient reaches the corrections
    noisy = u + 0.05 * torch.randn(u.shape, generator=torch.Generator().manual_seed(0), dtype=u.dtype)
    shooting = MultipleShooting(noisy, times, n_segments=4, continuity_weight=10.0, autonomous=autonomous)
    _, _, continuity = shooting(system.known_rhs, integrate)
    assert float(continuity) > 1e-4
    shooting.loss(system.known_rhs, integrate).backward()
    assert shooting.corrections.grad.abs().max() > 0


def test_the_data_splines_are_cached_per_window_and_equal_a_fresh_batch_spline():
    """Shuffled batches meet each window once an epoch: a cache keyed by whole batches missed every
    step and grew without bound. Per window, three epochs of shuffled batches leave one spline per
    window, and every batch's spline is bit for bit the one of its windows computed together."""
    from hybridnde.interpolation import smoothing_cubic_spline
    from hybridnde.training.homotopy import HomotopyLoss
    from hybridnde.training.terms import Batch

    generator = torch.Generator().manual_seed(0)
    trajectories = torch.randn(4, 30, 2, dtype=torch.float64, generator=generator)
    starts = torch.tensor([(row, first) for row in range(4) for first in range(0, 24, 3)])  # 32 windows
    loss = HomotopyLoss(steps=5, schedule=HomotopySchedule(n_stages=3, epochs_per_stage=1), coupling=6.0,
                        smoothing=0.3)
    for _ in range(3):
        for chosen in torch.randperm(len(starts), generator=generator).split(6):
            batch_starts = starts[chosen]
            windows = trajectories[batch_starts[:, :1], batch_starts[:, 1:2] + torch.arange(6)]
            spline = loss.target(Batch(windows=windows, sample_interval=0.1, starts=batch_starts))
            fresh = smoothing_cubic_spline(torch.arange(6, dtype=torch.float64) * 0.1, windows.movedim(1, 0), 0.3)
            assert torch.equal(spline.values, fresh.values) and torch.equal(spline.second_derivatives,
                                                                               fresh.second_derivatives)
    assert len(loss._splines) == len(starts)


# -- closed forms and index bookkeeping (a mutation audit found these slips unseen) ------------------------------------
def test_segment_lengths_are_numpy_array_split_sizes():
    """docs/training-methods.md: the longer segments come first, as numpy.array_split puts them."""
    for samples, segments in [(62, 5), (21, 4), (10, 3)]:
        lengths = [stop - start for start, stop in segment_bounds(samples, segments)]
        assert lengths == [len(part) for part in np.array_split(np.arange(samples - 1), segments)]


def _constant_solution(field, u0, t):  # du/dt = 0, solved exactly
    return u0[:, None, :].expand(-1, len(t), -1)


def test_continuity_is_the_mean_squared_jump_per_entry_and_joins_take_the_later_segment():
    """With a zero field every segment stays at its start, so the jumps are the starts' differences; the
    loss is the data error per entry plus ``continuity_weight`` times their mean square."""
    generator = torch.Generator().manual_seed(0)
    observations = torch.randn(2, 9, 3, dtype=torch.float64, generator=generator)
    shooting = MultipleShooting(observations, torch.arange(9, dtype=torch.float64) * 0.1, n_segments=4,
                                continuity_weight=7.5)
    with torch.no_grad():
        shooting.corrections.copy_(torch.randn(shooting.corrections.shape, dtype=torch.float64, generator=generator))
    starts = shooting.initial_states()
    zero = lambda t, u: torch.zeros_like(u)  # noqa: E731
    prediction, data_loss, continuity = shooting(zero, _constant_solution)
    torch.testing.assert_close(continuity, (starts[:-1] - starts[1:]).pow(2).mean())  # a mean, not a sum over n
    for k, (start, _) in enumerate(shooting.bounds[1:], start=1):
        torch.testing.assert_close(prediction[:, start], starts[k])
    torch.testing.assert_close(data_loss, (prediction - observations).pow(2).mean())  # per entry too
    torch.testing.assert_close(shooting.loss(zero, _constant_solution), data_loss + 7.5 * continuity)


def test_shooting_corrections_are_those_of_each_windows_own_samples():
    """The free start of segment k of a window from sample ``first`` of a member is that member's
    sample ``first + s_k`` plus its correction; two windows of one member at different starts use
    different corrections (the training test's windows all start at 0)."""
    import types

    from hybridnde.training.multiple_shooting import MultipleShootingLoss
    from hybridnde.training.terms import Batch

    generator = torch.Generator().manual_seed(1)
    trajectories = torch.randn(2, 12, 2, dtype=torch.float64, generator=generator)
    loss = MultipleShootingLoss(steps=4, n_segments=2, continuity_weight=1.0, trajectory_shape=(2, 12, 2),
                                rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        loss.corrections.copy_(torch.randn(2, 12, 2, dtype=torch.float64, generator=generator))
    starts = torch.tensor([[1, 0], [1, 3]])
    windows = torch.stack([trajectories[1, 0:5], trajectories[1, 3:8]])
    zero = types.SimpleNamespace(rhs=lambda t, u: torch.zeros_like(u), closure=None)
    terms = loss(None, zero, Batch(windows, 0.1, starts), 0)
    later = loss.bounds[1][0]  # segment 1 starts at sample 2 of the window
    second = windows[:, later] + loss.corrections[1, starts[:, 1] + later]
    torch.testing.assert_close(terms["continuity"].value, (windows[:, 0] - second).pow(2).mean())


def test_the_coupled_error_of_linear_data_is_the_closed_form_of_lam_times_k():
    """F = 0, data a + b t, coupling lam K (u_data - u): the error xi = u - u_data obeys
    xi' = -b - lam K xi, so xi(t) = -(b / (lam K)) (1 - e^{-lam K t}); the loss is the mean of xi^2."""
    import types

    from hybridnde.training.homotopy import HomotopyLoss
    from hybridnde.training.terms import Batch

    coupling, a, b, dt, steps = 6.0, 1.0, 2.0, 0.1, 5
    loss = HomotopyLoss(steps=steps, schedule=HomotopySchedule(n_stages=3, epochs_per_stage=1), coupling=coupling,
                        rtol=1e-11, atol=1e-13)
    lam = loss.schedule(1)
    t = torch.arange(steps + 1, dtype=torch.float64) * dt
    windows = (a + b * t)[None, :, None]
    solver = types.SimpleNamespace(rhs=lambda s, u: torch.zeros_like(u), closure=torch.nn.Linear(1, 1))
    value = loss(None, solver, Batch(windows, dt, torch.zeros(1, 2, dtype=torch.long)), 1)["homotopy"].value
    xi = -(b / (lam * coupling)) * (1 - torch.exp(-lam * coupling * t[1:]))
    assert float(value) == pytest.approx(float(xi.pow(2).mean()), rel=1e-6)
