"""Restriction of periodic fields between grids (the sub-grid closure's target) against the
trigonometric polynomial evaluated directly on the coarse points."""
import numpy as np
import pytest
import torch

from hybridnde.grids import restrict_to_grid


def field(x: np.ndarray, length: float, modes: range, rng) -> tuple[np.ndarray, dict]:
    """A real field with random cosine and sine parts at ``modes`` (and a mean); returns it and them."""
    parts = {m: rng.standard_normal(2) for m in modes}
    u = sum(a * np.cos(2 * np.pi * m * x / length) + b * np.sin(2 * np.pi * m * x / length)
            for m, (a, b) in parts.items())
    return u, parts


@pytest.mark.parametrize("n_fine, n_coarse", [(96, 32), (128, 64), (64, 16), (15, 5), (45, 15), (27, 9), (9, 3)])
def test_restriction_keeps_exactly_the_modes_the_coarse_grid_resolves(n_fine, n_coarse):
    """Modes |m| < n_coarse / 2 survive unchanged, the rest go (an even coarse grid's Nyquist mode too;
    an odd one has none: its highest mode, (n_coarse - 1) / 2, was dropped before)."""
    rng = np.random.default_rng(n_fine + n_coarse)
    length = 22.0
    fine, coarse = np.arange(n_fine) * length / n_fine, np.arange(n_coarse) * length / n_coarse
    u, parts = field(fine[None, :].repeat(3, 0), length, range(0, n_fine // 2), rng)
    kept = {m: ab for m, ab in parts.items() if m < n_coarse / 2}
    expected = sum(a * np.cos(2 * np.pi * m * coarse / length) + b * np.sin(2 * np.pi * m * coarse / length)
                   for m, (a, b) in kept.items())
    np.testing.assert_allclose(restrict_to_grid(u, n_coarse), np.broadcast_to(expected, (3, n_coarse)), atol=1e-12)
    torch.testing.assert_close(restrict_to_grid(torch.from_numpy(u), n_coarse),
                               torch.from_numpy(np.broadcast_to(expected, (3, n_coarse)).copy()), rtol=0, atol=1e-12)
    single = restrict_to_grid(torch.from_numpy(u).float(), n_coarse)
    assert single.dtype == torch.float32
    assert np.abs(single.double().numpy() - expected).max() < 1e-5 * np.abs(u).max()


def test_a_resolved_field_restricts_to_its_samples_and_a_field_on_the_grid_is_kept():
    rng = np.random.default_rng(0)
    x = np.arange(15) * 1.0 / 15
    u, _ = field(x, 1.0, range(3), rng)  # modes 0..2 fit a 5-point grid
    np.testing.assert_allclose(restrict_to_grid(u, 5), u[::3], atol=1e-13)
    assert restrict_to_grid(u, 15) is u
    with pytest.raises(ValueError, match="cannot restrict 15 points to 4"):
        restrict_to_grid(u, 4)


@pytest.mark.parametrize("domain_length, n", [(22.0, 48), (32 * np.pi, 128), (100.0, 96)])
def test_a_float32_solvers_files_keep_its_domain_length(domain_length, n):
    """compute.dtype = "float32": x was the solver's float32 grid widened, N dx = L only to ~1e-7, and
    `train` and `rollout` refused the case's own truth file as another domain."""
    import torch

    from hybridnde.grids import other_domain_length
    from hybridnde.systems import state_coordinates
    from solvers import KuramotoSivashinskySpectral

    solver = KuramotoSivashinskySpectral(domain_length=domain_length, n_points=n, dt=0.05, dtype=torch.float32)
    dim, x = state_coordinates(solver)
    assert dim == "x" and x.dtype == np.float64
    np.testing.assert_allclose(x, np.arange(n) * (domain_length / n), rtol=0, atol=1e-12)
    assert other_domain_length(x, domain_length) is None
    assert other_domain_length(x.astype(np.float32), domain_length) is None  # another tool's float32 grid
    assert other_domain_length(x, domain_length * 1.001) == pytest.approx(domain_length)
