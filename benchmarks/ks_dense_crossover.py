"""Where the dense ETDRK4 step beats the FFT step: the measurements behind ``implementation="auto"``.

    python benchmarks/ks_dense_crossover.py                 # CPU, 1 thread
    python benchmarks/ks_dense_crossover.py --device cuda   # GPU (CUDA graphs, wall clock)
    python benchmarks/ks_dense_crossover.py --tiny          # CI smoke run
    python benchmarks/ks_dense_crossover.py --public-step   # a loop of step() on physical fields instead

``KuramotoSivashinskySpectral(implementation="fft")`` (8 real FFTs and fused updates a step) against
``implementation="dense"`` (one matrix product a stage, ``solvers.etdrk4_stepping.DenseStepper``) over
a grid of (N, batch), float64, L = 22, ``dt = 0.25``, each through ``trajectory`` under
``torch.inference_mode``, without and with a closure (``0.01 u``: nearly free, so the solver's own
work decides). The dense step does ``O(N^2)`` work a member against the FFT step's ``O(N log N)``,
so it wins only where per-operation costs (CPU: Python and dispatch; GPU: kernel count, which CUDA
graphs and FP64 matrix units make cheap) outweigh arithmetic. The ``auto`` column is what the
solver picks there; ``dense/fft`` above 1 means dense is faster. On the CPU without a closure the FFT
step is the compiled whole step (``solvers.compiled_steps.FourierStep``, members in vector lanes), which
``auto`` prefers to any dense step for trajectories. ``--public-step`` times a Python loop of the
public ``step()`` on physical fields (a spin-up's), which transforms in and out every step: there the
compiled whole step (``_whole_physical_step``) still beats the dense step above a tiny size.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_common_arguments, clock_for, configure_threads, emit_json,  # noqa: E402
                    machine_description, on_gpu, print_table, synchronize, time_interleaved)

DOMAIN_LENGTH = 22.0
DT = 0.25
CPU_GRID = ([16, 32, 64, 128], [1, 2, 4, 8, 16, 32, 64])
GPU_GRID = ([64, 128, 256, 512, 1024], [1, 16, 64, 256, 1024, 4096])
TINY_GRID = ([16], [1, 2])


def light_closure(t, u):
    return 0.01 * u


def contender(implementation: str, n_points: int, batch: int, steps: int, *, closure, device: str,
              public_step: bool = False):
    import torch

    from solvers import KuramotoSivashinskySpectral

    solver = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, device=device,
                                         implementation=implementation, closure=closure,
                                         capture_closure=closure is not None)
    x = solver.x
    phase = torch.arange(batch, dtype=torch.float64, device=device)[:, None] / max(batch, 1)
    u0 = torch.cos(2 * torch.pi * (x / DOMAIN_LENGTH + phase)) + 0.3 * torch.sin(6 * torch.pi * x / DOMAIN_LENGTH)

    def advance():
        with torch.inference_mode():
            if public_step:
                u = u0
                for _ in range(steps):
                    u = solver.step(0.0, u)
            else:
                for _ in solver.trajectory(u0, steps, save_every=steps):
                    pass
        synchronize(device)

    return advance


def auto_picks_dense(n_points: int, batch: int, *, closure, device: str, public_step: bool = False) -> bool:
    import torch

    from solvers import KuramotoSivashinskySpectral

    solver = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, device=device,
                                         closure=closure)
    with torch.inference_mode():
        state = torch.zeros(batch, n_points, dtype=torch.float64, device=device)
        return solver._use_dense(state, trajectory=not public_step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--points", type=int, nargs="*", help="grid sizes N (default: a grid per device)")
    parser.add_argument("--batches", type=int, nargs="*", help="batch sizes (default: a grid per device)")
    parser.add_argument("--public-step", action="store_true", help="time a loop of step() on physical fields")
    args = parser.parse_args(argv)
    threads = configure_threads(args.threads, args.cores)
    gpu = on_gpu(args.device)
    points, batches = TINY_GRID if args.tiny else GPU_GRID if gpu else CPU_GRID
    points, batches = args.points or points, args.batches or batches
    clock = clock_for(args.device)
    records = []
    for n_points in points:
        for batch in batches:
            steps = 2 if args.tiny else 20
            for closure in (None, light_closure):
                runs = {name: contender(name, n_points, batch, steps, closure=closure, device=args.device,
                                        public_step=args.public_step) for name in ("fft", "dense")}
                timings = time_interleaved({name: (run, steps) for name, run in runs.items()},
                                           repeats=1 if args.tiny else args.repeats,
                                           min_seconds=0.01 if args.tiny else args.min_seconds)
                step_s = {name: 1.0 / timing.rate(clock) for name, timing in timings.items()}
                records.append({
                    "benchmark": "ks_dense_crossover", "n_points": n_points, "batch": batch,
                    "closure": closure is not None, "fft_step_s": step_s["fft"], "dense_step_s": step_s["dense"],
                    "dense_speedup": step_s["fft"] / step_s["dense"],
                    "auto_picks_dense": auto_picks_dense(n_points, batch, closure=closure, device=args.device,
                                                         public_step=args.public_step),
                    "stepping": "step()" if args.public_step else "trajectory",
                    "clock": clock, "repeats": len(timings["fft"].wall), "dtype": "float64",
                    **machine_description(threads, args.device)})
    rows = [{"N": r["n_points"], "batch": r["batch"], "closure": "yes" if r["closure"] else "no",
             "fft us/step": f"{r['fft_step_s'] * 1e6:.1f}", "dense us/step": f"{r['dense_step_s'] * 1e6:.1f}",
             "dense/fft speed": f"{r['dense_speedup']:.2f}", "auto": "dense" if r["auto_picks_dense"] else "fft"}
            for r in records]
    print_table(rows, ["N", "batch", "closure", "fft us/step", "dense us/step", "dense/fft speed", "auto"],
                title=f"Dense vs FFT ETDRK4 step{' (public step())' if args.public_step else ''}, float64, {args.device}, {threads} thread(s), {clock} clock, medians")
    print()
    emit_json(records, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
