"""The rollout engine (hybridnde.rollout) against values worked out by hand: a host that doubles its
state every step (``du/dt = u`` by forward Euler with ``dt = 1``, exact in float64), so each saved
state, each member's first save past the blow-up threshold, the chunks and the batch's compactions
are known in advance; and the memory arithmetic of automatic batches and the chunk check."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hybridnde import memory
from hybridnde.config import ConfigError
from hybridnde.rollout import BatchRunner, SaveSchedule, auto_batch_size, check_chunk_memory
from solvers.closure_only import ClosureOnly

NAN = float("nan")


def doubling_host(times: list[float] | None = None) -> ClosureOnly:
    """``u <- u + 1 * u`` each step; ``times`` collects the ``t`` the closure sees."""
    def closure(t, u):
        if times is not None:
            times.append(float(t))
        return u

    return ClosureOnly(state_shape=(2,), dt=1.0, integrator="euler", closure=closure)


def run_all(runner: BatchRunner, u0: list[list[float]]):
    state = runner.start(0, torch.tensor(u0, dtype=torch.float64))
    chunks = []
    while not runner.finished(state):
        chunks.append(runner.advance(state))
    return state, chunks


def test_each_member_is_marked_at_its_first_save_past_the_bound_and_is_nan_from_then_on():
    """Doubling from 1, -1, 3, 1/16, 16 with threshold 8: 8 is on the bound, 16 past it; saves 0..6."""
    schedule = SaveSchedule(steps=6, save_every=1, time_chunk=3, dt=1.0)
    runner = BatchRunner(doubling_host(), schedule, blowup_threshold=8.0, capacity=5)
    state, chunks = run_all(runner, [[1.0, 0.0], [0.0, -1.0], [3.0, 3.0], [0.0625, 0.0], [16.0, 0.0]])
    # 1: 1 2 4 8 | 16 -> save 4; -1: the same on the other side; 3: 3 6 12 -> save 2; 1/16 reaches 4; 16: save 0
    assert state.first_bad_save.tolist() == [4, 4, 2, -1, 0]
    assert [c.first_bad_save.tolist() for c in chunks] == [[-1, -1, 2, -1, 0], [4, 4, 2, -1, 0], [4, 4, 2, -1, 0]]
    u = np.concatenate([c.values for c in chunks], axis=1)
    assert u.shape == (5, 7, 2)
    np.testing.assert_array_equal(u[0, :, 0], [1, 2, 4, 8, NAN, NAN, NAN])
    np.testing.assert_array_equal(u[1, :, 1], [-1, -2, -4, -8, NAN, NAN, NAN])
    np.testing.assert_array_equal(u[2, :, 0], [3, 6, NAN, NAN, NAN, NAN, NAN])
    np.testing.assert_array_equal(u[3, :, 0], [0.0625 * 2**k for k in range(7)])
    assert np.isnan(u[4]).all()
    # chunks hold saves 0-2, 3-5, 6: steps 1-2, 3-5, 6; the four dead of five are dropped after the second
    assert [(c.save_start, c.steps, c.stepped, c.last) for c in chunks] == [
        (0, 2, 5, False), (3, 3, 5, False), (6, 1, 1, True)]


def test_a_chunk_keeps_the_marks_it_was_returned_with():
    """A returned chunk's ``first_bad_save`` is its own: the next chunk's blow-ups do not reach it."""
    schedule = SaveSchedule(steps=6, save_every=1, time_chunk=3, dt=1.0)
    runner = BatchRunner(doubling_host(), schedule, blowup_threshold=8.0, capacity=2)
    state = runner.start(0, torch.tensor([[1.0, 0.0], [0.0625, 0.0]], dtype=torch.float64))
    first = runner.advance(state)
    runner.advance(state)
    assert state.first_bad_save.tolist() == [4, -1] and first.first_bad_save.tolist() == [-1, -1]


def test_survivors_keep_their_rows_through_two_compactions():
    """Two of four dead at save 0 drop them; the third dies at save 4 and is dropped: the last stays row 3."""
    schedule = SaveSchedule(steps=6, save_every=1, time_chunk=2, dt=1.0)
    runner = BatchRunner(doubling_host(), schedule, blowup_threshold=8.0, capacity=4)
    state, chunks = run_all(runner, [[16.0, 0.0], [1.0, 0.0], [-16.0, 0.0], [2.0**-6, 0.0]])
    assert state.first_bad_save.tolist() == [0, 4, 0, -1] and state.rows.tolist() == [3]
    assert [c.stepped for c in chunks] == [4, 2, 2, 1]
    u = np.concatenate([c.values for c in chunks], axis=1)
    np.testing.assert_array_equal(u[3, :, 0], [2.0**(k - 6) for k in range(7)])
    np.testing.assert_array_equal(u[1, :, 0], [1, 2, 4, 8, NAN, NAN, NAN])
    assert np.isnan(u[[0, 2]]).all()


def test_save_every_keeps_every_kth_state_and_skips_the_steps_after_the_last_save():
    """steps = 7, save_every = 2: saves after 0, 2, 4, 6 steps; the 7th step is never taken."""
    times: list[float] = []
    schedule = SaveSchedule(steps=7, save_every=2, time_chunk=3, dt=1.0, t0=10.0)
    runner = BatchRunner(doubling_host(times), schedule, blowup_threshold=1e6, capacity=1)
    _, chunks = run_all(runner, [[1.0, -1.0]])
    u = np.concatenate([c.values for c in chunks], axis=1)
    np.testing.assert_array_equal(u[0, :, 0], [1, 4, 16, 64])
    assert [c.steps for c in chunks] == [4, 2] and schedule.steps_run == 6
    # the closure sees t0 + (step - 1) * dt for steps 1..6, across the chunk boundary too
    assert times == [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    np.testing.assert_array_equal(schedule.times(), [10.0, 12.0, 14.0, 16.0])


def test_a_run_shorter_than_its_chunk_is_sized_by_its_saves():
    """11 saves with ``time_chunk = 1000``: the chunk check counts 3 copies of 11 saves, not of 1000."""
    solver = SimpleNamespace(state_shape=(4,), dtype=torch.float64)
    schedule = SaveSchedule(steps=10, save_every=1, time_chunk=1000, dt=0.1)
    needed = 3 * 5 * 11 * 4 * 8  # copies x members x saves x state x bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "available_memory", lambda: needed)
        check_chunk_memory(solver, 5, schedule, fix="fix it")
        patch.setattr(memory, "available_memory", lambda: needed - 1)
        with pytest.raises(ConfigError, match="chunk of 11 saves"):
            check_chunk_memory(solver, 5, schedule, fix="fix it")


def test_automatic_batches_fit_the_budget_by_the_estimate_per_member():
    """40 state copies + two closure calls' activations + 2 x the chunk's saves per member, at least 1."""
    def cpu(shape, closure=None, device="cpu"):
        return SimpleNamespace(state_shape=shape, dtype=torch.float64, closure=closure, device=torch.device(device),
                               as_time=lambda t: torch.tensor(t, dtype=torch.float64))

    # (10,) float64: 40 x 80 + 2 x min(1000, 11) x 80 = 4960 bytes a member; 1 MiB // 4960 = 211
    assert auto_batch_size(cpu((10,)), memory_budget_mb=1, time_chunk=1000, n_saves=11) == 211
    assert auto_batch_size(cpu((10,)), memory_budget_mb=0.001, time_chunk=1000, n_saves=11) == 1
    assert auto_batch_size(cpu((10,)), memory_budget_mb=1e6, time_chunk=10, n_saves=11) == 1024
    assert auto_batch_size(cpu((10,), device="cuda"), memory_budget_mb=1e6, time_chunk=10, n_saves=11) == 16384
    # a plain callable counts 4 states a call: (1000,) float64 -> 32,000 bytes, 8 MiB // 32,000 = 262 on a CPU
    def plain(t, u):
        return u

    assert auto_batch_size(cpu((1000,), plain), memory_budget_mb=1e6, time_chunk=10, n_saves=11) == 262
    assert auto_batch_size(cpu((1000,), plain, "cuda"), memory_budget_mb=1e6, time_chunk=10, n_saves=11) == 16384
    # (100000,): 3.2 MB a call would allow 2; at least 16
    assert auto_batch_size(cpu((100000,), plain), memory_budget_mb=1e6, time_chunk=10, n_saves=11) == 16

    class Wide(torch.nn.Module):  # one layer of 4096 float64 outputs a member: 32,768 bytes, 8 MiB // 32,768 = 256
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 4096).double()

        def forward(self, t, u):
            return self.layer(u)[:, :4]

    assert auto_batch_size(cpu((4,), Wide()), memory_budget_mb=1e6, time_chunk=10, n_saves=11) == 256


def test_a_state_without_components_never_blows_up():
    """Neither non-finite nor past the bound: no component, so no blow-up (-1 for every member)."""
    from hybridnde.rollout import first_blowup

    assert first_blowup(np.zeros((3, 4, 0)), 8, 1.0).tolist() == [-1, -1, -1]


def test_the_device_buffer_holds_no_more_saves_than_the_run_has():
    """11 saves with ``time_chunk = 1000``: the preallocated buffer holds 11 saves a member, not 1000."""
    schedule = SaveSchedule(steps=10, save_every=1, time_chunk=1000, dt=1.0)
    runner = BatchRunner(doubling_host(), schedule, blowup_threshold=1e6, capacity=3)
    assert tuple(runner._buffer.shape) == (3, 11, 2)


def test_a_float32_state_just_past_the_bound_is_marked():
    """NumPy rounds the Python float threshold to float32 for the comparison, here up (1e6 + 0.04 to
    1e6 + 0.0625): a float32 state of 1e6 + 0.0625, past the bound, was not marked."""
    from hybridnde.rollout import first_blowup

    def marked(value, threshold):
        return first_blowup(np.full((1, 2, 1), value), 0, threshold).tolist() == [0]

    assert marked(np.float32(1000000.0625), 1000000.04) and marked(np.float32(-1000000.0625), 1000000.04)
    assert not marked(np.float32(1000000.0), 1000000.04) and not marked(np.float32(1e6), 1e6)
    assert marked(np.float32(np.inf), 1e39) and not marked(np.float32(3e38), 1e39)  # a bound past float32's range
