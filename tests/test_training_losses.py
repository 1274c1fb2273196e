"""The training losses against their definitions (hybridnde.training.terms, multiple_shooting, homotopy):
the short-rollout error as a mean over every entry (odeint windows of a forced host: test_training.py),
multiple shooting in time units, per entry, weighed and at each segment's own times, and the weights
and warm-ups the terms are given. Closed forms and explicit loops as references (helper-102's audit)."""
from __future__ import annotations

import types

import pytest
import torch

from hybridnde.training.multiple_shooting import MultipleShooting, MultipleShootingLoss
from hybridnde.training.terms import Batch, RolloutLoss, rollout_mse
from solvers import ClosureOnly
from solvers.integrators import odeint_adaptive


def _exact_constant_rate(field, u0, t):
    """du/dt = field(t, u) integrated adaptively at tight tolerances (the fields used here have
    closed-form solutions, so the data are exact)."""
    return odeint_adaptive(field, u0, t, rtol=1e-11, atol=1e-13)[0]


def test_rollout_mse_is_the_mean_over_batch_steps_and_every_state_entry():
    """docstring: mean over batch, steps and state, the shared initial state left out."""
    generator = torch.Generator().manual_seed(0)
    windows = torch.randn(3, 6, 4, dtype=torch.float64, generator=generator)
    prediction = torch.randn(3, 4, 4, dtype=torch.float64, generator=generator)  # 3 steps of a 5-step window
    total, count = 0.0, 0
    for b in range(3):
        for s in range(1, 4):
            for i in range(4):
                total += float(prediction[b, s, i] - windows[b, s, i]) ** 2
                count += 1
    assert float(rollout_mse(prediction, windows)) == pytest.approx(total / count, rel=1e-12)


def test_the_trajectory_losses_keep_the_weight_they_are_given():
    from hybridnde.training.homotopy import HomotopyLoss, HomotopySchedule

    windows = torch.zeros(1, 3, 2, dtype=torch.float64)
    batch = Batch(windows, 0.1, torch.zeros(1, 2, dtype=torch.long))
    zero = ClosureOnly(state_shape=(2,), dt=0.1, closure=lambda t, u: torch.zeros_like(u))
    assert RolloutLoss(steps=2, weight=0.3)(None, zero, batch, 0)["rollout"].weight == 0.3
    homotopy = HomotopyLoss(steps=2, schedule=HomotopySchedule(n_stages=2, epochs_per_stage=1), coupling=6.0,
                            weight=0.3)
    assert homotopy(None, zero, batch, 0)["homotopy"].weight == 0.3


def test_non_autonomous_segments_start_at_their_own_times():
    """du/dt = cos(t): u(t) = sin(t) is exact; every segment must be integrated from t_{s_k}."""
    times = torch.linspace(0.5, 3.5, 13, dtype=torch.float64)
    observations = torch.sin(times)[None, :, None]
    field = lambda t, u: torch.cos(t) * torch.ones_like(u)
    shooting = MultipleShooting(observations, times, n_segments=3, autonomous=False)
    _, data_loss, continuity = shooting(field, _exact_constant_rate)
    assert float(data_loss.detach()) < 1e-18 and float(continuity.detach()) < 1e-18


def test_unequally_spaced_samples_are_integrated_at_their_own_times():
    """du/dt = 1 (autonomous): u(t) = t exact at any spacing; unequal spacing must not take the batched
    path, which assumes every segment has the first segment's relative times."""
    times = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.9, 1.0, 1.6], dtype=torch.float64)
    observations = times[None, :, None].clone()
    shooting = MultipleShooting(observations, times, n_segments=3, autonomous=True)
    assert not shooting.batched
    _, data_loss, continuity = shooting(lambda t, u: torch.ones_like(u), _exact_constant_rate)
    assert float(data_loss.detach()) < 1e-18 and float(continuity.detach()) < 1e-18


def test_shooting_loss_integrates_in_time_units_of_the_sampling():
    """du/dt = c with data u = a + c t sampled 0.25 apart: the multiple-shooting term is ~0 only if the
    segment times are sample_interval apart."""
    c, dt = 1.7, 0.25
    t = torch.arange(12, dtype=torch.float64) * dt
    trajectories = (0.3 + c * t)[None, :, None]
    loss = MultipleShootingLoss(steps=6, n_segments=3, continuity_weight=1.0, trajectory_shape=(1, 12, 1),
                                rtol=1e-11, atol=1e-13)
    solver = types.SimpleNamespace(rhs=lambda s, u: c * torch.ones_like(u), closure=None)
    starts = torch.tensor([[0, 0], [0, 4]])
    windows = torch.stack([trajectories[0, 0:7], trajectories[0, 4:11]])
    terms = loss(None, solver, Batch(windows, dt, starts), 0)
    assert float(terms["multiple_shooting"].value.detach()) < 1e-18 and float(terms["continuity"].value.detach()) < 1e-18


def test_the_directional_regularizer_ramps_its_weight_over_the_warmup():
    """docs: epoch 0 gets weight / warmup, the full weight from epoch warmup - 1 on (as the Jacobian
    penalty term does)."""
    from hybridnde.models import MLPClosure
    from hybridnde.regularizers import ProbeSampler
    from hybridnde.training.terms import DirectionalDerivativeTerm

    torch.manual_seed(0)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    term = DirectionalDerivativeTerm(weight=2.0, reference_jvp=lambda t, u, v: v, known_jvp=None,
                                     probes=ProbeSampler(count=2), warmup_epochs=4)
    batch = Batch(torch.randn(3, 3, 2, dtype=torch.float64), 0.1, torch.zeros(3, 2, dtype=torch.long))
    assert [term(model, solver, batch, epoch)["jvp"].weight for epoch in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
