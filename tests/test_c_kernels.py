"""The compiled CPU kernels (``solvers.c_kernels``) give the torch step, are built safely, or are not used.

Where no C compiler is found the comparisons skip (the build/fallback tests still run); CI's machines
have gcc.
"""
from __future__ import annotations

import copy
import os
import pickle
import stat
import warnings

import pytest
import torch

from conftest import fused_and_unfused, smooth_state, time_dependent_closure
from solvers import KuramotoSivashinskySpectral, c_kernels, compiled_steps, cpu_fft

needs_kernels = pytest.mark.skipif(c_kernels.library() is None,
                                   reason=f"compiled kernels unavailable: {c_kernels.unavailable_reason()}")


def compiled_and_torch(implementation, n_points, batch, *, dtype=torch.float64, closure=None, steps=40):
    """(compiled solver, its rollout, the torch rollout) from the same smooth state."""
    solver, compiled, plain = fused_and_unfused(n_points, batch, dtype=dtype, closure=closure, steps=steps,
                                                implementation=implementation)
    assert (plain[:, -1] - plain[:, 0]).abs().max() > 0.1  # the comparison is over a real change
    return solver, compiled, plain


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the compiled Fourier-stage kernels and dense steps."""
    calls = {"stages": 0, "dense": 0}
    stages, dense = c_kernels.fused_fourier_step_into, compiled_steps.DenseStep.__call__

    def counted_stages(*args, **kwargs):
        calls["stages"] += 1
        return stages(*args, **kwargs)

    def counted_dense(self, u):
        calls["dense"] += 1
        return dense(self, u)

    monkeypatch.setattr(c_kernels, "fused_fourier_step_into", counted_stages)
    monkeypatch.setattr(compiled_steps.DenseStep, "__call__", counted_dense)
    return calls


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("closure", [None, time_dependent_closure], ids=["bare", "closure"])
def test_compiled_fourier_stages_match_the_torch_step(dtype, closure, spy, recwarn, stage_kernels):
    for n_points, batch in ((64, 5), (256, 7), (32, 1)):
        solver, compiled, plain = compiled_and_torch("fft", n_points, batch, dtype=dtype, closure=closure)
        assert solver.fused_updates and solver._fused_checked
        tolerance = 1e-13 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(compiled, plain, rtol=0, atol=tolerance * plain.abs().max().item())
    assert spy["stages"] == 3 * (40 + 1)  # every step (and each solver's first check) went through C
    assert not [w for w in recwarn if "fused" in str(w.message) or "compiled" in str(w.message)]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_dense_step_matches_the_torch_one(dtype, spy):
    for n_points, batch in ((64, 1), (32, 3), (16, 8)):
        solver, compiled, plain = compiled_and_torch("dense", n_points, batch, dtype=dtype)
        assert all(stepper.compiled is not None for stepper in solver._dense.values())
        tolerance = 1e-12 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(compiled, plain, rtol=0, atol=tolerance * plain.abs().max().item())
    assert spy["dense"] == 3 * (40 + 1)


@needs_kernels
def test_the_compiled_dense_step_takes_only_what_fits_its_buffers(spy):
    """A state of another shape, dtype or layout, or one with autograd history, goes to the torch step
    (the C code would run past its buffers or detach the result); the public step is compiled too."""
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="dense")
    u = smooth_state(solver, 2)
    with torch.no_grad():
        expected = solver.step(0.0, u)
    assert spy["dense"] == 2  # the probe check, then the public step
    stepper = solver._dense[(solver.dt, 2, False)]
    compiled = stepper.compiled
    assert compiled is not None and compiled.accepts(u)
    for other in (u[:1], u.float(), u.t().contiguous().t(), torch.cat([u, u], 1)[:, ::2],
                  u.clone().requires_grad_()):
        assert not compiled.accepts(other)
    with torch.no_grad():
        torch.testing.assert_close(stepper.step(u.t().contiguous().t()), expected, rtol=0, atol=1e-13)
    assert spy["dense"] == 2


@needs_kernels
def test_a_member_overflowing_in_its_first_step_does_not_switch_the_kernels_off(stage_kernels):
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
    u = torch.cos(2 * torch.pi * solver.x / 22.0).repeat(2, 1)
    u[1] *= 1e160
    with torch.no_grad():
        saved = solver.rollout(u, 2)
    assert solver.fused_updates and solver._fused_checked
    assert torch.isfinite(saved[0]).all() and not torch.isfinite(saved[1, -1]).all()


@needs_kernels
def test_a_compiled_dense_step_that_disagrees_is_dropped(monkeypatch):
    monkeypatch.setattr(compiled_steps.DenseStep, "__call__", lambda self, u: u.clone())  # a step that does nothing
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="dense")
    u = smooth_state(solver, 1)
    with pytest.warns(RuntimeWarning, match="differ from the unfused"), torch.no_grad():
        result = solver.step(0.0, u)
    assert not solver.fused_updates and solver._dense[(solver.dt, 1, False)].compiled is None
    reference = KuramotoSivashinskySpectral(n_points=32, implementation="fft")
    with torch.no_grad():
        torch.testing.assert_close(result, reference.step(0.0, u), rtol=0, atol=1e-12)


@needs_kernels
def test_threads_share_large_arrays(spy, monkeypatch, stage_kernels):
    """With several torch threads a large array's stages run on all of them (OpenMP, where built with
    it), to the same last bit as on one, and its transforms are torch's threaded FFTs instead of
    DUCC's single-threaded ones (whose last bits differ); small arrays keep one thread."""
    assert not c_kernels.available(torch.zeros(4, 33, dtype=torch.int64))
    assert not c_kernels.available(torch.zeros(4, 33, dtype=torch.complex128, device="meta"))
    if c_kernels._compiler() and "gcc" in os.path.realpath(c_kernels._compiler()):
        assert c_kernels.openmp()  # gcc has -fopenmp; CI's machines build the threaded kernels
    ducc_calls = []
    if cpu_fft.HAVE_DUCC:
        call = cpu_fft.SquaredHat.__call__
        monkeypatch.setattr(cpu_fft.SquaredHat, "__call__",
                            lambda self, *args: ducc_calls.append(self.shape) or call(self, *args))
    batch = c_kernels.PARALLEL_GRAIN // 33 + 3  # N = 64: 33 modes, just over the grain
    large, small = (torch.zeros(rows, 33, dtype=torch.complex128) for rows in (batch, 4))
    generator = torch.Generator().manual_seed(5)
    state, *terms = (torch.randn(batch, 33, dtype=torch.complex128, generator=generator) for _ in range(5))

    def run(threads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the four C stages with fixed nonlinear terms, a rollout) on ``threads`` threads"""
        torch.set_num_threads(threads)
        assert c_kernels.threads_for(large) == threads and c_kernels.threads_for(small) == 1
        solver = KuramotoSivashinskySpectral(n_points=64, implementation="fft")
        plan, stepped = solver.plan(solver.dt), state.clone()
        workspace = solver._fourier_workspace(batch)
        given = iter(terms)
        c_kernels.fused_fourier_step_into(stepped, plan, plan.folded, lambda stage, x: next(given), workspace,
                                          kept=plan.folded_low.q.shape[-1])
        u0 = smooth_state(solver, batch) + 0.05 * torch.sin(torch.arange(batch, dtype=torch.float64))[:, None]
        with torch.no_grad():
            result = solver.rollout(u0, 12, save_every=4)
        assert solver.fused_updates
        return stepped, result

    previous = torch.get_num_threads()
    try:
        (stages_one, one), (stages_two, two) = run(1), run(2)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(stages_one, stages_two)
    assert (one[:, -1] - one[:, 0]).abs().max() > 0.1
    torch.testing.assert_close(two, one, rtol=0, atol=1e-12)
    assert spy["stages"] == 2 * (1 + 13)
    assert len(ducc_calls) == (4 * 13 if cpu_fft.HAVE_DUCC else 0)  # all on one thread


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """``c_kernels`` as if never loaded in this process, building into ``tmp_path``."""
    for key, value in (("tried", False), ("library", None), ("reason", "not built yet")):
        monkeypatch.setitem(c_kernels._state, key, value)
    monkeypatch.setenv("HYBRIDNDE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("HYBRIDNDE_C_KERNELS", raising=False)
    return tmp_path


def test_the_library_is_built_once_into_the_cache_and_renamed_into_place(fresh_build, monkeypatch):
    if c_kernels._compiler() is None:
        pytest.skip("no C compiler")
    lib = c_kernels.library()
    assert lib is not None and c_kernels.unavailable_reason() is None
    built = sorted(fresh_build.iterdir())
    assert len(built) == 1 and built[0].suffix in (".so", ".dll")  # no temporary file left behind
    first = built[0].stat().st_mtime_ns
    # another process (here: the state reset) finds it and does not compile again
    monkeypatch.setitem(c_kernels._state, "tried", False)
    monkeypatch.setattr(c_kernels, "_build", lambda *args: pytest.fail("rebuilt a cached library"))
    assert c_kernels.library() is not None
    assert built[0].stat().st_mtime_ns == first


def test_a_failing_compiler_warns_once_and_leaves_torch_in_charge(fresh_build, monkeypatch):
    failing = fresh_build / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: fatal error: no input files' >&2\nexit 1\n")
    failing.chmod(failing.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(failing))
    with pytest.warns(RuntimeWarning, match="compiled CPU kernels are unavailable.*exited with 1.*no input files"):
        assert c_kernels.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c_kernels.library() is None  # once
        assert not c_kernels.available(torch.zeros(2, 17, dtype=torch.complex128))
        solver = KuramotoSivashinskySpectral(n_points=32)
        with torch.no_grad():
            solver.rollout(smooth_state(solver, 2), 3)
    remembered = sorted(path.name for path in fresh_build.iterdir())
    assert remembered[0] == "failing-cc" and len(remembered) == 2 and remembered[1].endswith(".so.failed")
    # a later process does not compile again: it reads why, and says so
    monkeypatch.setitem(c_kernels._state, "tried", False)
    monkeypatch.setattr(c_kernels, "_build", lambda *args: pytest.fail("compiled again"))
    with pytest.warns(RuntimeWarning, match="no input files.*remembered from an earlier build; delete"):
        assert c_kernels.library() is None


def test_the_library_loaded_is_the_file_that_was_checked(fresh_build, monkeypatch):
    """In a shared cache folder another user could point the name at their own file between the trust
    check and the load; the load goes through the checked file's descriptor (Linux's /proc)."""
    if c_kernels._compiler() is None or not os.path.isdir("/proc/self/fd"):
        pytest.skip("no C compiler, or no /proc")
    assert c_kernels.library() is not None
    (built,) = fresh_build.iterdir()
    monkeypatch.setitem(c_kernels._state, "tried", False)
    exists = os.path.exists

    def swapping(path):  # called between the check and the load: the moment to swap the file
        if str(path).startswith("/proc/self/fd/"):
            impostor = fresh_build / "impostor"
            impostor.write_bytes(b"not a library")
            impostor.chmod(0o666)
            os.replace(impostor, built)
        return exists(path)

    monkeypatch.setattr(os.path, "exists", swapping)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib = c_kernels.library()
    assert lib is not None and hasattr(lib, "fourier_step_packed_f64")
    assert built.read_bytes() == b"not a library"  # the name now names the impostor; it was not loaded


def test_a_compiler_without_openmp_builds_single_threaded_kernels(fresh_build, monkeypatch, stage_kernels):
    compiler = c_kernels._compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    no_openmp = fresh_build / "cc-without-openmp"  # as Apple's clang answers -fopenmp
    no_openmp.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && '
                         f'{{ echo "unsupported option -fopenmp" >&2; exit 1; }}; done\nexec {compiler} "$@"\n')
    no_openmp.chmod(no_openmp.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(no_openmp))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c_kernels.library() is not None and not c_kernels.openmp()
    assert not any(path.name.endswith(".failed") for path in fresh_build.iterdir())
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # asks for 2 threads; the plain loops take 1 and give the torch step
        _, compiled, plain = compiled_and_torch("fft", 64, c_kernels.PARALLEL_GRAIN // 33 + 1, steps=10)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-13 * plain.abs().max().item())


def test_switched_off_or_no_compiler_means_torch_silently(fresh_build, monkeypatch):
    monkeypatch.setenv("HYBRIDNDE_C_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c_kernels.library() is None
    assert "HYBRIDNDE_C_KERNELS=0" in c_kernels.unavailable_reason()
    monkeypatch.setitem(c_kernels._state, "tried", False)
    monkeypatch.delenv("HYBRIDNDE_C_KERNELS")
    monkeypatch.setenv("CC", "")
    monkeypatch.setenv("PATH", os.fspath(fresh_build))  # nothing to find there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert c_kernels.library() is None
    assert "no C compiler" in c_kernels.unavailable_reason()


@needs_kernels
def test_a_closure_returning_another_precision_is_converted_not_misread():
    """A float32 solver whose closure answers in float64: the torch step promotes, the kernels must
    read the term in the state's precision (not reinterpret its bytes)."""
    def double_closure(t, u):
        return 0.1 * torch.sin(u.double())

    solver, compiled, plain = compiled_and_torch("fft", 64, 3, dtype=torch.float32, closure=double_closure)
    assert solver.fused_updates and compiled.dtype == torch.float32
    torch.testing.assert_close(compiled, plain, rtol=0, atol=2e-5 * plain.abs().max().item())


needs_ducc = pytest.mark.skipif(not cpu_fft.HAVE_DUCC, reason="ducc0 not installed (the fast extra)")


@needs_ducc
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_ducc_squared_hat_is_the_torch_fft_pair_in_four_buffers(dtype):
    generator = torch.Generator().manual_seed(3)
    squared = cpu_fft.SquaredHat(5, 48, dtype)
    results = []
    for stage in range(6):
        x_hat = torch.randn(5, 25, dtype=dtype, generator=generator)
        expected = torch.fft.rfft(torch.fft.irfft(x_hat, n=48) ** 2)
        result = squared(stage % 3, x_hat)
        tolerance = 1e-13 if dtype == torch.complex128 else 1e-4
        torch.testing.assert_close(result, expected, rtol=0, atol=tolerance * expected.abs().max().item())
        results.append(result)
    # four distinct buffers, reused in turn: the fifth result is the first one's buffer
    assert len({result.data_ptr() for result in results[:4]}) == 4
    assert results[4].data_ptr() == results[0].data_ptr() and results[5].data_ptr() == results[1].data_ptr()


@needs_kernels
@needs_ducc
def test_fused_steps_use_ducc_and_a_wrong_transform_is_dropped(monkeypatch, stage_kernels):
    solver, compiled, plain = compiled_and_torch("fft", 64, 4)
    assert solver.ducc_fft and list(solver._ducc_squared) == [4] and solver.fused_updates
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-13 * plain.abs().max().item())

    original = cpu_fft.SquaredHat.__call__
    monkeypatch.setattr(cpu_fft.SquaredHat, "__call__", lambda self, stage, x_hat: 1.05 * original(self, stage, x_hat))
    with pytest.warns(RuntimeWarning, match="differ from the unfused"):
        solver, compiled, plain = compiled_and_torch("fft", 64, 4)
    assert not solver.fused_updates
    torch.testing.assert_close(compiled, plain, rtol=0, atol=0)


@needs_kernels
@pytest.mark.parametrize("implementation", ["fft", "dense"])
def test_the_public_step_on_another_precision_never_reaches_the_kernels(implementation):
    """A float32 state in a float64 solver must not reach kernels that read the coefficients in the
    state's precision: ``step()`` refuses it as ``rollout`` does (it took a torch path before, and
    returned float64 on some paths, float32 on others)."""
    from solvers import SolverStateError

    solver = KuramotoSivashinskySpectral(n_points=64, implementation=implementation)
    u = smooth_state(solver, 3)
    with torch.no_grad():
        solver.rollout(u, 2)  # kernels checked and in use
        with pytest.raises(SolverStateError, match="dtype torch.float32"):
            solver.step(0.0, u.float())


@needs_kernels
def test_a_state_with_autograd_history_is_not_overwritten_behind_autograds_back():
    """The kernels write the state in place: a graph that saved it must refuse to backpropagate, as
    after an in-place torch operation (not silently use the new values)."""
    for requires_grad in (True, False):
        solver = KuramotoSivashinskySpectral(n_points=64, implementation="fft")
        weight = torch.tensor(2.0, requires_grad=True)
        u = smooth_state(solver, 2)
        state = solver.to_internal(u.requires_grad_(requires_grad))
        saved_it = (weight * state).abs().sum()  # the product saves state for weight's gradient
        with torch.no_grad():
            solver.step_internal(0.0, state, solver.dt)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            saved_it.backward()


@needs_kernels
def test_a_lazily_conjugated_state_is_stepped_as_the_torch_step_does():
    results = []
    for fused in (True, False):
        solver = KuramotoSivashinskySpectral(n_points=64, implementation="fft")
        solver.fused_updates = fused
        u = smooth_state(solver, 2)
        with torch.no_grad():
            solver.rollout(u, 1)  # kernels checked and in use
            state = solver.to_internal(u).conj()  # contiguous, conjugate bit set
            results.append(solver.from_internal(solver.step_internal(0.0, state, solver.dt)))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-13)


@needs_kernels
def test_a_broken_ducc0_falls_back_to_torch_fft_with_a_warning(monkeypatch, stage_kernels):
    def broken(*args, **kwargs):
        raise ImportError("ducc0.so: undefined symbol")

    monkeypatch.setattr(cpu_fft, "SquaredHat", broken)
    monkeypatch.setattr(cpu_fft, "HAVE_DUCC", True)
    with pytest.warns(RuntimeWarning, match="DUCC transforms unavailable.*undefined symbol"):
        solver, compiled, plain = compiled_and_torch("fft", 64, 3)
    assert not solver.ducc_fft and solver.fused_updates
    torch.testing.assert_close(compiled, plain, rtol=0, atol=1e-13 * plain.abs().max().item())


@needs_kernels
@pytest.mark.parametrize("implementation", ["fft", "dense"])
@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda solver: pickle.loads(pickle.dumps(solver))],
                         ids=["deepcopy", "pickle"])
def test_copies_of_a_stepped_solver_step_correctly(implementation, duplicate):
    """Copies carry no raw addresses into the original's buffers and no numpy views detached from
    their tensors: the compiled dense step is dropped, DUCC buffers are made anew."""
    solver = KuramotoSivashinskySpectral(n_points=64, implementation=implementation)
    reference = KuramotoSivashinskySpectral(n_points=64, implementation=implementation)
    reference.fused_updates = False
    u = smooth_state(solver, 3)
    with torch.no_grad():
        solver.rollout(u, 2)  # kernels, DUCC buffers and dense steppers made
        copied = duplicate(solver)
        del solver
        torch.testing.assert_close(copied.rollout(u, 20), reference.rollout(u, 20), rtol=0, atol=1e-12)


@needs_kernels
@needs_ducc
def test_copies_of_the_buffers_themselves_are_safe():
    solver = KuramotoSivashinskySpectral(n_points=32, implementation="dense")
    with torch.no_grad():
        solver.rollout(smooth_state(solver, 2), 1)
    stepper = solver._dense[(solver.dt, 2, False)]
    assert stepper.compiled is not None and copy.deepcopy(stepper).compiled is None
    squared = copy.deepcopy(cpu_fft.SquaredHat(3, 32, torch.complex128))
    x_hat = torch.fft.rfft(smooth_state(solver, 3))
    torch.testing.assert_close(squared(0, x_hat), torch.fft.rfft(torch.fft.irfft(x_hat, n=32) ** 2),
                               rtol=0, atol=1e-13)


def test_a_cached_library_others_may_write_is_rebuilt_not_loaded(fresh_build, monkeypatch):
    if c_kernels._compiler() is None or not hasattr(os, "getuid"):
        pytest.skip("no C compiler, or no POSIX ownership")
    assert c_kernels.library() is not None
    (built,) = fresh_build.iterdir()
    assert stat.S_IMODE(built.stat().st_mode) == 0o755  # readable by the users of a shared cache
    built.chmod(0o777)
    builds = []
    build = c_kernels._build
    monkeypatch.setattr(c_kernels, "_build", lambda *args: builds.append(args) or build(*args))
    monkeypatch.setitem(c_kernels._state, "tried", False)
    assert c_kernels.library() is not None and len(builds) == 1
    assert stat.S_IMODE(built.stat().st_mode) == 0o755


@needs_kernels
def test_turning_fused_updates_off_holds_for_a_dense_stepper_that_has_its_compiled_step():
    """``fused_updates = False`` after the first steps: the dense stepper drops its compiled step, and
    the steps from then on are the torch step's to the bit (before, it kept the compiled one)."""
    solver = KuramotoSivashinskySpectral(n_points=32)
    torch_only = KuramotoSivashinskySpectral(n_points=32)
    torch_only.fused_updates = False
    u = torch.cos(2 * torch.pi * solver.x / 22.0).repeat(2, 1)  # within whole_step_dense_work: the dense step
    with torch.no_grad():
        u = solver.step(0.0, u)
        stepper = next(iter(solver._dense.values()))
        assert stepper.compiled is not None  # the compiled dense step took that step
        solver.fused_updates = False
        assert stepper.compiled is None and not solver.fused_updates
        torch.testing.assert_close(solver.step(0.0, u), torch_only.step(0.0, u), rtol=0, atol=0)


@needs_kernels
def test_alternating_time_steps_and_states_keep_the_right_coefficients_and_inputs(stage_kernels):
    """The stage kernels' fixed addresses (plan, coefficients, workspace) and DUCC's input views are
    taken once and reused: alternating dt (two plans on one workspace), a second state of the same
    shape and states changed in place between steps must each read what they should."""
    fused, plain = (KuramotoSivashinskySpectral(n_points=64, implementation="fft") for _ in range(2))
    plain.fused_updates = False
    generator = torch.Generator().manual_seed(11)
    states = [smooth_state(fused, 70) for _ in range(2)]
    with torch.no_grad():
        for solver in (fused, plain):
            solver.whole_fourier_step = False  # the stage kernels at any batch
        u_fused = [fused.to_internal(u) for u in states]
        u_plain = [plain.to_internal(u) for u in states]
        for step, dt in enumerate([0.25, 0.1, 0.25, 0.05, 0.1, 0.25]):
            which = step % 2
            u_fused[which] = fused.step_internal(0.0, u_fused[which], dt)
            u_plain[which] = plain.step_internal(0.0, u_plain[which], dt)
            kick = 1e-3 * torch.randn(u_plain[which].shape, dtype=torch.float64, generator=generator)
            u_fused[which] += kick  # changed in place between steps (same address, new values)
            u_plain[which] += kick
    for a, b in zip(u_fused, u_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12 * b.abs().max().item())


@needs_ducc
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_trajectory_without_closure_gives_the_same_bits_on_any_thread_count(dtype):
    """torch's batched real FFTs of N <= 64 round differently with 1 and 2 threads (MKL), and a
    trajectory's first and saved states went through them: truth files depended on --threads. DUCC on
    one thread does them now; the whole step is thread-invariant already (test_whole_fourier_step)."""
    generator = torch.Generator().manual_seed(1)
    before = torch.get_num_threads()
    try:
        for n_points, batch in ((16, 8), (64, 64), (64, 3), (64, 1), (256, 2)):
            u0 = 0.1 * torch.randn(batch, n_points, generator=generator, dtype=torch.float64).to(dtype)
            runs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                solver = KuramotoSivashinskySpectral(domain_length=22.0, n_points=n_points, dt=0.25, dtype=dtype)
                with torch.inference_mode():
                    runs.append(solver.rollout(u0, n_steps=40, save_every=10))
            assert torch.equal(runs[0], runs[1]), (n_points, batch)
    finally:
        torch.set_num_threads(before)


@needs_ducc
def test_ducc_real_ffts_agree_with_torch_and_leave_gradients_to_it():
    u = torch.randn(3, 5, 48, dtype=torch.float64)
    torch.testing.assert_close(cpu_fft.rfft(u), torch.fft.rfft(u), rtol=0, atol=1e-13)
    u_hat = torch.fft.rfft(u)
    torch.testing.assert_close(cpu_fft.irfft(u_hat, 48), torch.fft.irfft(u_hat, n=48), rtol=0, atol=1e-14)
    torch.testing.assert_close(cpu_fft.irfft(u_hat.conj().conj(), 48), torch.fft.irfft(u_hat, n=48), rtol=0, atol=1e-14)
    torch.testing.assert_close(cpu_fft.rfft(torch._neg_view(u)), torch.fft.rfft(-u), rtol=0, atol=1e-13)
    assert cpu_fft.rfft(u.float()).dtype == torch.complex64
    assert cpu_fft.rfft(u.clone().requires_grad_()) is None and cpu_fft.irfft(u_hat, 47) is None
