"""The dense ETDRK4 step with one Triton kernel a stage (``solvers.fused_dense``) gives the torch dense
step, or is not used.

The kernel runs under Triton's CPU interpreter where Triton is installed (in a subprocess: Triton reads
``TRITON_INTERPRET`` when kernels are defined) and natively on a GPU. The safety net (kernels that fail
or disagree on the first check are dropped) is checked everywhere with stand-ins.
"""
from __future__ import annotations

import pytest
import torch

from conftest import fused_and_unfused, run_in_triton_interpreter, time_dependent_closure
from solvers import KuramotoSivashinskySpectral, fused_dense, fused_stages

needs_cuda_and_triton = pytest.mark.skipif(not (torch.cuda.is_available() and fused_stages.HAVE_TRITON),
                                           reason="needs a CUDA device and Triton")

INTERPRETED = """
import json, torch
from solvers import KuramotoSivashinskySpectral, fused_dense
from tests.conftest import fused_and_unfused, time_dependent_closure
results = []
for dtype in (torch.float64, torch.float32):
    # n = 48: columns and k not multiples of the tiles; batch 17: a partial row tile
    for n_points, batch in ((48, 17), (16, 3)):
        for closure in (None, time_dependent_closure):
            solver, fused, unfused = fused_and_unfused(n_points, batch, dtype=dtype, closure=closure, steps=10,
                                                       implementation="dense")
            stepper = next(iter(solver._dense.values()))
            results.append({"dtype": str(dtype), "closure": closure is not None, "fused": stepper.fused is not None,
                            "split": stepper.fused is not None and stepper.fused.split,
                            "error": float((fused - unfused).abs().max() / unfused.abs().max()),
                            "moved": float((unfused[:, -1] - unfused[:, 0]).abs().max())})
# the other choice of split than the default one (the default splits 9 operand blocks here, not 5)
for closure, split in ((None, True), (time_dependent_closure, False)):
    fused_dense.splits = lambda *args, split=split: split
    solver, fused, unfused = fused_and_unfused(48, 17, closure=closure, steps=10, implementation="dense")
    stepper = next(iter(solver._dense.values()))
    results.append({"dtype": "forced split" if split else "forced unsplit", "closure": closure is not None,
                    "fused": stepper.fused is not None, "split": stepper.fused is not None and stepper.fused.split,
                    "error": float((fused - unfused).abs().max() / unfused.abs().max()),
                    "moved": float((unfused[:, -1] - unfused[:, 0]).abs().max())})
# closures answering in another dtype, or with a non-contiguous tensor: read as the torch step's copy would
odd = {"float64 term": lambda t, u: 0.1 * torch.sin(u.double()),
       "transposed term": lambda t, u: (0.1 * torch.sin(u)).t().contiguous().t()}
fused_dense.splits = lambda *args: True
for name, closure in odd.items():
    solver, fused, unfused = fused_and_unfused(32, 3, dtype=torch.float32, closure=closure, steps=10,
                                               implementation="dense")
    stepper = next(iter(solver._dense.values()))
    results.append({"dtype": name, "closure": True, "fused": stepper.fused is not None, "split": True,
                    "error": float((fused - unfused).abs().max() / unfused.abs().max()),
                    "moved": float((unfused[:, -1] - unfused[:, 0]).abs().max())})
# the solver's closure sees exactly its 4 stage calls a step, at the stage times (not the check's stand-in)
calls = []
def counting(t, u):
    calls.append(float(t))
    return 0.01 * u
solver = KuramotoSivashinskySpectral(n_points=16, implementation="dense", closure=counting)
with torch.no_grad():
    solver.rollout(torch.cos(2 * torch.pi * solver.x / 22.0).repeat(2, 1), 2)
# closures whose outputs share memory: written into one buffer of their own (read in place, the kernels
# would see the last call's output for C(u), C(a), C(b)), or one constant tensor; and one that starts
# reusing its buffer only after the first step (caught after that step, with a warning)
class OneBuffer:
    def __init__(self, after=0):
        self.buffer, self.calls, self.after = None, 0, after
    def __call__(self, t, u):
        self.calls += 1
        if self.calls <= self.after:
            return 0.1 * torch.sin(u)
        if self.buffer is None:
            self.buffer = torch.empty_like(u)
        return torch.mul(torch.sin(u), 0.1, out=self.buffer)
constant = 0.05 * torch.ones(3, 16, dtype=torch.float64)
sharing = {}
import warnings
for name, closure in {"one buffer": OneBuffer(), "constant": lambda t, u: constant,
                      "fresh": lambda t, u: 0.1 * torch.sin(u), "one buffer later": OneBuffer(after=8)}.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        solver, fused, unfused = fused_and_unfused(16, 3, closure=closure, steps=10, implementation="dense")
    step = next(iter(solver._dense.values())).fused
    sharing[name] = {"fused": step is not None, "in_place": step is not None and step.outputs_in_place,
                     "error": float((fused - unfused).abs().max() / unfused.abs().max()),
                     "warned": any("shared memory" in str(w.message) for w in caught)}
# another closure on the same solver (same stepper): looked at afresh, not read in place on trust
solver, fused, unfused = fused_and_unfused(16, 3, closure=lambda t, u: 0.1 * torch.sin(u), steps=10,
                                           implementation="dense")
one_buffer = OneBuffer()
solver.closure = one_buffer
reference = KuramotoSivashinskySpectral(n_points=16, implementation="dense", closure=one_buffer)
reference.fused_updates = False
u0 = fused[:, -1].clone()
with torch.no_grad():
    swapped, expected = solver.rollout(u0, 10)[:, -1], reference.rollout(u0, 10)[:, -1]
sharing["swapped"] = {"fused": next(iter(solver._dense.values())).fused is not None,
                      "in_place": next(iter(solver._dense.values())).fused.outputs_in_place,
                      "error": float((swapped - expected).abs().max() / expected.abs().max()), "warned": False}
print(json.dumps({"results": results, "calls": calls, "sharing": sharing,
                  "fused": next(iter(solver._dense.values())).fused is not None}))
"""


def test_fused_dense_stages_match_the_torch_dense_step_in_the_triton_interpreter():
    printed = run_in_triton_interpreter(INTERPRETED)
    assert len(printed["results"]) == 12
    for result in printed["results"]:
        assert result["fused"], result  # the kernels passed their first check and ran
        # split by default with a closure (9 operand blocks) on these small grids, not without one
        expected_split = {"forced split": True, "forced unsplit": False}.get(result["dtype"], result["closure"])
        assert result["split"] == expected_split, result
        tolerance = 2e-5 if result["dtype"] == "torch.float32" or "term" in result["dtype"] else 1e-13
        assert result["error"] < tolerance, result
        assert result["moved"] > 0.1, result
    assert printed["fused"] and printed["calls"] == [0.0, 0.125, 0.125, 0.25, 0.25, 0.375, 0.375, 0.5]
    sharing = printed["sharing"]
    for name in ("one buffer", "constant", "fresh", "swapped"):  # every step right; only fresh outputs in place
        result = sharing[name]
        assert result["fused"] and result["error"] < 1e-13 and not result["warned"], (name, sharing)
        assert sharing[name]["in_place"] == (name == "fresh"), (name, sharing)
    # fresh outputs in the first two steps (read in place from the second), then one buffer: that step is
    # said to be unreliable (caught after it), and the outputs are copied from then on
    assert sharing["one buffer later"]["warned"] and not sharing["one buffer later"]["in_place"], sharing


def stand_in(broken: str):
    """A ``FusedDenseStep`` for the CPU: correct (the stepper's torch step), raising, or doing nothing."""

    class StandIn(fused_dense.FusedDenseStep):
        calls = 0

        def accepts(self, u):
            return u.shape == self.stepper.u.shape

        def step(self, u):
            return self._run(u, lambda: self.stepper.step(u))

        def step_with_closure(self, u, closure, times, closure_key=None):
            return self._run(u, lambda: self.stepper.step_with_closure(u, closure, times))

        def _run(self, u, torch_step):
            type(self).calls += 1
            if broken == "raises":
                raise RuntimeError("PTX compilation failed")
            if broken == "does nothing":
                return u.clone()
            saved, self.stepper.fused = self.stepper.fused, None  # the torch step, not this one again
            try:
                return torch_step()
            finally:
                self.stepper.fused = saved

    return StandIn


@pytest.mark.parametrize("closure", [None, time_dependent_closure], ids=["bare", "closure"])
@pytest.mark.parametrize("broken", ["raises", "does nothing"])
def test_fused_dense_stages_that_fail_their_first_check_are_dropped(monkeypatch, broken, closure):
    step_type = stand_in(broken)
    monkeypatch.setattr(fused_dense, "available", lambda u: True)
    monkeypatch.setattr(fused_dense, "FusedDenseStep", step_type)
    with pytest.warns(RuntimeWarning, match="failed" if broken == "raises" else "differ from the unfused"):
        solver, fused, unfused = fused_and_unfused(16, 3, closure=closure, implementation="dense", steps=4)
    assert not solver.fused_updates and step_type.calls == 1  # tried once, then never again
    assert next(iter(solver._dense.values())).fused is None
    torch.testing.assert_close(fused, unfused, rtol=0, atol=0)


def test_a_correct_fused_dense_step_is_used_and_never_calls_the_closure_in_its_check(monkeypatch):
    step_type = stand_in("correct")
    monkeypatch.setattr(fused_dense, "available", lambda u: True)
    monkeypatch.setattr(fused_dense, "FusedDenseStep", step_type)
    calls = []

    def noisy_closure(t, u):
        calls.append(float(t))
        return 0.01 * torch.randn_like(u)

    solver = KuramotoSivashinskySpectral(n_points=16, implementation="dense", closure=noisy_closure)
    u = torch.cos(2 * torch.pi * solver.x / 22.0).repeat(3, 1)
    u[1] = float("nan")  # blown up from the start: the check runs on its own probe, not on the state
    with torch.no_grad():
        saved = solver.rollout(u, 2)
    assert solver.fused_updates and next(iter(solver._dense.values())).fused is not None
    assert step_type.calls == 1 + 2  # the check, then both steps
    assert calls == [0.0, 0.125, 0.125, 0.25, 0.25, 0.375, 0.375, 0.5]
    assert torch.isfinite(saved[[0, 2]]).all() and torch.isnan(saved[1, -1]).all()


def test_a_dense_stepper_without_closure_slots_refuses_a_closure():
    solver = KuramotoSivashinskySpectral(n_points=16)
    u = torch.ones(2, 16, dtype=torch.float64)
    with torch.no_grad():
        stepper = solver._dense_stepper(u, solver.dt)
    times = (torch.zeros(()),) * 3
    with pytest.raises(ValueError, match="no closure slots"):
        stepper.step_with_closure(u, lambda t, x: x, times)


def test_the_split_is_refused_where_its_partials_overflow_32_bit_indices():
    from solvers.etdrk4_stepping import DenseStepper

    n, batch = 16, 2**29 // 16 + 1  # the state fits 32-bit indices, its 5 partial blocks do not
    matrices = tuple(torch.empty(k * n, n, device="meta") for k in (2, 3, 3, 5))
    stepper = DenseStepper(matrices, batch, n, dtype=torch.float32, device=torch.device("meta"))
    assert not fused_dense.FusedDenseStep(stepper, split=True).split
    small = DenseStepper(matrices, 64, n, dtype=torch.float32, device=torch.device("meta"))
    assert fused_dense.FusedDenseStep(small, split=True).split


def test_fused_dense_is_not_used_for_states_it_cannot_read():
    pytest.importorskip("triton")
    assert not fused_dense.available(torch.empty(4, 16))  # a CPU tensor, not interpreted: the C kernels' turf
    stepper_like = torch.empty(4, 16, device="meta")
    original = fused_dense.INTERPRETED
    try:
        fused_dense.INTERPRETED = True
        assert fused_dense.available(stepper_like)
        assert not fused_dense.available(torch.empty(4, 16, dtype=torch.float16, device="meta"))
        assert not fused_dense.available(torch.empty(2**31 // 16 + 1, 16, device="meta"))  # 32-bit indices
        assert not fused_dense.available(torch.empty(1, 16_000, device="meta"))  # the 9 n x n matrix
    finally:
        fused_dense.INTERPRETED = original


@pytest.mark.parametrize(("batch", "n", "tiles"), [(1, 64, (16, 32, 64)), (300, 16, (16, 16, 16)),
                                                   (64, 48, (16, 32, 64)), (1024, 256, (32, 32, 64))])
def test_tile_sizes_are_what_tl_dot_takes(batch, n, tiles):
    assert fused_dense.tile_sizes(batch, n) == tiles


def test_the_split_is_chosen_as_measured_on_an_h100():
    """benchmarks/ks_dense_fused.py --sweep on an H100 (132 multiprocessors), batch 64: split with a
    closure at N = 64 (9 blocks of one k stride), not without (5 blocks); split at N = 256 (and 512, timed split only);
    not where the tiles alone fill half the GPU (N = 64, batch 1024: 128 tiles)."""
    def split(batch, n, blocks):
        block_m, block_n, block_k = fused_dense.tile_sizes(batch, n)
        tiles = -(-batch // block_m) * -(-n // block_n)
        return fused_dense.splits(tiles, blocks, n, block_k, 132)

    assert split(64, 64, 9) and not split(64, 64, 5)
    assert split(64, 256, 9) and split(64, 256, 5) and split(64, 512, 5)
    assert not split(1024, 64, 9)


@needs_cuda_and_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("closure", [None, time_dependent_closure], ids=["bare", "closure"])
def test_fused_dense_stages_match_the_torch_dense_step_on_cuda(dtype, closure, recwarn):
    splits = []
    for n_points, batch in ((64, 64), (256, 3), (48, 17), (128, 4096)):  # the last in 512 tiles: not split
        solver, fused, unfused = fused_and_unfused(n_points, batch, dtype=dtype, closure=closure, device="cuda",
                                                   implementation="dense")
        step = next(iter(solver._dense.values())).fused
        assert solver.fused_updates and step is not None
        splits.append(step.split)
        tolerance = 1e-12 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(fused, unfused, rtol=0, atol=tolerance * unfused.abs().max().item())
    # the default choice (``splits``): 5 blocks of one k stride (N = 48, 64, bare) are not split
    assert splits == ([True, True, True, False] if closure else [False, True, False, False])
    assert not [w for w in recwarn if "fused" in str(w.message) or "CUDA graphs" in str(w.message)]


@needs_cuda_and_triton
def test_the_split_sum_has_the_same_bits_at_every_launch_on_cuda():
    """The last program of a tile adds the partials in block order whichever program that is: a race
    between the programs' stores and the reducer's loads (memory ordering) would show as other bits in
    some launch, or as a different sum than the products' one."""
    from conftest import smooth_state

    solver = KuramotoSivashinskySpectral(n_points=256, implementation="dense", closure=time_dependent_closure,
                                         device="cuda")
    u = smooth_state(solver, 3, device="cuda")
    with torch.no_grad():
        stepper = solver._dense_stepper(u, solver.dt)
        fused = stepper.fused
        assert fused is not None and fused.split
        operands = tuple((u * (1 + 0.1 * i), i % 2 == 1) for i in range(9))
        first = fused._stage(torch.empty_like(u), stepper.final_matrix, operands)
        reference = torch.cat([x * x if squared else x for x, squared in operands], dim=1) @ stepper.final_matrix
        torch.testing.assert_close(first, reference, rtol=0, atol=1e-12 * reference.abs().max().item())
        differing = torch.zeros((), dtype=torch.int64, device="cuda")
        for _ in range(3000):
            differing += (fused._stage(torch.empty_like(u), stepper.final_matrix, operands) != first).sum()
        assert differing.item() == 0
        assert int(fused.counters.abs().sum()) == 0  # every tile's counter back at zero
