"""The Jacobian penalty as a training term (hybridnde.training.jacobian_terms): its weight's warm-up,
the field it acts on for a second-order host, the sample ids its warm starts are keyed by, and the
parameter gradients of the vector-Jacobian products it may use; RNODE given a case's probe count, and
Hutchinson's estimate as the mean of its own probes' products."""
import pytest
import torch

from hybridnde.models import MLPClosure


def test_sample_ids_are_equal_exactly_for_the_same_member_row_and_time():
    from hybridnde.training.jacobian_terms import sample_ids

    starts = torch.tensor([[0, 1], [1, 0], [0, 0], [2, 5]])
    length = 3
    ids = sample_ids(starts, length).tolist()
    samples = [(row, start + k) for row, start in starts.tolist() for k in range(length)]
    assert len(ids) == len(samples)
    for a in range(len(ids)):
        for b in range(len(ids)):
            assert (ids[a] == ids[b]) == (samples[a] == samples[b]), (samples[a], samples[b])


def test_vector_jacobian_products_carry_parameter_gradients():
    """FrobeniusNorm(product="vjp") trains through vector_jacobian_product: its J^T w must stay on the graph."""
    from hybridnde.regularizers.jacobian_products import vector_jacobian_product

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    field = lambda t, x: net(x)  # noqa: E731
    g = torch.Generator().manual_seed(1)
    u, w = torch.randn(5, 4, dtype=torch.float64, generator=g), torch.randn(5, 4, dtype=torch.float64, generator=g)

    def gradients(value):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, list(net.parameters()), allow_unused=True,
                                                                        materialize_grads=True)])

    dense = torch.func.vmap(torch.func.jacrev(lambda x: net(x[None])[0]))(u)
    expected = gradients(torch.einsum("bij,bi->bj", dense, w).pow(2).sum())
    actual = gradients(vector_jacobian_product(field, 0.0, u, w)[1].pow(2).sum())
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def _second_order_term_value(field, weight=1.0, warmup_epochs=0, epoch=0):
    from hybridnde.regularizers.jacobian_norms import KineticEnergy
    from hybridnde.training.jacobian_terms import JacobianPenaltyTerm
    from hybridnde.training.terms import Batch
    from solvers import SecondOrderHost

    torch.manual_seed(3)
    model = MLPClosure(state_dim=4, width=12).double()
    host = SecondOrderHost(state_shape=(4,), dt=0.01, closure=model)
    windows = torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    batch = Batch(windows=windows, sample_interval=0.01, starts=torch.tensor([[0, 0], [1, 4]]))
    term = JacobianPenaltyTerm(KineticEnergy(), weight=weight, warmup_epochs=warmup_epochs, field=field)
    (weighted,) = term(model, host, batch, epoch=epoch).values()
    return weighted, model, host, windows.reshape(6, 4)


def test_the_closure_field_of_a_second_order_host_is_its_projected_contribution():
    """field='closure' is P C_theta: a second-order host drops the closure's position block, so must the penalty
    (the config allows 'closure' with frobenius/spectral/kinetic on second_order hosts)."""
    weighted, model, host, states = _second_order_term_value("closure")
    with torch.no_grad():
        closure = model(torch.zeros(()), states)
    projected = host.closure_contribution(closure).pow(2).sum(-1).mean()
    assert float(weighted.value.detach()) == pytest.approx(float(projected), rel=1e-12)
    assert float(closure.pow(2).sum(-1).mean()) > 1.01 * float(projected)  # the test can tell them apart


def test_a_jacobian_penalty_term_ramps_its_weight_over_the_warmup():
    for epoch, expected in ((0, 0.5), (1, 1.0), (3, 2.0), (10, 2.0)):
        weighted, *_ = _second_order_term_value("rhs", weight=2.0, warmup_epochs=4, epoch=epoch)
        assert weighted.weight == pytest.approx(expected, rel=1e-15), epoch


def _net(n, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n, 16), torch.nn.Tanh(), torch.nn.Linear(16, n)).double()


def _dense(net, u):
    return torch.func.vmap(torch.func.jacrev(lambda x: net(x[None])[0]))(u)


def test_a_case_rnode_penalty_uses_the_cases_probe_count():
    """training.probes reaches RNODE's Frobenius term: with probes >= n the term is exact, so the
    penalty equals the dense ||J||_F^2 + ||F||^2."""
    from hybridnde.regularizers.jacobian_norms import build_jacobian_penalty

    net = _net(3)
    u = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    field = lambda t, x: net(x)
    penalty = build_jacobian_penalty("rnode", probes=5, generator=torch.Generator().manual_seed(2))
    expected = _dense(net, u).pow(2).sum(dim=(1, 2)).mean() + net(u).pow(2).sum(-1).mean()
    torch.testing.assert_close(penalty(field, 0.0, u), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("product", ["jvp", "vjp"])
def test_hutchinson_estimate_is_the_mean_of_its_own_probes_products(product):
    """With the probe draws replayed from the same seed, the estimate is exactly
    mean_r ||J v_r||^2 (jvp) or mean_r ||v_r^T J||^2 (vjp), probe r belonging to member r % batch."""
    from hybridnde.regularizers.jacobian_norms import FrobeniusNorm

    net = _net(5)
    batch, probes = 3, 4
    u = torch.randn(batch, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    estimate = FrobeniusNorm(probes=probes, estimator="hutchinson", product=product,
                             generator=torch.Generator().manual_seed(9))(lambda t, x: net(x), 0.0, u)
    v = torch.randn((probes * batch, 5), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    jacobian = _dense(net, u)
    rows = []
    for r in range(probes * batch):
        matrix = jacobian[r % batch]
        rows.append((matrix @ v[r] if product == "jvp" else v[r] @ matrix).pow(2).sum())
    torch.testing.assert_close(estimate, torch.stack(rows).mean(), rtol=1e-12, atol=0)
