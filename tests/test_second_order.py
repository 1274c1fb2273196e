"""The second-order host: the solver knows dq/dt = v; the closure supplies only the accelerations."""
from __future__ import annotations

import pytest
import torch

from hybridnde.config import ConfigError, parse_case
from hybridnde.systems import build_host_solver
from solvers import DoublePendulum, SecondOrderHost


class TrueAccelerations(torch.nn.Module):
    """The double pendulum's exact right-hand side, position block replaced by junk the host must drop."""

    def __init__(self):
        super().__init__()
        self.truth = DoublePendulum(dt=0.01)

    def forward(self, t, u):
        du_dt = self.truth.known_rhs(t, u)
        return torch.cat([torch.full_like(du_dt[:, :2], 1e3), du_dt[:, 2:]], dim=-1)


def test_second_order_host_with_the_true_accelerations_reproduces_the_system():
    truth = DoublePendulum(dt=0.01)
    host = SecondOrderHost(state_shape=(4,), dt=0.01, closure=TrueAccelerations(),
                           component_names=truth.component_names)
    u0 = torch.tensor([[1.2, -0.4, 0.3, 0.8], [0.1, 0.2, -1.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(host.rhs(0.0, u0), truth.rhs(0.0, u0))
    torch.testing.assert_close(host.rollout(u0, 100), truth.rollout(u0, 100))
    bare = SecondOrderHost(state_shape=(4,), dt=0.01)
    torch.testing.assert_close(bare.rhs(0.0, u0), torch.cat([u0[:, 2:], torch.zeros_like(u0[:, 2:])], -1))
    v = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(bare.jvp(0.0, u0, v), torch.func.jvp(lambda x: bare.known_rhs(0.0, x), (u0,), (v,))[1])


def test_second_order_setup_builds_from_a_case_and_needs_positions_then_velocities():
    """Lotka-Volterra's even state (prey, predator) was accepted: the host then imposed d(prey)/dt =
    predator, which no closure can correct. Only systems laid out as positions then velocities pass."""
    case = parse_case({"system": {"name": "double_pendulum"}, "hybrid": {"setup": "second_order"},
                       "initial_condition": {"distribution": "point", "value": [1.0, 1.0, 0.0, 0.0]}})
    assert isinstance(build_host_solver(case), SecondOrderHost)
    assert isinstance(build_host_solver(parse_case({"system": {"name": "two_body"}, "hybrid": {"setup": "second_order"}})),
                      SecondOrderHost)
    for name, size in (("rigid_body", 3), ("lotka_volterra", 2), ("lorenz63", 3), ("kuramoto_sivashinsky", None)):
        start = {"distribution": "point", "value": [1.0] * size} if size else {}
        with pytest.raises(ConfigError, match=f"positions then velocities .*{name} is not such a system"):
            parse_case({"system": {"name": name}, "hybrid": {"setup": "second_order"}, "initial_condition": start})
    with pytest.raises(ValueError, match="positions then velocities"):
        SecondOrderHost(state_shape=(3,), dt=0.1)


def test_the_host_refuses_second_order_for_a_system_without_positions_then_velocities():
    """The case check can be bypassed by CaseConfig.replace: the host builder checks again."""
    import dataclasses

    from hybridnde.config import ConfigError, parse_case
    from hybridnde.systems import build_host_solver

    case = parse_case({"system": {"name": "lotka_volterra"},
                       "initial_condition": {"distribution": "point", "value": [1.0, 1.0]}})
    with pytest.raises(ConfigError, match="positions then velocities"):
        build_host_solver(case.replace(hybrid=dataclasses.replace(case.hybrid, setup="second_order")))
