"""The Triton kernel of ``solvers.fused_dense`` (imported only when a fused dense step runs: importing
Triton costs ~0.15 s, which CPU users need not pay).

One ETDRK4 stage of ``DenseStepper`` is ``out = [f_0(x_0) | f_1(x_1) | ...] @ M``: the stage's
operands (the state, stage values, closure outputs), each squared or not, side by side against the
stacked ``(count n, n)`` matrix. ``dense_stage`` reads the operands where they are and squares while it
loads, so the squares and the copies into a workspace are not kernels of their own.

Small steps have too few output tiles to occupy the GPU, and each tile's sum over ``count n`` terms
is then a long serial loop. ``SPLIT`` gives every operand block its own program instead (split-K):
each stores its partial tile, and the last of a tile's programs to finish (a counter per tile) adds
the partials up in block order and writes the tile -- one launch, and the same sum in the same order
whichever program finishes last, so the result is deterministic (unlike atomic additions into ``out``).
"""
# ruff: noqa: SIM102 -- ``if COUNT > i:`` (compile time) around ``if which == i:`` (run time) stays nested: joined
# by ``and``, the whole condition would be a run-time one and blocks a stage does not have would be compiled in
import triton
import triton.language as tl


@triton.jit
def _accumulate(acc, x, matrix, block, rows, columns, row_mask, column_mask,
                n: tl.constexpr, SQUARE: tl.constexpr, BLOCK_K: tl.constexpr):
    """``acc + f(x[rows, :]) @ matrix[block n : (block + 1) n, columns]``, ``f`` the square or identity;
    ``x: (batch, n)`` and ``matrix`` contiguous."""
    for start in range(0, n, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        k_mask = k < n
        values = tl.load(x + rows[:, None] * n + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if SQUARE:
            values = values * values
        weights = tl.load(matrix + (block * n + k)[:, None] * n + columns[None, :],
                          mask=k_mask[:, None] & column_mask[None, :], other=0.0)
        # "ieee": float32 operands stay float32 (Triton's default would round them to TF32)
        acc = tl.dot(values, weights, acc, input_precision="ieee", out_dtype=acc.dtype)
    return acc


@triton.jit
def _block(acc, which, x0, x1, x2, x3, x4, x5, x6, x7, x8, matrix, rows, columns, row_mask, column_mask,
           n: tl.constexpr, COUNT: tl.constexpr, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
           S3: tl.constexpr, S4: tl.constexpr, S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr,
           S8: tl.constexpr, BLOCK_K: tl.constexpr):
    """``_accumulate`` over operand block ``which`` (a run-time index, < ``COUNT``)."""
    if which == 0:
        acc = _accumulate(acc, x0, matrix, 0, rows, columns, row_mask, column_mask, n, S0, BLOCK_K)
    if COUNT > 1:
        if which == 1:
            acc = _accumulate(acc, x1, matrix, 1, rows, columns, row_mask, column_mask, n, S1, BLOCK_K)
    if COUNT > 2:
        if which == 2:
            acc = _accumulate(acc, x2, matrix, 2, rows, columns, row_mask, column_mask, n, S2, BLOCK_K)
    if COUNT > 3:
        if which == 3:
            acc = _accumulate(acc, x3, matrix, 3, rows, columns, row_mask, column_mask, n, S3, BLOCK_K)
    if COUNT > 4:
        if which == 4:
            acc = _accumulate(acc, x4, matrix, 4, rows, columns, row_mask, column_mask, n, S4, BLOCK_K)
    if COUNT > 5:
        if which == 5:
            acc = _accumulate(acc, x5, matrix, 5, rows, columns, row_mask, column_mask, n, S5, BLOCK_K)
    if COUNT > 6:
        if which == 6:
            acc = _accumulate(acc, x6, matrix, 6, rows, columns, row_mask, column_mask, n, S6, BLOCK_K)
    if COUNT > 7:
        if which == 7:
            acc = _accumulate(acc, x7, matrix, 7, rows, columns, row_mask, column_mask, n, S7, BLOCK_K)
    if COUNT > 8:
        if which == 8:
            acc = _accumulate(acc, x8, matrix, 8, rows, columns, row_mask, column_mask, n, S8, BLOCK_K)
    return acc


@triton.jit
def dense_stage(out, matrix, x0, x1, x2, x3, x4, x5, x6, x7, x8, partials, counters, batch,
                n: tl.constexpr, COUNT: tl.constexpr,
                S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr, S3: tl.constexpr, S4: tl.constexpr,
                S5: tl.constexpr, S6: tl.constexpr, S7: tl.constexpr, S8: tl.constexpr,
                SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``out[rows, columns] = sum_i f_i(x_i) @ matrix`` block ``i``, for the first ``COUNT`` operands
    (``S_i``: square ``x_i``); one program per ``(BLOCK_M, BLOCK_N)`` tile of ``out: (batch, n)``, or
    with ``SPLIT`` one per tile and operand block (``partials: (COUNT, batch, n)`` scratch,
    ``counters``: one int32 per tile, zero before the launch and left zero after it). ``n`` is
    compiled in (one solver, one grid size): the loops over it have fixed trip counts."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    columns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask, column_mask = rows < batch, columns < n
    tile = rows[:, None] * n + columns[None, :]
    tile_mask = row_mask[:, None] & column_mask[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=out.dtype.element_ty)
    if SPLIT:
        which = tl.program_id(2)
        acc = _block(acc, which, x0, x1, x2, x3, x4, x5, x6, x7, x8, matrix, rows, columns, row_mask,
                     column_mask, n, COUNT, S0, S1, S2, S3, S4, S5, S6, S7, S8, BLOCK_K)
        tl.store(partials + which * batch * n + tile, acc, mask=tile_mask)
        # every thread's partial is stored before the counter moves (the release below orders them)
        tl.debug_barrier()
        counter = counters + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == COUNT - 1:  # the tile's last program
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=out.dtype.element_ty)
            for block in tl.static_range(COUNT):  # block order: the same sum whichever program is last
                # ".cg": from L2, where the other programs' partials are, not a stale L1 line
                total += tl.load(partials + block * batch * n + tile, mask=tile_mask, other=0.0, cache_modifier=".cg")
            tl.store(out + tile, total, mask=tile_mask)
            tl.atomic_xchg(counter, 0)  # ready for the next launch
    else:
        for which in tl.static_range(COUNT):
            acc = _block(acc, which, x0, x1, x2, x3, x4, x5, x6, x7, x8, matrix, rows, columns, row_mask,
                         column_mask, n, COUNT, S0, S1, S2, S3, S4, S5, S6, S7, S8, BLOCK_K)
        tl.store(out + tile, acc, mask=tile_mask)
