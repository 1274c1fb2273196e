"""The dense ETDRK4 step with one Triton kernel a stage against the torch dense step, per tile size.

    python benchmarks/ks_dense_fused.py --device cuda              # GPU (CUDA graphs, wall clock)
    python benchmarks/ks_dense_fused.py --device cuda --sweep      # every tile size in TILES too
    python benchmarks/ks_dense_fused.py --tiny                     # CI smoke run (Triton's CPU interpreter)

``KuramotoSivashinskySpectral(implementation="dense")`` over a grid of (N, batch), float64, L = 22,
``dt = 0.25``, through ``trajectory`` under ``torch.inference_mode`` (on a GPU every step replayed as a
CUDA graph), without and with a closure that costs nothing (it returns stored tensors, so the solver's
own work is what is timed: the "step, free closure" of closure_overhead.py). Contenders:

* ``torch``: ``DenseStepper``'s torch step: 4 matrix products (cuBLAS), 4 squares, the copies into its
  workspace (13 kernels a step with a closure, 9 without);
* ``fused``: ``solvers.fused_dense.FusedDenseStep`` with its default tiles (``tile_sizes``) and split:
  4 kernels a step;
* with ``--sweep``, ``fused MxNxK (split)``: the same with other tiles (``BLOCK_M x BLOCK_N x
  BLOCK_K``), with or without a program per operand block (``split``).

``deviation`` is the largest difference from the torch step after 20 steps relative to the field's
size (rounding only: the products sum in another order). On the CPU the kernels run in Triton's
interpreter: that checks the script, its timings mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (FreeClosure, add_common_arguments, clock_for, configure_threads, emit_json,  # noqa: E402
                    machine_description, on_gpu, print_table, synchronize, time_interleaved)

DOMAIN_LENGTH = 22.0
DT = 0.25
GPU_GRID = ([64, 128, 256, 512], [1, 16, 64, 256, 1024])
TINY_GRID = ([16], [2])
#: (tiles, split) of the --sweep contenders
VARIANTS = (((16, 32, 64), False), ((16, 16, 64), True), ((16, 32, 32), True), ((32, 32, 32), True),
            ((32, 64, 32), False))


def contender(variant, n_points: int, batch: int, steps: int, *, closure, device: str):
    """A run of ``steps`` dense steps; ``variant``: ``None`` for the torch step, else the fused kernels'
    ``(tiles, split)`` (``"default"``: their own choice). Returns ``(advance, final state of 20 steps)``."""
    import torch

    from solvers import KuramotoSivashinskySpectral, fused_dense

    solver = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, device=device,
                                         implementation="dense", closure=closure,
                                         capture_closure=closure is not None)
    x = solver.x
    phase = torch.arange(batch, dtype=torch.float64, device=device)[:, None] / max(batch, 1)
    u0 = torch.cos(2 * torch.pi * (x / DOMAIN_LENGTH + phase)) + 0.3 * torch.sin(6 * torch.pi * x / DOMAIN_LENGTH)
    with torch.inference_mode():
        stepper = solver._dense_stepper(u0, DT)  # made (and its fused kernels checked) before any graph
    if variant is None:
        stepper.fused = None
    elif stepper.fused is None:
        raise RuntimeError("the fused dense step is not available here (Triton, a GPU or TRITON_INTERPRET=1)")
    elif variant != "default":
        stepper.fused = fused_dense.FusedDenseStep(stepper, *variant)
    with torch.inference_mode():
        final = solver.rollout(u0, 20)[:, -1].clone()

    def advance():
        with torch.inference_mode():
            for _ in solver.trajectory(u0, steps, save_every=steps):
                pass
        synchronize(device)

    return advance, final, stepper.fused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--points", type=int, nargs="*", help="grid sizes N (default: a grid per device)")
    parser.add_argument("--batches", type=int, nargs="*", help="batch sizes (default: a grid per device)")
    parser.add_argument("--sweep", action="store_true", help="also time every variant in VARIANTS")
    args = parser.parse_args(argv)
    gpu = on_gpu(args.device)
    if not gpu:  # before Triton is imported: it reads the variable when kernels are defined
        os.environ["TRITON_INTERPRET"] = "1"
    threads = configure_threads(args.threads, args.cores)
    import torch

    points, batches = (TINY_GRID if args.tiny or not gpu else GPU_GRID)
    points, batches = args.points or points, args.batches or batches
    clock = clock_for(args.device)
    variants = {"torch": None, "fused": "default"}
    if args.sweep:
        variants.update({"fused " + "x".join(map(str, t)) + (" split" if split else ""): (t, split)
                         for t, split in VARIANTS})
    records = []
    for n_points in points:
        for batch in batches:
            steps = 2 if args.tiny else 50
            like = torch.zeros(batch, n_points, dtype=torch.float64, device=args.device)
            for closure in (None, FreeClosure(like)):
                runs = {}
                for name, variant in variants.items():
                    try:
                        runs[name] = contender(variant, n_points, batch, steps, closure=closure, device=args.device)
                    except Exception as error:  # noqa: BLE001 -- one contender that cannot run: say so, time the rest
                        print(f"N={n_points} batch={batch}: {name} failed: {type(error).__name__}: {error}",
                              file=sys.stderr)
                timings = time_interleaved({name: (run, steps) for name, (run, _, _) in runs.items()},
                                           repeats=1 if args.tiny else args.repeats,
                                           min_seconds=0.01 if args.tiny else args.min_seconds)
                reference = runs["torch"][1]
                for name, (_, final, _) in runs.items():
                    step_s = 1.0 / timings[name].rate(clock)
                    fused = runs[name][2]
                    records.append({
                        "benchmark": "ks_dense_fused", "contender": name, "n_points": n_points, "batch": batch,
                        "closure": closure is not None, "step_s": step_s,
                        "tiles": list(fused.tiles) if fused else [], "split": bool(fused and fused.split),
                        "speedup_over_torch": (1.0 / timings["torch"].rate(clock)) / step_s,
                        "relative_deviation_after_20_steps": float((final - reference).abs().max()
                                                                   / reference.abs().max()),
                        "clock": clock, "repeats": len(timings[name].wall), "dtype": "float64",
                        **machine_description(threads, args.device)})
                done = records[-len(runs):]  # progress on stderr, so a time-boxed run still shows figures
                if args.jsonl:  # and the JSON lines of every finished size, so it keeps them too
                    with open(args.jsonl, "a", encoding="utf-8") as handle:
                        handle.writelines(json.dumps(r, sort_keys=True) + "\n" for r in done)
                print(f"N={n_points} batch={batch} closure={closure is not None}: "
                      + ", ".join(f"{r['contender']} {r['step_s'] * 1e6:.1f} us "
                                  f"({r['relative_deviation_after_20_steps']:.0e})" for r in done), file=sys.stderr)
    rows = [{"N": r["n_points"], "batch": r["batch"], "closure": "free" if r["closure"] else "no",
             "contender": r["contender"],
             "tiles": ("x".join(map(str, r["tiles"])) + (" split" if r["split"] else "")) or "-",
             "us/step": f"{r['step_s'] * 1e6:.1f}", "speed-up over torch": f"{r['speedup_over_torch']:.2f}x",
             "deviation": f"{r['relative_deviation_after_20_steps']:.1e}"} for r in records]
    print_table(rows, ["N", "batch", "closure", "contender", "tiles", "us/step", "speed-up over torch", "deviation"],
                title=f"Dense ETDRK4 step: fused Triton stages vs torch, float64, {args.device}, {clock} clock, medians"
                      + ("" if gpu else " (Triton's CPU interpreter: timings meaningless)"))
    print()
    emit_json(records)  # on stdout; the --jsonl file has them already, size by size
    return 0


if __name__ == "__main__":
    sys.exit(main())
