"""Replayed CUDA-graph steps give the eager steps' states (spectral KS, and every explicit solver).

The CUDA cases run where a GPU is (the device fixture of conftest.py adds ``cuda``); on the CPU the
option must change nothing and capture nothing.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from solvers import KuramotoSivashinskyFiniteDifference, KuramotoSivashinskySpectral, Solver, SolverStateError, TwoBody
from solvers.cuda_graphs import GraphCaptureError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ReplayOnCPU:
    """Stands in for ``CapturedStep`` on the CPU: warms up on a scratch copy, then each replay reruns
    the recorded in-place step on the tensor it was captured for, reading the time buffer as a graph
    would. It checks the solver's side of replaying (which states are replayed, in place or not, the
    time input, the cache) where CI has no GPU; the CUDA tests below check the graphs themselves."""

    captures = 0

    def __init__(self, step_in_place, state, *, keep_alive=(), time=None):
        step_in_place(state.clone())
        with NoHostData():  # what a real capture refuses, checked on another scratch copy
            step_in_place(state.clone())
        self.step_in_place, self.state, self.time = step_in_place, state, time
        ReplayOnCPU.captures += 1

    def replay(self, t=0.0):
        if self.time is not None:
            self.time.copy_(t) if isinstance(t, torch.Tensor) else self.time.fill_(t)
        self.step_in_place(self.state)


class NoHostData(TorchFunctionMode):
    """A CUDA capture fails when the step copies host data to the device (``torch.as_tensor(0.5,
    device="cuda")``: "Cannot copy between CPU and CUDA tensors during CUDA graph capture"); on the CPU
    nothing copies, so the stand-in refuses tensors made from Python data while "capturing"."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.as_tensor, torch.tensor, torch.asarray) and not isinstance(args[0], torch.Tensor):
            raise GraphCaptureError(f"{func.__name__}({args[0]!r}) would copy host data during capture")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def replaying_on_cpu(monkeypatch):
    """Every solver treats the CPU as a graph device, with ``ReplayOnCPU`` as its graphs."""
    monkeypatch.setattr(Solver, "graph_device_types", ("cuda", "cpu"))
    monkeypatch.setattr(Solver, "captured_step_type", ReplayOnCPU)
    ReplayOnCPU.captures = 0
    return ReplayOnCPU


def smooth_state(n_points: int, batch: int, device) -> torch.Tensor:
    x = torch.arange(n_points, dtype=torch.float64, device=device) * 22.0 / n_points
    phase = 2 * math.pi * torch.arange(batch, dtype=torch.float64, device=device)[:, None] / batch
    return torch.cos(2 * math.pi * x / 22.0 + phase) + 0.3 * torch.sin(6 * math.pi * x / 22.0 - phase)


def time_dependent_closure(t, u):
    """Depends on the stage time: a graph that recorded t as a constant would get this wrong."""
    return 0.1 * torch.sin(3.0 * t) * torch.cos(u)


def saved_states(solver, u0, n_steps=40, save_every=10):
    with torch.inference_mode():
        return [u for _, u in solver.trajectory(u0, n_steps, save_every=save_every)]


# (64, 1) takes the dense path (physical state), (128, 32) the Fourier path
@pytest.mark.parametrize("n_points, batch", [(64, 1), (128, 32)])
def test_graph_option_changes_nothing_on_cpu(n_points, batch):
    u0 = smooth_state(n_points, batch, "cpu")
    with_graphs = KuramotoSivashinskySpectral(n_points=n_points, cuda_graphs=True)
    without = KuramotoSivashinskySpectral(n_points=n_points, cuda_graphs=False)
    for a, b in zip(saved_states(with_graphs, u0), saved_states(without, u0)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(with_graphs._captured) == 0


@pytest.mark.parametrize("n_points, batch", [(64, 1), (128, 32)])
def test_replayed_steps_equal_eager_steps_with_a_cpu_stand_in(replaying_on_cpu, n_points, batch):
    u0 = smooth_state(n_points, batch, "cpu")
    original = u0.clone()
    replayed = KuramotoSivashinskySpectral(n_points=n_points)
    eager = KuramotoSivashinskySpectral(n_points=n_points, cuda_graphs=False)
    states = saved_states(replayed, u0)
    for a, b in zip(states, saved_states(eager, u0)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert replaying_on_cpu.captures == 1 and len(replayed._captured) == 1
    torch.testing.assert_close(u0, original, rtol=0, atol=0)  # the caller's state is never stepped in place
    assert len({s.data_ptr() for s in states}) == len(states)  # every yielded state is its own tensor
    with torch.inference_mode():
        rolled = replayed.rollout(u0, 40, save_every=10)
    torch.testing.assert_close(rolled, torch.stack(states, dim=1), rtol=0, atol=0)


def test_captured_closures_read_each_steps_time_with_a_cpu_stand_in(replaying_on_cpu):
    u0 = smooth_state(64, 4, "cpu")
    replayed = KuramotoSivashinskySpectral(closure=time_dependent_closure, capture_closure=True)
    eager = KuramotoSivashinskySpectral(closure=time_dependent_closure, cuda_graphs=False)
    for a, b in zip(saved_states(replayed, u0), saved_states(eager, u0)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(replayed._captured) == 1
    # without capture_closure, or where autograd must see the step, nothing is captured
    plain = KuramotoSivashinskySpectral(closure=time_dependent_closure)
    saved_states(plain, u0)
    graded = KuramotoSivashinskySpectral(closure=time_dependent_closure, capture_closure=True)
    graded.rollout(u0.clone().requires_grad_(True), 3)[:, -1].sum().backward()
    graded.rollout(u0, 3)  # grad mode on: the closure's parameters may need gradients
    assert len(plain._captured) == 0 and len(graded._captured) == 0


def test_new_closure_weights_are_captured_again_with_a_cpu_stand_in(replaying_on_cpu):
    from hybridnde.models import PeriodicCNNClosure

    torch.manual_seed(0)
    network = PeriodicCNNClosure(channels=4, depth=1, kernel_size=3).to(torch.float64).eval()
    replayed = KuramotoSivashinskySpectral(closure=network, capture_closure=True)
    eager = KuramotoSivashinskySpectral(closure=network, cuda_graphs=False)
    u0 = smooth_state(64, 4, "cpu")
    with torch.inference_mode():
        states = [replayed.to_internal(u0), eager.to_internal(u0)]
        for i in range(6):
            if i == 3:  # new weight tensors (new addresses); a new trajectory starting notices them
                network.load_state_dict({k: 2.0 * v for k, v in network.state_dict().items()}, assign=True)
                replayed.to_internal(u0)
            states = [solver.step_internal(i * 0.25, state, 0.25) for solver, state in zip((replayed, eager), states)]
    torch.testing.assert_close(states[0], states[1], rtol=0, atol=0)
    assert len(replayed._captured) == 2  # the same state tensor, captured again for the new weights


@needs_cuda
@pytest.mark.parametrize("n_points, batch", [(64, 1), (128, 32)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_replayed_steps_equal_eager_steps_on_cuda(n_points, batch, dtype):
    u0 = smooth_state(n_points, batch, "cuda").to(dtype)
    original = u0.clone()
    replayed = KuramotoSivashinskySpectral(n_points=n_points, device="cuda", cuda_graphs=True, dtype=dtype)
    eager = KuramotoSivashinskySpectral(n_points=n_points, device="cuda", cuda_graphs=False, dtype=dtype)
    states = saved_states(replayed, u0)
    # the same kernels in the same order: equal up to the last bit is expected, a few ulps allowed
    for a, b in zip(states, saved_states(eager, u0)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13 if dtype == torch.float64 else 1e-5)
    assert len(replayed._captured) == 1
    torch.testing.assert_close(u0, original, rtol=0, atol=0)  # the caller's state is never stepped in place
    assert len({s.data_ptr() for s in states}) == len(states)  # every yielded state is its own tensor


@needs_cuda
def test_interleaved_trajectories_and_rollout_agree_with_cpu():
    n_points, batch = 64, 4
    solver = KuramotoSivashinskySpectral(n_points=n_points, device="cuda", implementation="fft")
    first, second = smooth_state(n_points, batch, "cuda"), 1.1 * smooth_state(n_points, batch, "cuda")
    with torch.inference_mode():
        a, b = solver.trajectory(first, 20, save_every=20), solver.trajectory(second, 20, save_every=20)
        for (_, ua), (_, ub) in zip(a, b):  # two states stepped alternately: one graph each
            pass
        rolled = solver.rollout(first, 20, save_every=5)
    assert len(solver._captured) >= 2
    cpu = KuramotoSivashinskySpectral(n_points=n_points, implementation="fft")
    with torch.inference_mode():
        expected_a = cpu.rollout(first.cpu(), 20, save_every=5)
        expected_b = cpu.rollout(second.cpu(), 20, save_every=20)[:, -1]
    torch.testing.assert_close(rolled.cpu(), expected_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(ua.cpu(), expected_a[:, -1], rtol=0, atol=1e-12)
    torch.testing.assert_close(ub.cpu(), expected_b, rtol=0, atol=1e-12)


@needs_cuda
def test_gradients_and_closures_do_not_replay():
    solver = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=lambda t, u: 0.0 * u)
    u0 = smooth_state(64, 2, "cuda")
    saved_states(solver, u0)
    assert len(solver._captured) == 0
    # a capturable closure under autograd: the differentiable path, not the captured in-place one
    from hybridnde.models import PeriodicCNNClosure

    torch.manual_seed(0)
    network = PeriodicCNNClosure(channels=4, depth=1, kernel_size=3).to(torch.float64).to("cuda")
    captured = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=network, capture_closure=True)
    eager = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=network, cuda_graphs=False)
    final = captured.rollout(u0, 10)[:, -1]
    final.square().sum().backward()
    assert len(captured._captured) == 0 and all(p.grad is not None for p in network.parameters())
    with torch.no_grad():
        torch.testing.assert_close(final, eager.rollout(u0, 10)[:, -1], rtol=0, atol=1e-12)
    plain = KuramotoSivashinskySpectral(n_points=64, device="cuda")
    u = u0.clone().requires_grad_(True)
    plain.rollout(u, 4)[:, -1].square().sum().backward()
    assert len(plain._captured) == 0 and torch.isfinite(u.grad).all()



@needs_cuda
@pytest.mark.parametrize("implementation", ["fft", "auto"])
def test_captured_closures_see_each_steps_time(implementation):
    from hybridnde.models import PeriodicCNNClosure

    torch.manual_seed(0)
    network = PeriodicCNNClosure(channels=8, depth=2, kernel_size=5).to(torch.float64).to("cuda").eval()
    u0 = smooth_state(64, 8, "cuda")
    for closure in (network, time_dependent_closure):
        replayed = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=closure, capture_closure=True,
                                               implementation=implementation)
        eager = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=closure, cuda_graphs=False)
        with torch.inference_mode():
            for a, b in zip(saved_states(replayed, u0), saved_states(eager, u0)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
            # the rollout loop's step times are device tensors
            state = replayed.to_internal(u0)
            for i in range(5):
                state = replayed.step_internal(torch.tensor(i * 0.25, dtype=torch.float64, device="cuda"), state, 0.25)
            expected = eager.rollout(u0, 5)[:, -1]
        torch.testing.assert_close(replayed.from_internal(state), expected, rtol=0, atol=1e-12)
        assert len(replayed._captured) >= 1


@needs_cuda
def test_a_closure_that_cannot_be_captured_steps_eagerly():
    def synchronising(t, u):
        return 0.0 * u if float(t) >= 0 else u  # float(t) waits for the GPU: not capturable

    u0 = smooth_state(64, 4, "cuda")
    solver = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=synchronising, capture_closure=True)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        states = saved_states(solver, u0)
    assert solver._capture_failed and len(solver._captured) == 0
    # the failed capture handed the thread its stream back
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    bare = KuramotoSivashinskySpectral(n_points=64, device="cuda", implementation="fft")
    torch.testing.assert_close(states[-1], saved_states(bare, u0)[-1], rtol=0, atol=1e-12)


@needs_cuda
def test_new_closure_weights_are_captured_again():
    from hybridnde.models import PeriodicCNNClosure

    torch.manual_seed(0)
    network = PeriodicCNNClosure(channels=4, depth=1, kernel_size=3).to(torch.float64).to("cuda").eval()
    solver = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=network, capture_closure=True)
    u0 = smooth_state(64, 4, "cuda")
    before = saved_states(solver, u0)[-1]
    replacement = {name: 2.0 * value for name, value in network.state_dict().items()}
    network.load_state_dict(replacement, assign=True)  # new tensors, new addresses
    after = saved_states(solver, u0)[-1]
    eager = KuramotoSivashinskySpectral(n_points=64, device="cuda", closure=network, cuda_graphs=False)
    torch.testing.assert_close(after, saved_states(eager, u0)[-1], rtol=0, atol=1e-12)
    assert not torch.allclose(before, after)


def test_a_failed_capture_steps_eagerly_and_a_failing_step_raises_with_a_cpu_stand_in(monkeypatch):
    from solvers.cuda_graphs import GraphCaptureError

    class CannotCapture(ReplayOnCPU):
        def __init__(self, step_in_place, state, **options):
            raise GraphCaptureError("operation not permitted when stream is capturing")

    monkeypatch.setattr(Solver, "graph_device_types", ("cuda", "cpu"))
    monkeypatch.setattr(Solver, "captured_step_type", CannotCapture)
    u0 = smooth_state(64, 4, "cpu")
    solver = KuramotoSivashinskySpectral(implementation="fft")
    with pytest.warns(RuntimeWarning, match="steps without graphs"):
        states = saved_states(solver, u0)
    eager = KuramotoSivashinskySpectral(implementation="fft", cuda_graphs=False)
    torch.testing.assert_close(states[-1], saved_states(eager, u0)[-1], rtol=0, atol=0)
    assert solver._capture_failed and solver.cuda_graphs  # the user's option is left as given
    solver.reset_cuda_graphs()
    assert not solver._capture_failed
    # an error of the step itself is no capture failure: it reaches the caller as it would eagerly
    monkeypatch.setattr(Solver, "captured_step_type", ReplayOnCPU)

    def broken(t, u):
        return u @ torch.ones(3, 3, dtype=u.dtype)  # (batch, 64) @ (3, 3): torch's RuntimeError

    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        saved_states(KuramotoSivashinskySpectral(closure=broken, capture_closure=True), u0)
    with pytest.raises(SolverStateError, match="same shape as u"):  # the solver's own refusal, likewise
        saved_states(KuramotoSivashinskySpectral(closure=lambda t, u: u[:, :3], capture_closure=True), u0)


def two_body_states(batch: int, device) -> torch.Tensor:
    angle = torch.linspace(0, 1, batch, dtype=torch.float64, device=device)[:, None]
    return torch.cat([torch.cos(angle), torch.sin(angle), -0.9 * torch.sin(angle), 0.9 * torch.cos(angle)], dim=1)


def ode_closure(t, u):
    """Time-dependent, like a forcing: a graph that recorded t as a constant would get it wrong."""
    return 0.01 * torch.sin(5.0 * t) * torch.tanh(u)


@pytest.mark.parametrize("make", [
    lambda **options: TwoBody(dt=0.01, **options),
    lambda **options: KuramotoSivashinskyFiniteDifference(n_points=32, dt=0.002, **options),
], ids=["two-body", "ks-finite-difference"])
def test_explicit_solvers_replay_like_eager_steps_with_a_cpu_stand_in(replaying_on_cpu, make):
    probe = make()
    u0 = two_body_states(6, "cpu") if probe.state_shape == (4,) else smooth_state(32, 3, "cpu")
    original = u0.clone()
    for closure in (None, ode_closure):
        replayed, eager = make(closure=closure), make(closure=closure)
        replayed.capture_closure = True
        eager.cuda_graphs = False
        states = saved_states(replayed, u0, n_steps=30, save_every=10)
        for a, b in zip(states, saved_states(eager, u0, n_steps=30, save_every=10)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert len(replayed._captured) == 1
        assert len({s.data_ptr() for s in states}) == len(states)
    torch.testing.assert_close(u0, original, rtol=0, atol=0)


class RecordsNothing(ReplayOnCPU):
    """What a capture on the wrong stream would give: an empty graph."""

    def replay(self, t=0.0):
        pass


@pytest.mark.parametrize("make, u0", [
    (lambda: TwoBody(dt=0.01), two_body_states(4, "cpu")),
    # float32 and a small stable dt: one step's change is ~1e-4 of the state, inside a state tolerance
    (lambda: KuramotoSivashinskyFiniteDifference(n_points=128, dt=8e-5, dtype=torch.float32),
     smooth_state(128, 3, "cpu").float()),
], ids=["two-body", "ks-fd-float32-small-dt"])
def test_a_graph_that_disagrees_with_the_eager_step_is_dropped_with_a_cpu_stand_in(monkeypatch, make, u0):
    monkeypatch.setattr(Solver, "graph_device_types", ("cuda", "cpu"))
    monkeypatch.setattr(Solver, "captured_step_type", RecordsNothing)
    solver = make()
    with pytest.warns(RuntimeWarning, match="differs from the eager step"):
        states = saved_states(solver, u0, n_steps=20, save_every=5)
    eager = make()
    eager.cuda_graphs = False
    for a, b in zip(states, saved_states(eager, u0, n_steps=20, save_every=5)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert solver._capture_failed and len(solver._captured) == 0


def test_an_unchecked_graph_is_never_cached_with_a_cpu_stand_in(monkeypatch):
    """If the check's eager step fails (out of memory, say), the new graph must not be kept."""
    progress = {"captured": False, "failed": False}

    class CapturesNothing(RecordsNothing):
        def __init__(self, *args, **options):
            super().__init__(*args, **options)  # its warm-up steps call the closure
            progress["captured"] = True

    monkeypatch.setattr(Solver, "graph_device_types", ("cuda", "cpu"))
    monkeypatch.setattr(Solver, "captured_step_type", CapturesNothing)

    def fails_once_after_capture(t, u):
        if progress["captured"] and not progress["failed"]:  # the first call of the check's eager steps
            progress["failed"] = True
            raise RuntimeError("CUDA out of memory (simulated)")
        return 0.0 * u

    solver = TwoBody(dt=0.01, closure=fails_once_after_capture)
    solver.capture_closure = True
    u0 = two_body_states(4, "cpu")
    with pytest.raises(RuntimeError, match="out of memory"):
        saved_states(solver, u0)
    assert len(solver._captured) == 0
    with pytest.warns(RuntimeWarning, match="differs from the eager step"):
        saved_states(solver, u0)  # captured and checked afresh: the empty graph is caught


@needs_cuda
@pytest.mark.parametrize("make", [
    lambda **options: TwoBody(dt=0.01, device="cuda", **options),
    lambda **options: KuramotoSivashinskyFiniteDifference(n_points=32, dt=0.002, device="cuda", **options),
], ids=["two-body", "ks-finite-difference"])
def test_explicit_solvers_replay_like_eager_steps_on_cuda(make, recwarn):
    probe = make()
    u0 = two_body_states(6, "cuda") if probe.state_shape == (4,) else smooth_state(32, 3, "cuda")
    for closure in (None, ode_closure):
        replayed, eager = make(closure=closure), make(closure=closure)
        replayed.capture_closure = True
        eager.cuda_graphs = False
        for a, b in zip(saved_states(replayed, u0, n_steps=30, save_every=10),
                        saved_states(eager, u0, n_steps=30, save_every=10)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        assert len(replayed._captured) == 1 and not replayed._capture_failed
    assert not [w for w in recwarn if "CUDA graphs" in str(w.message)]
