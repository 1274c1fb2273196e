"""Which closure tensors a captured graph depends on (``solvers.cuda_graphs.module_tensor_addresses``).

A graph reads a closure's parameters *and buffers* where they lay at capture: a new tensor for either
must lead to a new capture, an in-place update must not.
"""
from __future__ import annotations

import pytest
import torch
from test_cuda_graphs import needs_cuda, replaying_on_cpu, smooth_state  # noqa: F401 (replaying_on_cpu: a fixture)

from solvers import KuramotoSivashinskySpectral
from solvers.cuda_graphs import module_tensor_addresses


class ScaledTanh(torch.nn.Module):
    """A closure with a parameter, a buffer and a parameter shared by two submodules."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(64, 64, dtype=torch.float64)
        self.outer = torch.nn.Linear(64, 64, dtype=torch.float64)
        self.outer.weight = self.inner.weight  # shared
        self.register_buffer("scale", torch.tensor(0.05, dtype=torch.float64))

    def forward(self, t, u):
        return self.scale * torch.tanh(self.outer(torch.tanh(self.inner(u))))


def every_tensor(module: torch.nn.Module) -> set[int]:
    return {t.data_ptr() for t in (*module.parameters(), *module.buffers())}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch 2.13 deprecates jit.script itself (exported closures)
def test_addresses_are_the_parameters_and_buffers_and_follow_new_tensors_only():
    torch.manual_seed(0)
    closure = ScaledTanh()
    addresses = module_tensor_addresses(closure)
    assert set(addresses) == every_tensor(closure) and closure.scale.data_ptr() in addresses
    assert set(module_tensor_addresses(torch.jit.script(closure))) == every_tensor(closure)
    assert module_tensor_addresses(lambda t, u: u) == ()
    with torch.no_grad():  # in place (an optimiser step, a plain load_state_dict): the same tensors
        closure.inner.weight.mul_(2.0)
        closure.scale.fill_(0.1)
        closure.load_state_dict({k: v.clone() for k, v in closure.state_dict().items()})
    assert module_tensor_addresses(closure) == addresses
    closure.scale = torch.tensor(0.2, dtype=torch.float64)  # a new buffer tensor
    assert module_tensor_addresses(closure) != addresses


@pytest.mark.usefixtures("replaying_on_cpu")
@pytest.mark.parametrize("replace", ["buffer", "parameter"])
def test_a_new_buffer_or_parameter_is_captured_again_with_a_cpu_stand_in(replace):
    torch.manual_seed(0)
    closure = ScaledTanh().eval()
    replayed = KuramotoSivashinskySpectral(closure=closure, capture_closure=True)
    eager = KuramotoSivashinskySpectral(closure=closure, cuda_graphs=False)
    u0 = smooth_state(64, 4, "cpu")
    with torch.inference_mode():
        first = replayed.rollout(u0, 6, save_every=6)
    if replace == "buffer":
        closure.scale = torch.tensor(-0.3, dtype=torch.float64)
    else:
        closure.load_state_dict({k: 1.5 * v for k, v in closure.state_dict().items()}, assign=True)
    with torch.inference_mode():
        second, expected = replayed.rollout(u0, 6, save_every=6), eager.rollout(u0, 6, save_every=6)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)  # the new tensors were read
    assert not torch.equal(first, second)
    # the stand-in reruns the closure's Python, so it reads new tensors anyway; a real graph reads the
    # captured addresses: the graph now used must be keyed by the new ones
    new = closure.scale if replace == "buffer" else closure.inner.weight
    assert any(new.data_ptr() in key[-1] for key in replayed._captured._steps)


@needs_cuda
def test_a_new_buffer_is_captured_again_on_cuda():
    torch.manual_seed(0)
    closure = ScaledTanh().to("cuda").eval()
    replayed = KuramotoSivashinskySpectral(closure=closure, capture_closure=True, device="cuda")
    eager = KuramotoSivashinskySpectral(closure=closure, cuda_graphs=False, device="cuda")
    u0 = smooth_state(64, 4, "cuda")
    with torch.inference_mode():
        replayed.rollout(u0, 6, save_every=6)
        closure.scale = torch.tensor(-0.3, dtype=torch.float64, device="cuda")
        second, expected = replayed.rollout(u0, 6, save_every=6), eager.rollout(u0, 6, save_every=6)
    torch.testing.assert_close(second, expected, rtol=0, atol=1e-12)
