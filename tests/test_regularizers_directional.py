"""Directional-derivative regularizers: Hutchinson against dense Jacobians, zero at the truth, the
finite-difference estimate's order in the sampling interval, gradients, probes and tangents."""
import functools
import types

import numpy as np
import pytest
import torch

from hybridnde.models import MLPClosure, PeriodicCNNClosure
from hybridnde.regularizers import (ProbeSampler, closure_jvp, directional_jacobian_penalty, draw_probes,
                                    finite_difference_directional_penalty, finite_difference_mismatch,
                                    sampling_error, supports_tangent)
from solvers import DoublePendulum, KuramotoSivashinskySpectral, RigidBody, SecondOrderHost, TwoBody

from conftest import fitted_order


def two_body_states(count=6, dtype=torch.float64):
    """States along a two-body orbit (e = 0.6), away from the origin."""
    u0 = torch.tensor([[0.4, 0.0, 0.0, (1.6 / 0.4) ** 0.5]], dtype=dtype)
    return TwoBody(dt=0.05, dtype=dtype).rollout(u0, count - 1)[0]


def mlp(state_dim=4, width=24, dtype=torch.float64, seed=0, activation="tanh"):
    torch.manual_seed(seed)
    return MLPClosure(state_dim=state_dim, width=width, depth=2, activation=activation).to(dtype)


def dense_frobenius_distance(model, truth, u):
    """mean over states of ||J_model(u) - J_F(u)||_F^2, both Jacobians dense (torch.func.jacrev)."""
    def model_at(x):
        return model(torch.zeros(()), x.unsqueeze(0))[0]

    def truth_at(x):
        return truth.known_rhs(torch.zeros(()), x.unsqueeze(0))[0]

    difference = torch.func.vmap(torch.func.jacrev(model_at))(u) - torch.func.vmap(torch.func.jacrev(truth_at))(u)
    return difference.pow(2).sum((1, 2)).mean()


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_hutchinson_estimate_matches_the_dense_frobenius_distance(distribution):
    truth, model = TwoBody(), mlp()
    u = two_body_states()
    with torch.no_grad():
        dense = float(dense_frobenius_distance(model, truth, u))
        sampler = ProbeSampler(count=8, distribution=distribution, seed=3)
        chunks = np.array([float(directional_jacobian_penalty(model, u, sampler(u), reference_jvp=truth.jvp))
                           for _ in range(300)])
    standard_error = chunks.std(ddof=1) / np.sqrt(len(chunks))
    assert abs(chunks.mean() - dense) < 4 * standard_error, (chunks.mean(), dense, standard_error)
    assert standard_error < 0.05 * dense  # the test is sharp: 2400 probes pin it to a few per cent


def test_normalised_rademacher_probes_estimate_frobenius_over_n():
    truth, model = RigidBody(), mlp(state_dim=3)
    u = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = float(dense_frobenius_distance(model, truth, u))
        # all 2^3 sign patterns: the Rademacher expectation exactly
        signs = torch.tensor(np.array(np.meshgrid(*[[-1.0, 1.0]] * 3)).reshape(3, -1).T, dtype=torch.float64)
        probes = (signs / np.sqrt(3.0))[:, None, :].expand(8, 5, 3)
        exact_mean = float(directional_jacobian_penalty(model, u, probes, reference_jvp=truth.jvp))
    assert exact_mean == pytest.approx(dense / 3, rel=1e-12)


def test_penalty_is_zero_for_a_closure_equal_to_the_missing_physics():
    """KS with the nonlinear term left to the closure: closure = true rhs - known rhs gives zero."""
    truth = KuramotoSivashinskySpectral(n_points=32, dt=0.2)
    host = KuramotoSivashinskySpectral(n_points=32, dt=0.2, nonlinear_coefficient=0.0)

    def exact_closure(t, u):
        return truth.known_rhs(t, u) - host.known_rhs(t, u)

    u = torch.randn(4, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    probes = draw_probes(u.shape, count=3, generator=torch.Generator().manual_seed(1))
    value = directional_jacobian_penalty(exact_closure, u, probes, reference_jvp=truth.jvp, known_jvp=host.jvp)
    scale = directional_jacobian_penalty(lambda t, x: 0.0 * x, u, probes, reference_jvp=truth.jvp,
                                         known_jvp=host.jvp)
    assert scale > 1.0 and float(value) < 1e-24 * float(scale)
    # and a neural ODE equal to the truth (no known physics)
    ode = TwoBody()
    u = two_body_states()
    value = directional_jacobian_penalty(ode.known_rhs, u, draw_probes(u.shape, count=4), reference_jvp=ode.jvp)
    assert float(value) < 1e-24
    # products or closures of the wrong shape broadcast into a finite, wrong penalty: refused, named
    probes = draw_probes(u.shape, count=2)
    for closure, reference, what in ((ode.known_rhs, lambda t, x, v: ode.jvp(t, x, v).sum(-1, keepdim=True),
                                      "reference_jvp"),
                                     (lambda t, x: x[:, :1], ode.jvp, "the closure's J v")):
        with pytest.raises(ValueError, match=f"{what} returned"):
            directional_jacobian_penalty(closure, u, probes, reference_jvp=reference)


def test_a_second_order_host_is_penalised_for_the_jacobian_its_dynamics_use():
    """``SecondOrderHost`` adds only the closure's accelerations: ``J_{F_theta} = J_known + P J_C``. The
    position block the host drops must not count (it did: 290.01 against 289.98 here, and scaling the
    dropped outputs moved it, while the dynamics stayed the same)."""
    from types import SimpleNamespace

    from hybridnde.training.terms import DirectionalDerivativeTerm

    truth, model = DoublePendulum(), mlp(state_dim=4, seed=2)
    u = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    host = SecondOrderHost(state_shape=(4,), dt=0.01, closure=model)
    with torch.no_grad():
        def host_at(x):
            return host.rhs(torch.zeros(()), x.unsqueeze(0))[0]

        def truth_at(x):
            return truth.known_rhs(torch.zeros(()), x.unsqueeze(0))[0]

        difference = torch.func.vmap(torch.func.jacrev(host_at))(u) - torch.func.vmap(torch.func.jacrev(truth_at))(u)
        dense = float(difference.pow(2).sum((1, 2)).mean())
        basis = torch.eye(4, dtype=torch.float64)[:, None, :].expand(4, 5, 4)  # E[v v^T] = I exactly, 4 probes
        projected = float(directional_jacobian_penalty(model, u, basis, reference_jvp=truth.jvp, known_jvp=host.jvp,
                                                       closure_contribution=host.closure_contribution))
        unprojected = float(directional_jacobian_penalty(model, u, basis, reference_jvp=truth.jvp,
                                                         known_jvp=host.jvp))
    # the mean over the 4 basis probes of ||M e_i||^2 is ||M||_F^2 / 4
    assert projected == pytest.approx(dense / 4, rel=1e-12) and unprojected > projected * (1 + 1e-6)
    # the training term hands the host's projection over
    term = DirectionalDerivativeTerm(weight=1.0, reference_jvp=truth.jvp, known_jvp=host.jvp,
                                     probes=ProbeSampler(count=2, seed=5))
    value = term(model, host, SimpleNamespace(windows=u[:, None]), epoch=0)["jvp"].value
    expected = directional_jacobian_penalty(model, u, ProbeSampler(count=2, seed=5)(u), reference_jvp=truth.jvp,
                                            known_jvp=host.jvp, closure_contribution=host.closure_contribution)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


@functools.lru_cache(maxsize=None)
def fine_orbit(fine_dt=5e-4):
    return TwoBody(dt=fine_dt).rollout(torch.tensor([[0.4, 0.0, 0.0, 2.0]], dtype=torch.float64), 1400)[0]


def sampled_orbit(step_multiple, fine_dt=5e-4, starts=(0.1, 0.2, 0.3, 0.35)):
    """Three consecutive two-body samples ``step_multiple * fine_dt`` apart, starting at fixed times."""
    fine = fine_orbit(fine_dt)
    first = [int(round(s / fine_dt)) for s in starts]
    return torch.stack([fine[[i, i + step_multiple, i + 2 * step_multiple]] for i in first])


def exact_directional_mismatch(rhs, truth, states, stencil):
    """What the stencil approximates: ``(J_model - J_F)(x) v`` at the stencil's centre ``x`` along its
    direction ``v``; returns ``(mismatch, v)``, both (batch, 4)."""
    x = states[:, 0] if stencil == "one_sided" else states[:, 1]
    v = states[:, 1] - states[:, 0] if stencil == "one_sided" else 0.5 * (states[:, 2] - states[:, 0])
    return torch.func.jvp(lambda y: rhs(torch.zeros(()), y), (x,), (v,))[1] - truth.jvp(0.0, x, v), v


@pytest.mark.parametrize("stencil, order", [("one_sided", 1), ("centred", 2)])
def test_finite_difference_estimate_converges_to_the_exact_one_at_the_stencil_order(stencil, order):
    truth, closure = TwoBody(), mlp(width=16, seed=2)

    def rhs(t, u):  # a model near the truth with a different Jacobian
        return truth.known_rhs(t, u) + torch.tanh(closure(t, u))

    multiples = [32, 16, 8, 4]
    vector_errors, penalty_errors, bounds = [], [], []
    with torch.no_grad():
        for multiple in multiples:
            states, dt = sampled_orbit(multiple), multiple * 5e-4
            fd_mismatch, direction = finite_difference_mismatch(rhs, states, dt, stencil=stencil)
            exact, _ = exact_directional_mismatch(rhs, truth, states, stencil)
            per_unit = direction.norm(dim=-1, keepdim=True)
            error = ((fd_mismatch - exact) / per_unit).norm(dim=-1)
            vector_errors.append(float(error.max()))
            exact_penalty = float(((exact / per_unit).pow(2).sum(-1)).mean())
            fd = float(finite_difference_directional_penalty(rhs, states, dt, stencil=stencil))
            penalty_errors.append(abs(fd - exact_penalty))
            exact_norm = (exact / per_unit).norm(dim=-1)
            bounds.append(float((2 * exact_norm * error + error**2).mean()) + 1e-12)
        # a model equal to the truth: L_FD is the squared truncation error, twice the order
        truth_values = [float(finite_difference_directional_penalty(truth.known_rhs, sampled_orbit(m), m * 5e-4,
                                                                      stencil=stencil)) for m in multiples]
    dts = [m * 5e-4 for m in multiples]
    # the mismatch per unit direction converges at the stencil's order ...
    assert fitted_order(dts, vector_errors) == pytest.approx(order, abs=0.25)
    # ... so the penalty converges to the exact one (within |a^2 - b^2| <= 2 |a| e + e^2) ...
    assert all(error <= bound * (1 + 1e-6) for error, bound in zip(penalty_errors, bounds))
    assert penalty_errors[-1] < 0.2 * penalty_errors[0]
    # ... and vanishes at twice the order for the true vector field
    assert fitted_order(dts, truth_values) == pytest.approx(2 * order, abs=0.4)


@pytest.mark.parametrize("stencil, order", [("one_sided", 1), ("centred", 2)])
def test_sampling_error_criterion_scales_with_the_sampling_interval(stencil, order):
    fine = TwoBody(dt=1e-3).rollout(torch.tensor([[0.4, 0.0, 0.0, 2.0]], dtype=torch.float64), 2000)
    multiples = [40, 20, 10, 5]
    values = [sampling_error(fine[:, ::m], stencil=stencil) for m in multiples]
    assert fitted_order(multiples, values) == pytest.approx(order, abs=0.3)
    assert values[-1] < 0.02  # dt = 0.005 resolves the orbit
    assert np.isnan(sampling_error(fine[:, :3], stencil=stencil))


def test_gradients_reach_every_parameter_and_match_finite_differences():
    truth = TwoBody()
    u = two_body_states()
    for regularizer in ("jvp", "fd"):
        model = mlp(width=12, seed=4)

        def penalty():
            if regularizer == "jvp":
                probes = draw_probes(u.shape, count=2, generator=torch.Generator().manual_seed(9))
                return directional_jacobian_penalty(model, u, probes, reference_jvp=truth.jvp)
            states = torch.stack([u[:-2], u[1:-1], u[2:]], dim=1)
            return finite_difference_directional_penalty(lambda t, x: model(t, x), states, 0.05)

        model.zero_grad()
        penalty().backward()
        output_bias = model.net[-1].bias  # a constant shift: no Jacobian depends on it
        assert output_bias.grad is None or not output_bias.grad.any()
        for name, parameter in model.named_parameters():
            if parameter is output_bias:
                continue
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().max() > 0, f"{regularizer}: no gradient reaches {name}"
        # one weight, central differences of the penalty
        weight = model.net[2].weight
        analytic = float(weight.grad[3, 5])
        with torch.no_grad():
            h = 1e-6
            weight[3, 5] += h
            up = float(penalty())
            weight[3, 5] -= 2 * h
            down = float(penalty())
            weight[3, 5] += h
        assert analytic == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu", "silu", "softplus", "elu"])
@pytest.mark.parametrize("kind", ["mlp", "periodic_cnn"])
def test_tangent_propagation_equals_torch_func_jvp(kind, activation, dtype):
    torch.manual_seed(0)
    if kind == "mlp":
        model, shape = MLPClosure(state_dim=4, width=20, activation=activation), (5, 4)
    else:
        model, shape = PeriodicCNNClosure(channels=6, depth=2, kernel_size=5, activation=activation), (5, 16)
    model = model.to(dtype)
    model.set_normalization(input_shift=torch.tensor(0.2), input_scale=torch.tensor(1.7),
                            output_shift=torch.tensor(-0.1), output_scale=torch.tensor(0.4))
    assert supports_tangent(model)
    u = torch.randn(shape, dtype=dtype)
    v = torch.randn(3, *shape, dtype=dtype)
    t = torch.zeros((), dtype=dtype)
    reference = torch.stack([torch.func.jvp(lambda x: model(t, x), (u,), (probe,))[1] for probe in v])
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for method in ("tangent", "vmap", "stacked"):
        torch.testing.assert_close(closure_jvp(model, t, u, v, method=method), reference, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("n", [3, 6, 9])  # the CNN's halo, 6, wider than the grid, equal to it, 2/3 of it
def test_tangent_propagation_wraps_small_grids_as_the_forward_does(n):
    torch.manual_seed(1)
    model = PeriodicCNNClosure(channels=4, depth=2, kernel_size=5).double()
    u, v, t = torch.randn(2, n, dtype=torch.float64), torch.randn(3, 2, n, dtype=torch.float64), torch.zeros(())
    reference = torch.stack([torch.func.jvp(lambda x: model(t, x), (u,), (probe,))[1] for probe in v])
    torch.testing.assert_close(closure_jvp(model, t, u, v, method="tangent"), reference, rtol=1e-12, atol=1e-12)


def test_tangent_propagation_in_member_blocks_equals_torch_func_jvp():
    torch.manual_seed(2)
    model = PeriodicCNNClosure(channels=4, depth=2, kernel_size=5).double()
    model.unfold_block_bytes = 20 * 1024  # a member: 20 rows x 30 points x 8 bytes; 3 probes: 1 a block
    u, v, t = torch.randn(7, 18, dtype=torch.float64), torch.randn(3, 7, 18, dtype=torch.float64), torch.zeros(())
    assert model.members_at_once(u, copies=3) == 1 and model.members_at_once(u) == 4  # 7 in blocks of 4 and 3
    reference = torch.stack([torch.func.jvp(lambda x: model(t, x), (u,), (probe,))[1] for probe in v])
    torch.testing.assert_close(closure_jvp(model, t, u, v, method="tangent"), reference, rtol=1e-12, atol=1e-12)
    assert closure_jvp(model, t, u, v[:0], method="tangent").shape == (0, 7, 18)  # no probes
    assert closure_jvp(model, t, u[:0], v[:, :0], method="tangent").shape == (3, 0, 18)  # no members


@pytest.mark.parametrize("changed", [dict(padding=2), dict(padding=2, padding_mode="circular"), dict(dilation=2)])
def test_a_cnn_whose_convolution_is_not_the_shipped_one_gets_the_exact_jvp(changed):
    """The layers' tangent assumes unpadded, undilated convolutions after one wrap of the input: a
    padded or dilated layer swapped in must not take it (it would silently follow other geometry)."""
    torch.manual_seed(0)
    model = PeriodicCNNClosure(channels=4, depth=1, kernel_size=5).double()
    model.net[0] = torch.nn.Conv1d(1, 4, 5, **changed).double()
    assert not supports_tangent(model)
    u, v, t = torch.randn(2, 24, dtype=torch.float64), torch.randn(2, 2, 24, dtype=torch.float64), torch.zeros(())
    with pytest.raises(TypeError, match="method='vmap'"):
        closure_jvp(model, t, u, v, method="tangent")


def test_a_subclass_with_its_own_forward_gets_the_exact_jvp_not_the_layers_tangent():
    """The tangent rule follows the layers only: for a subclass adding a term it missed exactly that
    term (max |u v|), and "auto" took it."""
    class WithSquare(MLPClosure):
        def forward(self, t, u):
            return super().forward(t, u) + 0.5 * u**2

    torch.manual_seed(0)
    model = WithSquare(state_dim=4, width=20).double()
    u, v, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64), torch.zeros(())
    assert not supports_tangent(model)
    reference = torch.stack([torch.func.jvp(lambda x: model(t, x), (u,), (probe,))[1] for probe in v])
    torch.testing.assert_close(closure_jvp(model, t, u, v), reference, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="method='vmap'"):
        closure_jvp(model, t, u, v, method="tangent")
    # a forward hook that changes the output: the same, for the base class
    plain = MLPClosure(state_dim=4, width=20).double()
    plain.register_forward_hook(lambda module, inputs, output: output + 0.5 * inputs[1] ** 2)
    assert not supports_tangent(plain)
    reference = torch.stack([torch.func.jvp(lambda x: plain(t, x), (u,), (probe,))[1] for probe in v])
    torch.testing.assert_close(closure_jvp(plain, t, u, v), reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", [torch.nn.Softplus(beta=2.0, threshold=3.0), torch.nn.ELU(alpha=0.5)])
def test_the_tangent_of_a_parametrised_activation_is_exact(layer):
    torch.manual_seed(0)
    model = MLPClosure(state_dim=4, width=16, activation="tanh").double()
    model.net[1] = layer  # a hand-built activation with non-default parameters
    assert supports_tangent(model)
    u, v, t = 2 * torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 6, 4, dtype=torch.float64), torch.zeros(())
    reference = torch.stack([torch.func.jvp(lambda x: model(t, x), (u,), (p,))[1] for p in v])
    torch.testing.assert_close(closure_jvp(model, t, u, v, method="tangent"), reference, rtol=1e-12, atol=1e-12)


def test_a_forward_pre_hook_keeps_the_closure_off_the_layers_tangent():
    torch.manual_seed(0)
    model = MLPClosure(state_dim=4, width=16).double()
    model.register_forward_pre_hook(lambda module, args: (args[0], args[1] ** 2))
    assert not supports_tangent(model)
    u, v, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(2, 5, 4, dtype=torch.float64), torch.zeros(())
    reference = torch.stack([torch.func.jvp(lambda x: model(t, x), (u,), (p,))[1] for p in v])
    torch.testing.assert_close(closure_jvp(model, t, u, v), reference, rtol=1e-12, atol=1e-12)


def test_a_probe_sampler_checks_the_device_of_the_states():
    sampler = ProbeSampler(count=2, device="cpu:0")  # a CPU with an index takes CPU tensors (index None)
    assert sampler(torch.zeros(3, 4)).shape == (2, 3, 4)
    on_gpu_one = ProbeSampler.__new__(ProbeSampler)  # a sampler for cuda:1 (needs no GPU to be refused)
    on_gpu_one.device = torch.device("cuda", 1)
    with pytest.raises(ValueError, match="draws on cuda:1 but u is on cpu"):
        on_gpu_one(torch.zeros(3, 4))
    states_on_gpu_zero = types.SimpleNamespace(device=torch.device("cuda", 0))  # refused before any use
    with pytest.raises(ValueError, match="draws on cuda:1 but u is on cuda:0"):
        on_gpu_one(states_on_gpu_zero)


def test_probes_are_seeded_and_have_the_advertised_law(device):
    shape = (2000, 8)
    a = ProbeSampler(count=3, distribution="rademacher", seed=5, device=device)(torch.zeros(shape, device=device))
    b = ProbeSampler(count=3, distribution="rademacher", seed=5, device=device)(torch.zeros(shape, device=device))
    assert a.shape == (3, *shape) and a.device.type == device.type
    assert torch.equal(a, b) and set(a.unique().tolist()) == {-1.0, 1.0}
    gaussian = draw_probes(shape, count=2, dtype=torch.float32, device=device,
                           generator=torch.Generator(device=device).manual_seed(0))
    assert gaussian.dtype == torch.float32
    assert abs(float(gaussian.mean())) < 0.02 and abs(float(gaussian.std()) - 1) < 0.02
    unit = draw_probes(shape, count=2, normalize=True, distribution="gaussian")
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2, shape[0], dtype=torch.float64))
    sampler = ProbeSampler(count=1, seed=1)
    state = sampler.state_dict()
    first = sampler(torch.zeros(3, 2))
    sampler.load_state_dict(state)
    assert torch.equal(sampler(torch.zeros(3, 2)), first)
    with pytest.raises(ValueError, match="distribution"):
        draw_probes(shape, count=1, distribution="uniform")


def test_probe_sampler_on_another_device_than_the_state_names_the_fix():
    with pytest.raises(ValueError, match=r"ProbeSampler\(\.\.\., device=u\.device\)"):
        ProbeSampler(count=1, seed=0)(torch.zeros(2, 3, device="meta"))


# -- closed forms (a mutation audit found these slips unseen) ----------------------------------------------------------
def test_the_sampling_error_of_an_exponential_is_its_closed_form():
    """x = e^{lam t}: the one-sided estimate's relative truncation error is e^{lam h} - 1, the centred
    one's (e^{lam h} - 1)^2, exactly (D2 and D3 taken on consecutive samples)."""
    lam, h = 0.7, 0.05
    t = torch.arange(40, dtype=torch.float64) * h
    trajectories = torch.exp(lam * t)[None, :, None] * torch.tensor([1.0, -2.0], dtype=torch.float64)
    q = np.expm1(lam * h)
    assert sampling_error(trajectories, stencil="one_sided") == pytest.approx(q, rel=1e-9)
    assert sampling_error(trajectories, stencil="centred") == pytest.approx(q * q, rel=1e-9)


def test_the_centred_direction_is_half_the_two_step_difference():
    """The centred stencil's direction is (x2 - x0) / 2, checked against the states themselves (the
    convergence test builds its reference from the direction the function returns)."""
    generator = torch.Generator().manual_seed(4)
    states = torch.randn(3, 3, 4, dtype=torch.float64, generator=generator)
    matrix = torch.randn(4, 4, dtype=torch.float64, generator=generator)
    _, direction = finite_difference_mismatch(lambda t, u: u @ matrix.T, states, 0.1, stencil="centred")
    torch.testing.assert_close(direction, 0.5 * (states[:, 2] - states[:, 0]))


def test_draw_probes_normalises_rademacher_probes_to_entries_of_one_over_root_n():
    """The Frobenius-over-n test above builds its normalised probes by hand; this is draw_probes' own."""
    probes = draw_probes((5, 3), count=8, distribution="rademacher", normalize=True,
                         generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(probes.abs(), torch.full_like(probes, 3 ** -0.5))
    gaussian = draw_probes((5, 3), count=8, normalize=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gaussian.pow(2).sum(-1), torch.ones(8, 5, dtype=torch.float64))


def test_a_probe_stream_saved_on_another_kind_of_device_goes_on_from_a_seed(caplog):
    """A CPU generator's state is 5056 bytes, a GPU's 16: a training checkpoint resumed on the other kind
    stopped in set_state. Now the stream continues from a seed taken from the saved state (the same at
    every such resume), with a warning; on the same kind it continues exactly."""
    u = torch.zeros(3, 4, dtype=torch.float64)
    sampler = ProbeSampler(count=2, seed=7)
    sampler(u)
    state = {key: value.clone() if isinstance(value, torch.Tensor) else value
             for key, value in sampler.state_dict().items()}
    assert state["device_type"] == "cpu"
    expected = sampler(u)
    same = ProbeSampler(count=2, seed=0)
    same.load_state_dict(state)
    assert torch.equal(same(u), expected) and not caplog.records
    from_gpu = {"generator": torch.arange(16, dtype=torch.uint8), "device_type": "cuda"}
    draws = []
    for _ in range(2):
        resumed = ProbeSampler(count=2, seed=0)
        resumed.load_state_dict(from_gpu)
        draws.append(resumed(u))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], ProbeSampler(count=2, seed=0)(u))
    assert "saved on cuda and goes on on cpu" in caplog.text
    older = ProbeSampler(count=2, seed=0)  # a checkpoint that did not record the device: its size tells
    older.load_state_dict({"generator": torch.arange(16, dtype=torch.uint8)})
    assert torch.equal(older(u), draws[0])


def test_each_foreign_state_seeds_its_own_stream():
    from hybridnde.regularizers.probes import ProbeSampler

    u = torch.zeros(3, 4, dtype=torch.float64)
    draws = []
    for offset in (0, 1):
        sampler = ProbeSampler(count=2, seed=0)
        sampler.load_state_dict({"generator": torch.arange(16, dtype=torch.uint8) + offset, "device_type": "cuda"})
        draws.append(sampler(u))
    assert not torch.equal(draws[0], draws[1])


def test_an_older_state_of_this_device_goes_on_exactly():
    from hybridnde.regularizers.probes import ProbeSampler

    u = torch.zeros(3, 4, dtype=torch.float64)
    sampler = ProbeSampler(count=2, seed=7)
    sampler(u)
    saved = sampler.generator.get_state().clone()
    expected = sampler(u)
    older = ProbeSampler(count=2, seed=0)
    older.load_state_dict({"generator": saved})  # no device_type: written before it was recorded
    assert torch.equal(older(u), expected)
