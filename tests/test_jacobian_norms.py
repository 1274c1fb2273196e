"""Jacobian norm and conditioning penalties against dense ``torch.func.jacrev`` Jacobians.

The penalties compute their products in forward mode (JVP) and reverse mode (VJP) through
``torch.func``; the reference here is an independent reverse-mode dense Jacobian per member.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from hybridnde.regularizers.jacobian_norms import (RNODE, ConditionNumber, FrobeniusNorm, KineticEnergy, SpectralNorm,
                                                   build_jacobian_penalty, dense_jacobian, hutchinson_variance,
                                                   jacobian_vector_product, vector_jacobian_product)


def _mlp(n: int, width: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, n)).to(device=device, dtype=dtype)


def _field(net):
    return lambda t, u: net(u) * (1.0 + 0.1 * t)  # time enters, so t must be passed through


def _reference_jacobian(net, t, u):
    return torch.func.vmap(torch.func.jacrev(lambda x: _field(net)(t, x[None])[0]))(u)


def _states(batch: int, n: int, dtype, device, seed: int = 1):
    return torch.randn(batch, n, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_products_and_dense_jacobian_match_jacrev(dtype, device, method):
    net = _mlp(4, 24, dtype, device)
    t = torch.tensor(0.3, dtype=dtype, device=device)
    u, v = _states(5, 4, dtype, device), _states(5, 4, dtype, device, seed=2)
    reference = _reference_jacobian(net, t, u)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(dense_jacobian(_field(net), t, u, method=method), reference, atol=tolerance,
                               rtol=tolerance)
    torch.testing.assert_close(jacobian_vector_product(_field(net), t, u, v, method=method)[1],
                               torch.einsum("bij,bj->bi", reference, v), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(vector_jacobian_product(_field(net), t, u, v)[1],
                               torch.einsum("bij,bi->bj", reference, v), atol=tolerance, rtol=tolerance)


def test_exact_frobenius_and_kinetic_match_their_definitions(dtype, device):
    net = _mlp(3, 16, dtype, device)
    t = torch.tensor(0.0, dtype=dtype, device=device)
    u = _states(7, 3, dtype, device)
    reference = _reference_jacobian(net, t, u)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(FrobeniusNorm(estimator="exact")(_field(net), t, u),
                               reference.pow(2).sum(dim=(1, 2)).mean(), rtol=rtol, atol=0)
    torch.testing.assert_close(KineticEnergy()(_field(net), t, u), net(u).pow(2).sum(-1).mean(), rtol=rtol, atol=0)
    assert FrobeniusNorm(probes=4).uses_exact(3) and not FrobeniusNorm(probes=4).uses_exact(5)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("product", ["jvp", "vjp"])
def test_hutchinson_is_within_its_variance_bound(distribution, product):
    """One estimate with 64 probes lies within 4 standard deviations of the exact value, and the
    spread of 200 independent estimates matches the analytic variance 2 ||J^T J||_F^2 / probes."""
    dtype, device = torch.float64, torch.device("cpu")
    net = _mlp(10, 32, dtype, device)
    t = torch.tensor(0.0, dtype=dtype)
    u = _states(3, 10, dtype, device)
    jacobian = _reference_jacobian(net, t, u)
    exact = jacobian.pow(2).sum(dim=(1, 2)).mean()
    generator = torch.Generator().manual_seed(7)
    probes = 64
    estimate = FrobeniusNorm(probes=probes, estimator="hutchinson", distribution=distribution, product=product,
                             generator=generator)(_field(net), t, u)
    std = hutchinson_variance(jacobian, probes=probes, distribution=distribution).sqrt()
    assert abs(estimate - exact) < 4 * std
    single = FrobeniusNorm(probes=1, estimator="hutchinson", distribution=distribution, product=product,
                           generator=generator)
    samples = torch.stack([single(_field(net), t, u).detach() for _ in range(200)])
    predicted = hutchinson_variance(jacobian, probes=1, distribution=distribution)
    assert abs(samples.mean() - exact) < 4 * (predicted / 200).sqrt()
    # sample variance of 200 draws: relative standard error ~ sqrt(2/199) ~ 0.1 (more for heavy tails)
    assert 0.6 < float(samples.var().detach() / predicted) < 1.6


def test_spectral_norm_power_iteration_matches_svd_and_warm_starts(dtype, device):
    net = _mlp(6, 32, dtype, device)
    t = torch.tensor(0.0, dtype=dtype, device=device)
    u = _states(4, 6, dtype, device)
    sigma = torch.linalg.svdvals(_reference_jacobian(net, t, u))[:, 0]
    rtol = 1e-8 if dtype == torch.float64 else 1e-4
    generator = torch.Generator().manual_seed(3)
    warm = SpectralNorm(iterations=1, initial_iterations=120, generator=generator)
    torch.testing.assert_close(warm.per_member(_field(net), t, u), sigma, rtol=rtol, atol=0)
    # a second call needs only one iteration from the stored vector; a cold single iteration is worse
    torch.testing.assert_close(warm.per_member(_field(net), t, u), sigma, rtol=rtol, atol=0)
    cold = SpectralNorm(iterations=1, initial_iterations=1, generator=torch.Generator().manual_seed(3))
    cold_error = (cold.per_member(_field(net), t, u) - sigma).abs().max()
    assert cold_error > 10 * (warm.per_member(_field(net), t, u) - sigma).abs().max()
    # separate keys keep separate vectors
    other = _states(4, 6, dtype, device, seed=9)
    warm(_field(net), t, other, key="other")
    assert set(warm.state._vectors) >= {"other"}
    exact = SpectralNorm(method="exact")
    torch.testing.assert_close(exact.per_member(_field(net), t, u), sigma, rtol=rtol, atol=0)


def test_without_a_key_another_batch_of_the_same_shape_starts_cold():
    """``key=None`` keys by shape: the stored vectors belong to the states they came from, so another
    batch of that shape must not start from them with the few warm iterations (it underestimated
    sigma_max by 25% on average, up to 43%); the same batch again still starts warm."""
    dtype, device = torch.float64, "cpu"
    net = _mlp(6, 32, dtype, device)
    t = torch.tensor(0.0, dtype=dtype, device=device)
    first, second = _states(4, 6, dtype, device), _states(4, 6, dtype, device, seed=9)
    sigma = torch.linalg.svdvals(_reference_jacobian(net, t, second))[:, 0]
    penalty = SpectralNorm(iterations=1, initial_iterations=120, generator=torch.Generator().manual_seed(3))
    penalty.per_member(_field(net), t, first)
    torch.testing.assert_close(penalty.per_member(_field(net), t, second), sigma, rtol=1e-8, atol=0)
    assert penalty.state.start(second, (4, 6), key=None, row_ids=None)[1], "the same states again: warm"
    assert not penalty.state.start(first, (4, 6), key=None, row_ids=None)[1]


def test_warm_starts_per_state_survive_shuffled_batches_and_stay_bounded():
    """Shuffled minibatches never repeat a batch, so vectors are kept per state (``row_ids``): a new
    mix of seen states starts warm, and the store holds one vector per distinct state however many
    batches were drawn (per batch, it grew by one block each call)."""
    dtype, device = torch.float64, torch.device("cpu")
    net = _mlp(6, 32, dtype, device)
    t = torch.tensor(0.0, dtype=dtype)
    u = _states(8, 6, dtype, device)
    sigma = torch.linalg.svdvals(_reference_jacobian(net, t, u))[:, 0]
    warm = SpectralNorm(iterations=1, initial_iterations=120, generator=torch.Generator().manual_seed(3))
    ids = torch.arange(8) * 7 + 100  # any integers naming the states
    for half in (slice(0, 4), slice(4, 8)):
        warm.per_member(_field(net), t, u[half], row_ids=ids[half])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        mix = torch.randperm(8, generator=generator)[:4]
        torch.testing.assert_close(warm.per_member(_field(net), t, u[mix], row_ids=ids[mix]), sigma[mix],
                                   rtol=1e-8, atol=0)  # one iteration from the stored vectors suffices
    assert len(warm.state) == 8
    cold = SpectralNorm(iterations=1, initial_iterations=1, generator=torch.Generator().manual_seed(3))
    assert (cold.per_member(_field(net), t, u[:4]) - sigma[:4]).abs().max() > 1e-6 * sigma.max()
    # a state seen twice in one batch (overlapping windows) is one state
    warm.per_member(_field(net), t, u[[0, 0, 1]], row_ids=ids[[0, 0, 1]])
    assert len(warm.state) == 8
    with pytest.raises(ValueError, match="one id per state"):
        warm.per_member(_field(net), t, u[:4], row_ids=ids[:3])
    # whole-batch keys stay bounded too, least recently used out
    keyed = ConditionNumber(method="lanczos", steps=3, generator=torch.Generator().manual_seed(1))
    for key in range(3 * keyed.state.max_keys):
        keyed.per_member(_field(net), t, u[:2], key=key)
    assert len(keyed.state) == keyed.state.max_keys
    # and the store round-trips through a checkpoint's state dict
    restored = SpectralNorm(iterations=1, initial_iterations=120, generator=torch.Generator().manual_seed(99))
    restored.load_state_dict(warm.state_dict())
    mix = torch.tensor([5, 2, 7])
    assert torch.equal(restored.per_member(_field(net), t, u[mix], row_ids=ids[mix]),
                       warm.per_member(_field(net), t, u[mix], row_ids=ids[mix]))


def test_condition_number_exact_and_lanczos_match_svd(dtype, device):
    net = _mlp(5, 32, dtype, device)
    t = torch.tensor(0.0, dtype=dtype, device=device)
    u = _states(4, 5, dtype, device)
    singular_values = torch.linalg.svdvals(_reference_jacobian(net, t, u))
    kappa = singular_values[:, 0] / singular_values[:, -1]
    rtol = 1e-8 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(ConditionNumber(method="exact").per_member(_field(net), t, u), kappa, rtol=rtol, atol=0)
    # Lanczos with as many steps as dimensions spans the whole space: exact up to round-off
    lanczos = ConditionNumber(method="lanczos", steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lanczos.per_member(_field(net), t, u), kappa, rtol=100 * rtol, atol=0)
    assert ConditionNumber(exact_max_dim=4).uses_exact(4) and not ConditionNumber(exact_max_dim=4).uses_exact(5)


@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_a_zero_jacobian_has_infinite_condition_number_and_finite_gradients(method):
    """A closure initialised to zero has J = 0: kappa is inf as for any singular matrix (numpy's
    ``cond``), not 0/0 = nan, and the gradient stays finite (it was nan)."""
    net = torch.nn.Linear(6, 6, dtype=torch.float64)
    with torch.no_grad():
        net.weight.zero_()
    u = _states(3, 6, torch.float64, "cpu")
    penalty = ConditionNumber(method=method, steps=6, generator=torch.Generator().manual_seed(0))
    value = penalty(lambda t, x: net(x), torch.tensor(0.0, dtype=torch.float64), u)
    assert math.isinf(float(value))
    value.backward()
    assert torch.isfinite(net.weight.grad).all()  # (the bias does not enter J: no gradient)
    # a regular Jacobian is unaffected: kappa of 2 I is 1
    with torch.no_grad():
        net.weight.copy_(2 * torch.eye(6, dtype=torch.float64))
    assert float(penalty(lambda t, x: net(x), torch.tensor(0.0, dtype=torch.float64), u)) == pytest.approx(1.0)


def test_truncated_lanczos_underestimates_kappa_and_converges_with_warm_starts():
    """With fewer steps than dimensions the Ritz values lie inside the spectrum (kappa is a lower
    bound); warm restarts from the last extreme Ritz vectors close the gap."""
    dtype = torch.float64
    net = _mlp(24, 64, dtype, torch.device("cpu"))
    t = torch.tensor(0.0, dtype=dtype)
    u = _states(3, 24, dtype, torch.device("cpu"))
    singular_values = torch.linalg.svdvals(_reference_jacobian(net, t, u))
    kappa = singular_values[:, 0] / singular_values[:, -1]
    lanczos = ConditionNumber(method="lanczos", steps=12, generator=torch.Generator().manual_seed(0))
    estimates = [lanczos.per_member(_field(net), t, u).detach() for _ in range(30)]
    assert bool((estimates[0] <= kappa * (1 + 1e-10)).all())
    assert bool((estimates[-1] <= kappa * (1 + 1e-10)).all())
    assert float((estimates[-1] / kappa).min()) > 0.98
    assert float((estimates[-1] / kappa).min()) > float((estimates[0] / kappa).min())


def _gradients(net, value):
    net.zero_grad()
    value.backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize("name", ["frobenius", "kinetic", "spectral", "condition", "condition_lanczos"])
def test_penalty_gradients_reach_the_parameters_and_match_the_dense_reference(name):
    dtype, device = torch.float64, torch.device("cpu")
    net = _mlp(4, 16, dtype, device)
    t = torch.tensor(0.2, dtype=dtype)
    u = _states(5, 4, dtype, device)

    def reference():
        jacobian = _reference_jacobian(net, t, u)
        singular_values = torch.linalg.svdvals(jacobian)
        return {"frobenius": jacobian.pow(2).sum(dim=(1, 2)).mean(),
                "kinetic": _field(net)(t, u).pow(2).sum(-1).mean(),
                "spectral": singular_values[:, 0].mean(),
                "condition": (singular_values[:, 0] / singular_values[:, -1]).mean()}[name.split("_")[0]]

    penalty = {"frobenius": FrobeniusNorm(probes=4), "kinetic": KineticEnergy(),
               "spectral": SpectralNorm(initial_iterations=300),
               "condition": ConditionNumber(method="exact"),
               "condition_lanczos": ConditionNumber(method="lanczos", steps=4)}[name]
    expected = _gradients(net, reference())
    actual = _gradients(net, penalty(_field(net), t, u))
    assert expected.abs().max() > 0
    weights = [p for p in net.parameters() if p.ndim == 2]
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in weights)
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-10 * float(expected.abs().max()))


def test_penalty_gradients_match_finite_differences():
    """An independent check of the autograd path: d(penalty)/d(one weight) by central differences."""
    dtype = torch.float64
    net = _mlp(3, 8, dtype, torch.device("cpu"))
    t = torch.tensor(0.0, dtype=dtype)
    u = _states(2, 3, dtype, torch.device("cpu"))
    weight = net[2].weight
    for penalty in (FrobeniusNorm(estimator="exact"), ConditionNumber(method="exact")):
        net.zero_grad()
        penalty(_field(net), t, u).backward()
        analytic = float(weight.grad[1, 2])
        step = 1e-6
        with torch.no_grad():
            weight[1, 2] += step
            up = float(penalty(_field(net), t, u))
            weight[1, 2] -= 2 * step
            down = float(penalty(_field(net), t, u))
            weight[1, 2] += step
        assert math.isclose(analytic, (up - down) / (2 * step), rel_tol=1e-6, abs_tol=1e-9)


def test_build_penalty_by_name_and_bad_names():
    assert build_jacobian_penalty("none") is None
    for name, kind in (("frobenius", FrobeniusNorm), ("kinetic", KineticEnergy), ("spectral", SpectralNorm),
                       ("condition", ConditionNumber), ("rnode", RNODE)):
        assert isinstance(build_jacobian_penalty(name), kind)
    # every penalty a case may name is built (the case's choices are kept apart from torch)
    from hybridnde.config.learning import TrainingConfig
    from hybridnde.regularizers.jacobian_norms import JACOBIAN_PENALTIES

    choices = next(f for f in dataclasses.fields(TrainingConfig) if f.name == "jacobian_penalty").metadata
    assert tuple(choices["choices"]) == JACOBIAN_PENALTIES


def test_rnode_is_the_exact_frobenius_norm_plus_the_kinetic_energy():
    """RNODE (Finlay et al. 2020; Josias & Brink's Frobenius setting): ||J||_F^2 + ||F||^2, its Jacobian
    term exact from n JVPs when n <= probes, checked against a dense jacrev Jacobian."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    u, t = torch.randn(5, 3, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    jacobian = torch.func.vmap(torch.func.jacrev(net))(u)
    expected = jacobian.pow(2).sum(dim=(1, 2)).mean() + net(u).pow(2).sum(-1).mean()
    torch.testing.assert_close(RNODE(probes=3)(lambda t, x: net(x), t, u), expected)
    with pytest.raises(ValueError, match="choose one of"):
        build_jacobian_penalty("nuclear")
    with pytest.raises(ValueError, match="probes"):
        FrobeniusNorm(probes=0)


def test_a_case_sets_the_iterations_of_the_iterative_penalties():
    """``training.jacobian_penalty_iterations``: power iterations (spectral) or Lanczos steps (condition);
    0 keeps their defaults; a 1-step Lanczos process is refused before any work, naming the field."""
    from hybridnde.config import ConfigError, parse_case
    from hybridnde.systems import build_host_solver
    from hybridnde.training.assembly import build_terms, check_training_config

    def penalty(name: str, iterations: int):
        case = parse_case({"system": {"name": "two_body"},
                           "training": {"jacobian_penalty": name, "jacobian_penalty_iterations": iterations}})
        check_training_config(case)
        terms = build_terms(case, build_host_solver(case), device=torch.device("cpu"), dtype=torch.float64)
        (term,) = [term for term in terms if hasattr(term, "penalty")]
        return term.penalty

    assert penalty("spectral", 0).iterations == 2 and penalty("spectral", 5).iterations == 5
    assert penalty("condition", 0).steps == 20 and penalty("condition", 40).steps == 40
    with pytest.raises(ConfigError, match="training.jacobian_penalty_iterations = 1"):
        penalty("condition", 1)


def test_the_penalty_acts_on_the_closure_in_a_residual_host_and_on_the_whole_field_elsewhere():
    """``training.jacobian_penalty_field``: ``auto`` penalises the closure's contribution where the host
    runs known physics (residual), the whole right-hand side otherwise. On the KS host the whole
    field's sigma_max is the known operator's (~6.9e3 at N = 64), the closure's ~0.25: penalising the
    former teaches the closure to cancel -u_xx - u_xxxx."""
    from pathlib import Path

    from hybridnde.config import ConfigError, load_case
    from hybridnde.models import build_model
    from hybridnde.systems import build_host_solver
    from hybridnde.training.assembly import build_terms, check_training_config, jacobian_penalty_field
    from hybridnde.training.terms import Batch

    cases = Path(__file__).resolve().parents[1] / "cases"
    torch.manual_seed(0)

    def term_value(penalty, field):
        case = load_case(cases / "ks_l22.toml", overrides=[f"training.jacobian_penalty='{penalty}'",
                                                          f"training.jacobian_penalty_field='{field}'"])
        check_training_config(case)
        model = build_model(case.model, state_shape=(case.system.n_points,))
        host = build_host_solver(case, closure=model)
        (term,) = [term for term in build_terms(case, host, device=torch.device("cpu"), dtype=torch.float64)
                   if hasattr(term, "penalty")]
        x = host.x
        windows = torch.stack([torch.cos(2 * math.pi * k * x / 22) for k in (1, 2, 3, 4)]).reshape(2, 2, -1)
        batch = Batch(windows=windows, sample_interval=1.0, starts=torch.tensor([[0, 0], [1, 0]]))
        (weighted,) = term(model, host, batch, epoch=10**6).values()
        states = windows.reshape(4, -1)
        closure, whole = model(0.0, states), host.rhs(0.0, states)
        return float(weighted.value), closure.pow(2).sum(-1).mean(), whole.pow(2).sum(-1).mean()

    ks = load_case(cases / "ks_l22.toml")
    assert ks.hybrid.setup == "residual" and jacobian_penalty_field(ks) == "closure"
    value, closure, whole = term_value("kinetic", "auto")
    assert value == pytest.approx(float(closure), rel=1e-12)
    value, closure, whole = term_value("kinetic", "rhs")
    assert value == pytest.approx(float(whole), rel=1e-12) and abs(whole - closure) > 0.1 * closure
    assert term_value("spectral", "auto")[0] < 1.0 < 1e3 < term_value("spectral", "rhs")[0]
    for setup, expected in (("neural_ode", "rhs"), ("second_order", "rhs")):
        other = load_case(cases / "two_body.toml", overrides=[f"hybrid.setup='{setup}'"])
        assert jacobian_penalty_field(other) == expected
    # a second-order closure gives only accelerations: its Jacobian has zero rows, no condition number
    second = load_case(cases / "two_body.toml", overrides=["hybrid.setup='second_order'",
                                                          "training.jacobian_penalty='condition'",
                                                          "training.jacobian_penalty_field='closure'"])
    with pytest.raises(ConfigError, match="jacobian_penalty_field = 'closure' in a second_order host"):
        check_training_config(second)


def test_fields_on_a_grid_are_flattened():
    """States (batch, *state) with more than one state axis: the Jacobian is over the flattened state."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(2, 2, 3, padding=1, padding_mode="circular").double()
    field = lambda t, u: torch.tanh(conv(u))  # noqa: E731, u: (batch, 2, 6)
    u = torch.randn(3, 2, 6, dtype=torch.float64)
    t = torch.tensor(0.0, dtype=torch.float64)
    reference = torch.func.vmap(torch.func.jacrev(lambda x: field(t, x[None])[0].reshape(-1)))(u).reshape(3, 12, 12)
    torch.testing.assert_close(FrobeniusNorm(estimator="exact")(field, t, u), reference.pow(2).sum(dim=(1, 2)).mean())
    torch.testing.assert_close(ConditionNumber(method="lanczos", steps=12)(field, t, u),
                               (torch.linalg.svdvals(reference)[:, 0] / torch.linalg.svdvals(reference)[:, -1]).mean(),
                               rtol=1e-6, atol=0)


def test_rademacher_hutchinson_is_exact_for_a_diagonal_jacobian():
    """For a diagonal Jacobian a Rademacher probe gives v^T J^T J v = ||J||_F^2 exactly: zero variance,
    so any bias (e.g. a p/(p - 1) factor) shows for every seed and probe count."""
    diagonal = torch.tensor([0.5, -2.0, 3.0, 1.5, -0.25], dtype=torch.float64)
    u = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for probes in (1, 2, 4):
        estimate = FrobeniusNorm(probes=probes, estimator="hutchinson", distribution="rademacher",
                                 generator=torch.Generator().manual_seed(probes))(lambda t, x: x * diagonal, 0.0, u)
        assert float(estimate) == pytest.approx(float(diagonal.pow(2).sum()), rel=1e-12)


def test_a_warm_started_call_costs_iterations_not_initial_iterations():
    """The point of warm starts is cost: a cold call runs initial_iterations (JVP, VJP) pairs, a warm
    one iterations pairs, plus the final JVP of per_member. Counted by calls of the vector field
    (each product evaluates it once)."""
    calls = []
    matrix = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def field(t, x):
        calls.append(1)
        return x @ matrix.T

    norm = SpectralNorm(iterations=2, initial_iterations=15, generator=torch.Generator().manual_seed(1))
    u = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    norm.per_member(field, 0.0, u, key="batch")
    cold = len(calls)
    calls.clear()
    norm.per_member(field, 0.0, u, key="batch")
    warm = len(calls)
    assert cold == 2 * 15 + 1 and warm == 2 * 2 + 1, (cold, warm)


def test_the_penalties_obey_their_exact_invariances():
    """kappa(c Q) = 1 for orthogonal Q; kappa(c F) = kappa(F); ||c J||_F^2 = c^2 ||J||_F^2 and
    sigma_max(c J) = |c| sigma_max(J) (same probes); a constant field has a zero Jacobian."""
    generator = torch.Generator().manual_seed(5)
    matrix = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    orthogonal, _ = torch.linalg.qr(matrix)
    u = torch.randn(6, 4, dtype=torch.float64, generator=generator)

    def linear(a):
        return lambda t, x: x @ a.T

    def nonlinear(scale):
        return lambda t, x: scale * torch.tanh(x @ matrix.T)

    kappa = ConditionNumber(method="exact")
    assert float(kappa(linear(3.0 * orthogonal), 0.0, u).detach()) == pytest.approx(1.0, rel=1e-12)
    assert float(kappa(nonlinear(-2.5), 0.0, u).detach()) == pytest.approx(float(kappa(nonlinear(1.0), 0.0, u).detach()), rel=1e-10)

    def frobenius(scale):
        return float(FrobeniusNorm(probes=3, generator=torch.Generator().manual_seed(1))(nonlinear(scale), 0.0, u).detach())

    assert frobenius(-3.0) == pytest.approx(9.0 * frobenius(1.0), rel=1e-12)
    spectral = SpectralNorm(method="exact")
    assert float(spectral(nonlinear(-3.0), 0.0, u).detach()) == pytest.approx(3.0 * float(spectral(nonlinear(1.0), 0.0, u).detach()),
                                                                    rel=1e-12)
    constant = torch.ones(4, dtype=torch.float64)
    assert float(FrobeniusNorm(probes=2)(lambda t, x: constant + 0.0 * x, 0.0, u).detach()) == 0.0
