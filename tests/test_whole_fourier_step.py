"""The compiled whole Fourier step (``compiled_steps.FourierStep``: the ETDRK4 step with its own radix-2
transforms, members in vector lanes, one call a step) gives the torch step, is used where it should be,
or not.
"""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from conftest import fused_and_unfused, smooth_state
from solvers import KuramotoSivashinskySpectral, c_kernels, compiled_steps

needs_kernels = pytest.mark.skipif(c_kernels.library() is None,
                                   reason=f"compiled kernels unavailable: {c_kernels.unavailable_reason()}")
pytestmark = needs_kernels


@pytest.fixture
def whole_calls(monkeypatch):
    """The batch sizes the compiled whole step was called with."""
    calls = []
    original = compiled_steps.FourierStep.__call__

    def counted(self, u_hat, *args):
        calls.append(u_hat.shape[0])
        return original(self, u_hat, *args)

    monkeypatch.setattr(compiled_steps.FourierStep, "__call__", counted)
    return calls


def probe_batches(complex_dtype=torch.complex128) -> list[int]:
    """The batches of the probe checks before first use (one through wide groups and a lone member,
    one through a narrow group)."""
    whole = compiled_steps.FourierStep(64, complex_dtype)
    assert whole.probe_batches == (whole.lanes + 1, 2)
    return list(whole.probe_batches)


def twiddles(n_points: int, dtype) -> torch.Tensor:
    return torch.as_tensor(np.exp(-2j * np.pi * np.arange(n_points // 2) / n_points), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_its_transform_pair_is_torchs_irfft_square_rfft(dtype):
    """``squared_hat``: the radix-2 inverse (decimation in frequency), square and forward (decimation
    in time) through the half-length complex FFT, against torch's real FFTs at every size up to 4096;
    the imaginary parts of the mean and Nyquist modes are ignored, as ``irfft`` ignores them. The
    batches end in a lone row (scalar code), a part of a group of lanes that takes narrow vectors, and
    one that takes wide ones."""
    lib, suffix = c_kernels.library(), "f64" if dtype == torch.complex128 else "f32"
    lanes = getattr(lib, f"whole_step_lanes_{suffix}")()
    assert lanes >= 4 and lanes & (lanes - 1) == 0
    generator = torch.Generator().manual_seed(11)
    tolerance = 1e-14 if dtype == torch.complex128 else 2e-6
    for batch in (lanes + 1, lanes + 2, lanes + lanes // 2 + 1):
        for n_points in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
            modes = n_points // 2 + 1
            x_hat = torch.randn(batch, modes, dtype=dtype, generator=generator) / (1 + torch.arange(modes)) ** 0.5
            out = torch.full_like(x_hat, float("nan"))
            # alive during the call: scratch of 6 m + 4 vectors (x, out, the transform), the twiddles
            scratch = torch.empty((3 * n_points + 4) * lanes, dtype=x_hat.real.dtype)
            omega = twiddles(n_points, dtype)
            getattr(lib, f"squared_hat_{suffix}")(batch, n_points // 2, x_hat.data_ptr(), out.data_ptr(),
                                                  scratch.data_ptr(), omega.data_ptr())
            expected = torch.fft.rfft(torch.fft.irfft(x_hat, n=n_points) ** 2)
            error = ((out - expected).abs().max() / expected.abs().max()).item()
            assert error < tolerance * np.log2(n_points), (batch, n_points, error)
            assert out[:, 0].imag.eq(0).all() and out[:, -1].imag.eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_it_steps_as_the_torch_step_does(dtype, whole_calls):
    for n_points, batch in ((64, 1), (64, 7), (256, 3), (1024, 2), (16, 5), (64, 19)):
        solver, compiled, plain = fused_and_unfused(n_points, batch, dtype=dtype, steps=40)
        assert solver.fused_updates and solver._whole_step is not None and not solver._fused_checked
        assert (plain[:, -1] - plain[:, 0]).abs().max() > 0.1
        tolerance = 1e-13 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(compiled, plain, rtol=0, atol=tolerance * plain.abs().max().item())
    # each: the probe checks (wide groups + a lone member, a narrow group), then 40 steps
    probes = probe_batches(torch.complex128 if dtype == torch.float64 else torch.complex64)
    assert whole_calls == [call for batch in (1, 7, 3, 2, 5, 19) for call in (*probes, *[batch] * 40)]


def test_auto_takes_it_over_the_dense_step_for_trajectories_and_all_but_the_smallest_steps(whole_calls):
    """Trajectories keep their Fourier state, so the whole step wins; a single ``step()`` also transforms
    to and from Fourier space, and the whole step still wins there above ``whole_step_dense_work``
    (N = 64 at any batch: a spin-up's steps were the dense step's, up to 4x slower); the smallest steps
    and a closure's stay dense."""
    bare, small_grid = KuramotoSivashinskySpectral(n_points=64), KuramotoSivashinskySpectral(n_points=32)
    with_closure = KuramotoSivashinskySpectral(n_points=64, closure=lambda t, u: 0.01 * u)
    u, small = smooth_state(bare, 2), smooth_state(small_grid, 2)
    with torch.no_grad():
        assert not bare._use_dense(u, trajectory=True) and not bare._use_dense(u)
        assert small_grid._use_dense(small) and not small_grid._use_dense(small, trajectory=True)
        assert not small_grid._use_dense(smooth_state(small_grid, 4))  # 4 * 32**2 > whole_step_dense_work
        assert with_closure._use_dense(u, trajectory=True) and with_closure._use_dense(u)
        bare.rollout(u, 3)
        with_closure.rollout(u, 3)
        assert whole_calls == [*probe_batches(), 2, 2, 2] and not bare._dense and with_closure._dense
        torch.testing.assert_close(bare.step(0.0, u), bare.rollout(u, 1)[:, 1], rtol=0, atol=1e-13)
        assert not bare._dense  # the whole step took the public step() too
        small_grid.step(0.0, small)
        assert small_grid._dense


def test_where_it_does_not_apply_the_other_paths_step(whole_calls, recwarn):
    """A grid that is not a power of two, a closure, autograd: not used."""
    cases = [(48, 2, None), (64, 2, lambda t, u: 0.01 * torch.tanh(u))]
    for n_points, batch, closure in cases:
        solver, compiled, plain = fused_and_unfused(n_points, batch, closure=closure, steps=20)
        assert solver._whole_step is None
        torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-13 * plain.abs().max().item())
    solver = KuramotoSivashinskySpectral(n_points=64, implementation="fft")
    u = smooth_state(solver, 2).requires_grad_()
    solver.rollout(u, 2).square().sum().backward()
    assert u.grad is not None and whole_calls == []
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


def test_a_member_that_blows_up_leaves_the_others_and_the_step_alone():
    """Each member is stepped in its own vector lane, so an overflowing one turns only itself into
    inf/NaN; the probe check, on a smooth state, keeps the step."""
    solver = KuramotoSivashinskySpectral(n_points=64)
    u = smooth_state(solver, 3)
    u[1] *= 1e160
    reference = KuramotoSivashinskySpectral(n_points=64, implementation="fft")
    reference.fused_updates = False
    with torch.no_grad():
        saved, expected = solver.rollout(u, 3), reference.rollout(u[[0, 2]], 3)
    assert solver._whole_step is not None and solver.fused_updates
    assert not torch.isfinite(saved[1, -1]).all()
    torch.testing.assert_close(saved[[0, 2]], expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("implementation", ["auto", "dense", "fft"])
@pytest.mark.parametrize("n_points", [16, 64])
def test_a_state_of_the_wrong_shape_is_refused_and_leaves_every_step_path_intact(n_points, implementation):
    """``step()`` refuses a state not of shape ``(batch, N)`` naming the shape: the kernels would read
    and write past it as raw memory, and the dense step broadcast an ``(N,)`` state as a batch of N
    members, giving its reused buffers that shape, so later steps went wrong (found by fuzzing)."""
    from solvers import SolverStateError

    solver = KuramotoSivashinskySpectral(n_points=n_points, implementation=implementation)
    reference = KuramotoSivashinskySpectral(n_points=n_points, implementation=implementation)
    square = smooth_state(solver, n_points)  # a batch of N members: the stepper an (N,) state would take
    with torch.no_grad():
        solver.rollout(smooth_state(solver, 2), 2)  # every compiled path built and checked
        solver.step(0.0, square)
        for shape in [(n_points,), (2, n_points // 2), (2, 2 * n_points), (2, 3, n_points)]:
            with pytest.raises(SolverStateError, match="expects"):
                solver.step(0.0, torch.randn(shape, dtype=torch.float64))
            state = solver.to_fourier(torch.randn(shape, dtype=torch.float64))
            if state.ndim == 2:
                assert not solver._fusable(state)
            # step_internal takes only to_internal's states, but a wrong one must not corrupt the buffers
            with pytest.raises((ValueError, RuntimeError, IndexError)):
                solver.step_internal(0.0, torch.randn(shape, dtype=torch.float64), solver.dt)
        torch.testing.assert_close(solver.step(0.0, square), reference.step(0.0, square), rtol=0, atol=1e-13)
        torch.testing.assert_close(solver.rollout(square, 3), reference.rollout(square, 3), rtol=0, atol=1e-13)


def test_a_whole_step_that_disagrees_is_dropped(monkeypatch):
    monkeypatch.setattr(compiled_steps.FourierStep, "__call__", lambda self, u_hat, *args: u_hat.mul_(1.001))
    with pytest.warns(RuntimeWarning, match="differ from the unfused"):
        solver, compiled, plain = fused_and_unfused(64, 2, steps=10)
    assert not solver.fused_updates and solver._whole_step is None
    torch.testing.assert_close(compiled, plain, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_public_step_of_physical_fields_takes_it_transforms_included(dtype, monkeypatch):
    """``step()`` outside the dense step's limits: ``FourierStep.physical`` (the transforms to Fourier
    space and back in the same call) gives the torch step and leaves its input alone."""
    calls = []
    original = compiled_steps.FourierStep.physical
    monkeypatch.setattr(compiled_steps.FourierStep, "physical",
                        lambda self, u, plan: (calls.append(u.shape[0]), original(self, u, plan))[1])
    tolerance = 1e-14 if dtype == torch.float64 else 2e-6
    for n_points, batch in ((4, 3), (8, 1), (128, 1), (128, 19), (256, 2), (1024, 9)):
        solver = KuramotoSivashinskySpectral(n_points=n_points, dtype=dtype, implementation="fft")
        reference = KuramotoSivashinskySpectral(n_points=n_points, dtype=dtype, implementation="fft")
        reference.fused_updates = False
        u = smooth_state(solver, batch, dtype) * (1 + 0.1 * torch.arange(batch, dtype=dtype)[:, None])
        before = u.clone()
        stepped = solver.step(0.0, u)
        expected = reference.step(0.0, u)
        assert torch.equal(u, before) and solver._whole_step.physical_checked
        error = ((stepped - expected).abs().max() / expected.abs().max()).item()
        assert error < tolerance, (n_points, batch, error)
        assert calls[-1] == batch
    assert len(calls) == 6 * 3  # each: its two probes (wide groups and a lone member; a narrow group), the step


def test_a_lazily_negated_field_is_not_read_as_raw_memory():
    """A negative view (``is_neg``: contiguous memory holding -u) takes the torch path."""
    solver = KuramotoSivashinskySpectral(n_points=128)
    reference = KuramotoSivashinskySpectral(n_points=128)
    reference.fused_updates = False
    u = smooth_state(solver, 3)
    view = torch._neg_view(u)
    assert view.is_neg() and view.is_contiguous()
    torch.testing.assert_close(solver.step(0.0, view), reference.step(0.0, -u), rtol=0, atol=1e-13)


def test_a_physical_entry_point_that_disagrees_is_dropped(monkeypatch):
    monkeypatch.setattr(compiled_steps.FourierStep, "physical", lambda self, u, plan: u * 1.001)
    solver = KuramotoSivashinskySpectral(n_points=128)
    reference = KuramotoSivashinskySpectral(n_points=128)
    reference.fused_updates = False
    u = smooth_state(solver, 3)
    with pytest.warns(RuntimeWarning, match="differ from the unfused"):
        stepped = solver.step(0.0, u)
    assert not solver.fused_updates and solver._whole_step is None
    torch.testing.assert_close(stepped, reference.step(0.0, u), rtol=0, atol=0)


def test_each_code_path_is_checked_before_first_use(monkeypatch):
    """A fault in one path only -- here the narrow group, batch 2 -- drops the step even when the first
    trajectory (batch 1) would never take that path."""
    original = compiled_steps.FourierStep.__call__

    def wrong_in_narrow_groups(self, u_hat, plan):
        out = original(self, u_hat, plan)
        return out.mul_(1.001) if u_hat.shape[0] == 2 else out

    monkeypatch.setattr(compiled_steps.FourierStep, "__call__", wrong_in_narrow_groups)
    with pytest.warns(RuntimeWarning, match="differ from the unfused"):
        solver, compiled, plain = fused_and_unfused(64, 1, steps=10)
    assert not solver.fused_updates and solver._whole_step is None
    torch.testing.assert_close(compiled, plain, rtol=0, atol=0)


def test_threads_split_the_batch_bit_for_bit(monkeypatch):
    """With its groups of lanes shared among threads (forced here below the kernels' grain), each block
    with its own scratch, the step is the same to the last bit."""
    monkeypatch.setattr(compiled_steps, "WHOLE_STEP_GRAIN", 0)
    solver = KuramotoSivashinskySpectral(n_points=128)
    plan, whole = solver.plan(solver.dt), compiled_steps.FourierStep(128, torch.complex128)
    members = 3 * whole.lanes + 1  # four groups
    u_hat = solver.to_fourier(smooth_state(solver, members) + 0.1 * torch.arange(members, dtype=torch.float64)[:, None])
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            state = u_hat.clone()
            for _ in range(30):
                whole(state, plan)
            results.append(state)
            assert whole._scratch.numel() >= threads * whole._scratch_entries
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_a_members_bits_do_not_depend_on_its_batch_or_lane():
    """Lanes are independent vertical arithmetic: a member stepped in a narrow group, in another lane,
    in a wide group, a larger batch or a second group steps to the same bits. Alone it takes scalar code
    the compiler may contract into FMAs: the same step to rounding."""
    solver = KuramotoSivashinskySpectral(n_points=64)
    plan = solver.plan(solver.dt)
    whole = compiled_steps.FourierStep(64, torch.complex128)
    members = 2 * whole.lanes + 3
    u_hat = solver.to_fourier(smooth_state(solver, members) * (1 + 0.1 * torch.arange(members)[:, None]))

    def stepped(rows):
        state = u_hat[rows].clone()
        for _ in range(25):
            whole(state, plan)
        return state

    everyone = stepped(slice(None))
    member = whole.lanes + 1  # the second group's second lane
    # a narrow pair; a wide group then a narrow tail; a wide group then a lone row; lane 0 of a second group
    for rows, position in ((slice(member, member + 2), 0), (slice(member - 1, None), 1),
                           (slice(2, member + 2), member - 2), (slice(1, None), member - 1)):
        assert torch.equal(stepped(rows)[position], everyone[member]), rows
    assert not torch.equal(everyone[member], everyone[member - 1])
    alone = stepped(slice(member, member + 1))[0]
    torch.testing.assert_close(alone, everyone[member], rtol=0, atol=1e-13 * everyone[member].abs().max().item())


def test_groups_are_shared_among_threads_from_the_whole_step_grain():
    """More than ``WHOLE_STEP_GRAIN`` complex entries and two groups of lanes: every torch thread."""
    solver = KuramotoSivashinskySpectral(n_points=64)
    plan, whole = solver.plan(solver.dt), compiled_steps.FourierStep(64, torch.complex128)
    seen, function = [], whole._function
    whole._function = lambda threads, *arguments: (seen.append(threads), function(threads, *arguments))[1]
    over = compiled_steps.WHOLE_STEP_GRAIN // 33 + 1  # 33 modes a member
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for batch in (1, over - 1, over):
            whole(solver.to_fourier(smooth_state(solver, batch)), plan)
    finally:
        torch.set_num_threads(previous)
    assert over > whole.lanes and seen == [1, 1, 2]


def test_on_several_threads_it_steps_every_batch(whole_calls):
    batch = 300
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        solver, compiled, plain = fused_and_unfused(64, batch, steps=20)
    finally:
        torch.set_num_threads(previous)
    threads = 2 if c_kernels.openmp() else 1
    assert whole_calls == [*probe_batches(), *[batch] * 20] and solver._whole_step._scratch.numel() >= threads * solver._whole_step._scratch_entries
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-13 * plain.abs().max().item())


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda solver: pickle.loads(pickle.dumps(solver))],
                         ids=["deepcopy", "pickle"])
def test_copies_of_a_solver_that_used_it_step_correctly(duplicate):
    solver = KuramotoSivashinskySpectral(n_points=64)
    u = smooth_state(solver, 3)
    with torch.no_grad():
        solver.rollout(u, 2)
        assert solver._whole_step is not None
        copied = duplicate(solver)
        torch.testing.assert_close(copied.rollout(u, 5), solver.rollout(u, 5), rtol=0, atol=0)


def test_a_state_with_autograd_history_is_left_to_autograd():
    solver = KuramotoSivashinskySpectral(n_points=64, implementation="fft")
    u_hat = solver.to_fourier(smooth_state(solver, 2)).requires_grad_()
    with torch.no_grad():
        assert solver._whole_fourier_step(u_hat, solver.plan(solver.dt)) is None  # _fusable refuses it
    state = solver.to_fourier(smooth_state(solver, 2))
    version = state._version
    with torch.no_grad():
        solver._step_eagerly(0.0, state, solver.dt)
    assert solver._whole_step is not None and state._version > version  # in place, as autograd must know
