"""The directional regularizers and their probes, each against its definition written out (NOTES.md:
Janvier et al.'s L_FD and sampling criterion; the probes' seed, law and normalisation)."""
import pytest
import torch

from hybridnde.regularizers import (ProbeSampler, draw_probes, finite_difference_directional_penalty,
                                    finite_difference_mismatch, sampling_error)


def _field(matrix):
    return lambda t, u: torch.tanh(u @ matrix.T) + 0.3 * u ** 2


def test_the_one_sided_fd_penalty_is_the_papers_formula():
    """NOTES.md: L_FD = mean_t ||(F(x1) - F(x0)) - (x2 - 2 x1 + x0)/dt||^2 / (||x1 - x0||^2 + 1e-8), written out
    from the states; one member has a zero step (then the floor 1e-8 alone divides), the others unequal steps."""
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(4, 4, dtype=torch.float64, generator=g)
    x0 = torch.randn(5, 4, dtype=torch.float64, generator=g)
    x1 = x0 + 1e-2 * torch.randn(5, 4, dtype=torch.float64, generator=g) * torch.arange(5.0, dtype=torch.float64)[:, None]
    x2 = x1 + 3e-2 * torch.randn(5, 4, dtype=torch.float64, generator=g)   # |x2 - x1| != |x1 - x0|
    states, dt, F = torch.stack([x0, x1, x2], 1), 0.05, _field(matrix)
    t = torch.zeros((), dtype=torch.float64)
    mismatch = (F(t, x1) - F(t, x0)) - (x2 - 2 * x1 + x0) / dt
    got_mismatch, got_direction = finite_difference_mismatch(F, states, dt)
    torch.testing.assert_close(got_direction, x1 - x0, rtol=0, atol=0)
    torch.testing.assert_close(got_mismatch, mismatch, rtol=1e-13, atol=1e-13)
    expected = (mismatch.pow(2).sum(-1) / ((x1 - x0).pow(2).sum(-1) + 1e-8)).mean()
    assert float(finite_difference_directional_penalty(F, states, dt)) == pytest.approx(float(expected), rel=1e-12)
    # member 0 has x1 == x0: its term is ||mismatch||^2 / 1e-8 exactly
    assert float((x1 - x0)[0].abs().max()) == 0.0
    assert float(finite_difference_directional_penalty(F, states[:1], dt)) == pytest.approx(
        float(mismatch[0].pow(2).sum() / 1e-8), rel=1e-12)


def test_the_sampling_error_is_the_median_of_aligned_difference_ratios():
    """x = t^3 (h = 1): D3 = 6 everywhere, D2_t = 6 (t + 1); the one-sided ratios D3_t / D2_t over t = 0..2 are
    1, 1/2, 1/3 (median 1/2, mean 0.61; shifted by one sample 1/2, 1/3, 1/4)."""
    x = torch.arange(6, dtype=torch.float64).pow(3)[None, :, None]
    assert sampling_error(x, stencil="one_sided") == pytest.approx(0.5, rel=1e-12)
    # fourth differences of a cubic vanish: the centred stencil's truncation error estimate is 0
    assert sampling_error(x, stencil="centred") == 0.0


def test_a_probe_sampler_honours_its_seed_and_normalisation():
    u = torch.zeros(4, 3, dtype=torch.float64)
    one, two = ProbeSampler(count=2, seed=1)(u), ProbeSampler(count=2, seed=2)(u)
    assert not torch.equal(one, two)
    torch.testing.assert_close(one, draw_probes(u.shape, count=2, generator=torch.Generator().manual_seed(1)),
                               rtol=0, atol=0)
    unit = ProbeSampler(count=2, seed=1, normalize=True)(u)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(unit, one / one.norm(dim=-1, keepdim=True))


def test_draw_probes_normalises_over_every_state_axis():
    probes = draw_probes((3, 2, 5), count=4, normalize=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(probes.pow(2).sum((-2, -1)), torch.ones(4, 3, dtype=torch.float64))
