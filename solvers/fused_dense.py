"""The dense ETDRK4 step (``solvers.etdrk4_stepping.DenseStepper``) with each stage one Triton kernel.

Replayed as a CUDA graph, a small step costs what its kernels cost one after another (a few
microseconds each), not what they compute. ``DenseStepper`` makes every stage one matrix product over
a workspace, but filling the workspace takes kernels of their own: the squares of the stage values and,
with a closure, copies of the closure's outputs -- 13 kernels a step with a closure, 9 without. Here
each stage's product reads its operands where they are and squares them as it loads
(``solvers._dense_kernels.dense_stage``)::

    a  = [u | u^2 (| C(u))] @ A
    b  = [a^2 (| C(a)) | u] @ B
    d  = [u | u^2 (| C(u)) | b^2 (| C(b))] @ D
    u+ = [a^2 (| C(a)) | u | u^2 (| C(u)) | b^2 (| C(b)) | d^2 (| C(d))] @ F

with the stepper's own stacked matrices (their row blocks follow the workspace's slots, which are
these operands in this order): 4 kernels a step with or without a closure, the closure's outputs read
in place where that is safe (``FusedDenseStep.step_with_closure``). Only the summation order of the
products changes (tested against the torch step).

Triton ships with CUDA builds of torch; ``TRITON_INTERPRET=1`` runs the kernel on the CPU (tests).
On the CPU the compiled C dense step (``solvers.compiled_steps.DenseStep``) is used instead.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from .fused_stages import HAVE_TRITON, INTERPRETED

if TYPE_CHECKING:
    from .etdrk4_stepping import DenseStepper

__all__ = ["available", "FusedDenseStep", "multiprocessors", "splits", "tile_sizes"]

#: the kernel indexes with 32-bit integers: rows times ``n`` of the state, block rows times ``n`` of a matrix
MAX_ENTRIES = 2**31 - 1


def available(u: Tensor) -> bool:
    """Whether ``u: (batch, n)`` can take the fused dense step: Triton for a CUDA tensor (or any, when
    interpreted), a floating dtype Triton's products keep exact (float32 or float64), few enough
    entries for 32-bit indices (the largest matrix, ``9 n`` by ``n``, included)."""
    if not (HAVE_TRITON and (INTERPRETED or u.device.type == "cuda")) or u.ndim != 2:
        return False
    batch, n = u.shape
    return u.dtype in (torch.float32, torch.float64) and max(batch * n, 9 * n * n) <= MAX_ENTRIES


def tile_sizes(batch: int, n: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K)`` of the kernel for states ``(batch, n)``: small output tiles, so
    that even one small step spreads over many of the GPU's multiprocessors (16 is the least ``tl.dot``
    takes), taller ones for large states, and long strides through ``k`` (measured on an H100 with
    benchmarks/ks_dense_fused.py --sweep: docs/performance.md)."""
    block_m = 16 if batch * n <= 65536 else 32
    block_n = 16 if n <= 16 else 32
    return block_m, block_n, min(64, max(16, 1 << (n - 1).bit_length()))


def splits(tiles: int, most_blocks: int, n: int, block_k: int, multiprocessors: int) -> bool:
    """Whether to give each operand block its own program: when the output tiles alone leave more than
    half the GPU's multiprocessors idle and each tile's serial sum is long (the largest stage's blocks
    times its ``k`` strides at least 8). Measured on an H100: at N = 64 the split pays with a closure
    (9 blocks; 22.9 against 24.7 us a step at batch 64), not without one (5 blocks; 18.3 against
    15.1 us); at N = 256 it pays (26.7 against 34.5 us at batch 64; N = 512 was timed split only)."""
    return tiles < multiprocessors // 2 and most_blocks * -(-n // block_k) >= 8


def multiprocessors(device: torch.device) -> int:
    """The GPU's multiprocessor count (a stand-in of 132, an H100's, where the kernel is interpreted)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


class FusedDenseStep:
    """``stepper.step`` and ``stepper.step_with_closure`` as 4 kernel launches a step.

    Set on a ``DenseStepper`` by its owner (``stepper.fused``) once it made the torch step's increment
    on a probe; used for the states it ``accepts``. Without a closure the stage values live in reused
    buffers; with one they are fresh tensors, since the closure may keep them. ``split``: one program
    per output tile and operand block (``solvers._dense_kernels``); by default where ``splits`` says.
    ``tiles``: ``(BLOCK_M, BLOCK_N, BLOCK_K)``, by default ``tile_sizes``'."""

    def __init__(self, stepper: DenseStepper, tiles: tuple[int, int, int] | None = None, split: bool | None = None):
        self.stepper = stepper
        like = stepper.u
        batch, n = like.shape
        self.batch, self.n = batch, n
        self.tiles = tiles or tile_sizes(batch, n)
        block_m, block_n, _ = self.tiles
        self.grid = ((batch + block_m - 1) // block_m, (n + block_n - 1) // block_n)
        tiles_count = self.grid[0] * self.grid[1]
        most = 9 if stepper.with_closure else 5  # operand blocks of the final stage
        if split is None:
            split = splits(tiles_count, most, n, self.tiles[2], multiprocessors(like.device))
        self.split = split and most * batch * n <= MAX_ENTRIES  # the partials, indexed with 32 bits too
        self.partials = like.new_empty((most, batch, n)) if self.split else like.new_empty(0)
        self.counters = torch.zeros(tiles_count if self.split else 1, dtype=torch.int32, device=like.device)
        self.stages = None if stepper.with_closure else tuple(torch.empty_like(like) for _ in range(3))
        #: the closure's outputs are read in place (not copied): learned from the first step's (``_note_outputs``)
        self.outputs_in_place = False
        self.closure_key: object = None  # which closure ``outputs_in_place`` was learned from

    def accepts(self, u: Tensor) -> bool:
        """Whether ``u`` is a state the kernel may read as raw memory: the stepper's shape, dtype and
        device, contiguous, no lazy negation, no autograd history."""
        like = self.stepper.u
        return (u.shape == like.shape and u.dtype == like.dtype and u.device == like.device and u.is_contiguous()
                and not u.is_neg() and not u.requires_grad)

    def _stage(self, out: Tensor, matrix: Tensor, operands: tuple[tuple[Tensor, bool], ...]) -> Tensor:
        """``out = [f(x) for x, squared in operands] @ matrix`` in one launch (``f``: square or identity)."""
        from . import _dense_kernels as kernels  # Triton, on first use

        count = len(operands)
        tensors = [x for x, _ in operands] + [operands[0][0]] * (9 - count)
        squared = {f"S{i}": i < count and operands[i][1] for i in range(9)}
        block_m, block_n, block_k = self.tiles
        grid = (*self.grid, count) if self.split else self.grid
        kernels.dense_stage[grid](out, matrix, *tensors, self.partials, self.counters, self.batch, n=self.n,
                                  COUNT=count, **squared, SPLIT=self.split, BLOCK_M=block_m, BLOCK_N=block_n,
                                  BLOCK_K=block_k)
        return out

    def _device(self, u: Tensor):
        # Triton launches on the current device (and its stream), not the tensors' one
        return torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext()

    def step(self, u: Tensor) -> Tensor:
        """``stepper.step(u)``: a new ``(batch, n)`` tensor one step later."""
        s = self.stepper
        a, b, d = self.stages
        with self._device(u):
            self._stage(a, s.a_matrix, ((u, False), (u, True)))
            self._stage(b, s.b_matrix, ((a, True), (u, False)))
            self._stage(d, s.d_matrix, ((u, False), (u, True), (b, True)))
            return self._stage(torch.empty_like(u), s.final_matrix,
                               ((a, True), (u, False), (u, True), (b, True), (d, True)))

    def step_with_closure(self, u: Tensor, closure: Callable[[Tensor, Tensor], Tensor],
                          times: tuple[Tensor, Tensor, Tensor], *, closure_key: object = None) -> Tensor:
        """``stepper.step_with_closure(u, closure, times)``; the closure sees fresh tensors (``u`` first).

        The kernels read the closure's outputs where they are, up to three closure calls later (``C(u)``
        in the last stage). A closure that writes every output into one buffer of its own would have
        overwritten them by then (the torch step copies each at once), so the first step of a closure
        copies them too and looks: only if its 4 outputs are 4 different tensors are they read in place
        from then on. ``closure_key`` (default: ``closure`` itself) says which closure this is: another
        one is looked at afresh. A closure that starts sharing buffers later is caught after that step
        (``_note_outputs``). Not caught: a closure that changes, in place, a tensor it returned earlier in
        the step; the hook's contract rules that out (docs/closure-hook.md), since copying every output
        costs four kernels a step."""
        key = closure if closure_key is None else closure_key
        if key is not self.closure_key:
            self.closure_key, self.outputs_in_place = key, False
        s, empty = self.stepper, torch.empty_like
        start, half, end = times
        outputs: list[Tensor] = []  # the closure's own tensors the kernels read (not converted copies)
        copy = not self.outputs_in_place

        def term(t: Tensor, x: Tensor) -> Tensor:
            output = closure(t, x)
            operand = self._operand(output, u)
            if operand is not output:  # converted (another dtype or device): a fresh copy already
                return operand
            outputs.append(output)
            return output.clone() if copy else output

        with self._device(u):
            c_u = term(start, u)
            a = self._stage(empty(u), s.a_matrix, ((u, False), (u, True), (c_u, False)))
            c_a = term(half, a)
            b = self._stage(empty(u), s.b_matrix, ((a, True), (c_a, False), (u, False)))
            c_b = term(half, b)
            d = self._stage(empty(u), s.d_matrix, ((u, False), (u, True), (c_u, False), (b, True), (c_b, False)))
            c_d = term(end, d)
            stepped = self._stage(empty(u), s.final_matrix, ((a, True), (c_a, False), (u, False), (u, True),
                                                             (c_u, False), (b, True), (c_b, False), (d, True),
                                                             (c_d, False)))
        self._note_outputs(outputs)
        return stepped

    def _note_outputs(self, outputs: list[Tensor]) -> None:
        """Read the closure's outputs in place from the next step on only if this step's share no memory."""
        distinct = len({output.untyped_storage().data_ptr() for output in outputs}) == len(outputs)
        if self.outputs_in_place and not distinct:
            warnings.warn("the closure's outputs of one step shared memory (one tensor returned twice, or a "
                          "buffer reused between calls); the fused dense step had read them in place, which is "
                          "wrong if the closure wrote into a tensor it had returned earlier in the step; it "
                          "copies them from now on", RuntimeWarning, stacklevel=4)
        self.outputs_in_place = distinct

    @staticmethod
    def _operand(term: Tensor, u: Tensor) -> Tensor:
        """The closure's output as the kernel reads it: ``u``'s dtype and device, contiguous (what the
        torch step's copy into its workspace does; a no-op for the usual output)."""
        return term.to(device=u.device, dtype=u.dtype).contiguous()
