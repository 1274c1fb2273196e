"""What a closure in the hook costs the spectral KS ETDRK4 solver beyond the closure's own forward passes.

    python benchmarks/closure_overhead.py            # batch 64, N = 64 and 256, 1 thread
    python benchmarks/closure_overhead.py --tiny     # CI smoke run

An ETDRK4 step calls the closure 4 times (once per stage). Timed interleaved (see common.py), per
step, float64, under ``torch.inference_mode`` (and once more under ``torch.no_grad``):

* ``bare step``: the solver without a closure (``trajectory``, Fourier state kept);
* ``4 closure forwards``: the closure alone, called on the very ``(t, u)`` stage inputs the solver
  gives it (recorded from one run; 4 per step);
* ``step with closure``: the solver with the closure in the hook;
* ``step with free closure``: the solver with a closure that costs nothing (returns stored
  tensors, ``common.FreeClosure``): the step plus everything the hook itself adds (stage times,
  the closure term's FFT and update, the un-fused squaring that leaves the closure's input intact).

Reported, relative to the 4 closure forwards: ``hook overhead = (free - bare) / forwards`` and
``solver share = free / forwards`` -- everything that is not the closure (issue 9 asks < 10%).
``(direct) = (with - forwards) / forwards`` estimates the same from the real run; it is the small
difference of two large, noisy times (the CNN's cost swings by 20-50% on a busy machine), hence
the free-closure decomposition; ``(direct, paired)`` takes that difference within each round and the
median over rounds, which cancels what a round's two runs share. The solver share assumes the costs
add up; where the direct measures stay above it (the GPU: 11.5-13.7% against 9.0-9.6%), the step and
the closure cost more together than apart, and the direct measure is the one the target is read by.

Each timed call is one ``trajectory`` of ``--steps`` steps (default 20), synchronised at its end, so the
call's set-up counts once per call: on an H200's host ~160 us, during which the GPU waits (~8 us a
step at 20 steps; docs/performance.md, run 15). ``--steps 200`` spreads it thinner.

``faults/step``: the minor page faults of a step with the closure. glibc's malloc keeps freed memory here,
as in the ``hybridnde`` command (``hybridnde.allocator``); ``HYBRIDNDE_KEEP_FREED_MEMORY=0`` shows the
default, where in about half the processes every step faulted its closure's temporaries in afresh
(1,200-1,400 faults, the step 35-50% slower: the "unexplained outliers" of earlier runs).

On a GPU (``--device cuda``) every contender runs as CUDA graphs -- the solvers with
``cuda_graphs=True, capture_closure=True``, the forwards captured as one graph -- and the wall clock is
used; ``--eager`` launches every kernel instead (then the launches, not the arithmetic, dominate).

The closure is ``hybridnde.models.PeriodicCNNClosure(channels=16, depth=2, kernel_size=5)``: three
periodic convolutions (1 -> 16 -> 16 -> 1) with tanh, the "small periodic CNN".
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (FreeClosure, add_common_arguments, clock_for, configure_threads, emit_json,  # noqa: E402
                    machine_description, on_gpu, print_table, synchronize, time_interleaved)

DOMAIN_LENGTH = 22.0
DT = 0.25


def contenders(n_points: int, batch: int, steps: int, *, grad_mode: str, device: str = "cpu", graphs: bool = True,
               implementation: str = "auto"):
    """The four timed runs, each a callable advancing ``steps`` steps: {name: (callable, steps)}; also the
    hooked solver and the initial state (batch, n)."""
    import torch

    from hybridnde.models import PeriodicCNNClosure
    from solvers import KuramotoSivashinskySpectral

    torch.manual_seed(0)
    closure = PeriodicCNNClosure(channels=16, depth=2, kernel_size=5).to(torch.float64).to(device).eval()
    # on a GPU every contender runs as CUDA graphs (graphs=True) or every one launches eagerly
    graphs = graphs and on_gpu(device)
    options = dict(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, device=device, cuda_graphs=graphs,
                   capture_closure=graphs, implementation=implementation)
    bare = KuramotoSivashinskySpectral(**options)
    hooked = KuramotoSivashinskySpectral(closure=closure, **options)
    x = bare.x
    member_scale = 1 + 0.1 * torch.arange(batch, dtype=torch.float64, device=device)[:, None]
    u0 = torch.cos(2 * torch.pi * x / DOMAIN_LENGTH)[None] * member_scale  # (batch, n)
    context = torch.inference_mode if grad_mode == "inference_mode" else torch.no_grad

    def run_solver(solver):
        def advance():
            with context():
                for _ in solver.trajectory(u0, steps, save_every=steps):
                    pass
            synchronize(device)
        return advance

    # The closure's cost depends on the values it sees (its convolutions and tanh run measurably
    # slower on the solver's stage fields than on a smooth field), so time it alone on exactly the
    # inputs the solver hands it: record them once from a run of the hooked solver.
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(t_stage, u_stage):
        recorded.append((t_stage.clone(), u_stage.clone()))
        return closure(t_stage, u_stage)

    recorder = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, closure=recording,
                                           device=device, cuda_graphs=False)  # it keeps Python state
    with context():
        for _ in recorder.trajectory(u0, steps, save_every=steps):
            pass
    assert len(recorded) == 4 * steps

    def forwards():
        with context():
            for t_stage, u_stage in recorded:
                closure(t_stage, u_stage)
        synchronize(device)

    if graphs:  # the forwards as one graph too, as they run inside the replayed steps
        forwards()
        forwards_graph = torch.cuda.CUDAGraph()
        with context(), torch.cuda.graph(forwards_graph):
            for t_stage, u_stage in recorded:
                closure(t_stage, u_stage)

        def forwards(inputs=recorded):  # the graph reads the recorded inputs by address: keep them alive
            forwards_graph.replay()
            synchronize(device)

    free = KuramotoSivashinskySpectral(closure=FreeClosure(u0), **options)
    return {"bare step": (run_solver(bare), steps), "step with free closure": (run_solver(free), steps),
            "4 closure forwards": (forwards, steps), "step with closure": (run_solver(hooked), steps)}, hooked, u0


def measure(n_points: int, batch: int, steps: int, *, grad_mode: str, repeats: int, min_seconds: float,
            device: str = "cpu", graphs: bool = True, implementation: str = "auto"):
    import torch

    runs, hooked, u0 = contenders(n_points, batch, steps, grad_mode=grad_mode, device=device, graphs=graphs,
                                  implementation=implementation)
    graphs = graphs and on_gpu(device)
    timings = time_interleaved(runs, repeats=repeats, min_seconds=min_seconds)
    with torch.no_grad():
        dense_path = hooked._use_dense(u0, trajectory=True)  # which step "auto" took
    clock = clock_for(device)
    seconds = {name: 1.0 / timing.rate(clock) for name, timing in timings.items()}  # per step
    wall = {name: 1.0 / timing.rate("wall") for name, timing in timings.items()}
    closure_cost = seconds["4 closure forwards"]
    return {
        "benchmark": "closure_overhead", "n_points": n_points, "batch": batch, "grad_mode": grad_mode,
        "closure": "PeriodicCNNClosure(channels=16, depth=2, kernel_size=5)", "steps_per_call": steps,
        **{f"{key}_s": seconds[name] for key, name in KEYS.items()},
        **{f"{key}_s_wall": wall[name] for key, name in KEYS.items()},
        # glibc's page-fault lottery (hybridnde.allocator) shows here: thousands a step where it struck
        **{f"{key}_faults_per_step": statistics.median(timings[name].faults) / steps for key, name in KEYS.items()},
        "hook_overhead": (seconds["step with free closure"] - seconds["bare step"]) / closure_cost,
        "solver_share": seconds["step with free closure"] / closure_cost,
        "solver_share_direct": (seconds["step with closure"] - closure_cost) / closure_cost,
        # the same, paired: the median over rounds of each round's own difference (the closure's cost swings
        # between rounds; pairing cancels what both runs of a round share)
        "solver_share_direct_paired": statistics.median(
            (with_closure - forwards) / forwards for with_closure, forwards
            in zip(getattr(timings["step with closure"], clock), getattr(timings["4 closure forwards"], clock))),
        "repeats": repeats, "dtype": "float64", "clock": clock, "cuda_graphs": graphs,
        "implementation": implementation, "dense_path": dense_path,
    }


def trace(n_points: int, batch: int, steps: int, *, device: str, graphs: bool, implementation: str,
          calls: int = 5) -> None:
    """Where a step's time goes, by kernel (on a GPU; on a CPU by operator, self time), for each contender under
    torch.profiler: per step, how many kernels, their summed time, the time some kernel was running
    (the union of their intervals) and the span from the first start to the last end; then the closure's
    kernels alone against the same kernels inside the step with the closure. Printed only: a diagnosis
    of the direct difference (a step with the closure costing more than the free step plus the
    forwards), not a figure."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    runs, _, _ = contenders(n_points, batch, steps, grad_mode="inference_mode", device=device, graphs=graphs,
                            implementation=implementation)
    gpu = on_gpu(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    per_kernel: dict[str, dict[str, float]] = {}
    print(f"Trace, N = {n_points}, batch {batch}, {device}{', CUDA graphs' if graphs and gpu else ''}: "
          f"per step, {calls} calls of {steps} steps after a warm-up")
    for name, (run, run_steps) in runs.items():
        run()
        with profile(activities=activities) as profiler:
            for _ in range(calls):
                run()
        # on a GPU its kernels; on a CPU every operator by its self time, the busy intervals its top-level ones
        events = [event for event in profiler.events()
                  if event.device_type == (DeviceType.CUDA if gpu else DeviceType.CPU)]
        total_steps = calls * run_steps
        intervals = sorted((event.time_range.start, event.time_range.end) for event in events
                           if gpu or event.cpu_parent is None)
        busy, reach = 0.0, float("-inf")
        for start, end in intervals:  # the union of the kernels' intervals
            busy += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        span = (intervals[-1][1] - intervals[0][0]) if intervals else 0.0
        kernels: dict[str, list[float]] = {}
        for event in events:
            entry = kernels.setdefault(event.name, [0.0, 0.0])
            entry[0] += (event.time_range.elapsed_us() if gpu else event.self_cpu_time_total) / total_steps
            entry[1] += 1 / total_steps
        per_kernel[name] = {kernel: time for kernel, (time, _) in kernels.items()}
        print(f"  {name}: {len(events) / total_steps:.1f} kernels, {sum(per_kernel[name].values()):.1f} us of "
              f"kernels, busy {busy / total_steps:.1f} us, span {span / total_steps:.1f} us (calls' gaps included)")
        for kernel, (time, count) in sorted(kernels.items(), key=lambda item: -item[1][0])[:8]:
            print(f"      {time:8.2f} us  x{count:4.1f}  {kernel[:110]}")
    alone, inside = per_kernel["4 closure forwards"], per_kernel["step with closure"]
    print("  the closure's kernels, alone -> inside the step with the closure (us per step):")
    for kernel in sorted(alone, key=lambda key: -alone[key]):
        print(f"      {alone[kernel]:8.2f} -> {inside.get(kernel, 0.0):8.2f}  {kernel[:100]}")
    print(f"      {sum(alone.values()):8.2f} -> {sum(inside.get(kernel, 0.0) for kernel in alone):8.2f}  (together)",
          flush=True)


KEYS = {"bare_step": "bare step", "step_with_free_closure": "step with free closure",
        "four_closure_forwards": "4 closure forwards", "step_with_closure": "step with closure"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--eager", action="store_true", help="on a GPU: no CUDA graphs (every kernel launched)")
    parser.add_argument("--implementation", default="auto", choices=["auto", "fft", "dense"],
                        help="the KS solvers' step (see KuramotoSivashinskySpectral); auto picks per size")
    parser.add_argument("--steps", type=int, default=20,
                        help="steps per timed call (each call is a trajectory: its set-up, then the steps)")
    parser.add_argument("--trace", action="store_true",
                        help="only trace each contender by kernel under torch.profiler (printed, not timed)")
    args = parser.parse_args(argv)
    threads = configure_threads(args.threads, args.cores)
    sizes = [(32, 4)] if args.tiny else [(64, 64), (256, 64)]
    if args.trace:
        for n_points, batch in sizes:
            trace(n_points, batch, 2 if args.tiny else args.steps, device=args.device, graphs=not args.eager,
                  implementation=args.implementation)
        return 0
    modes = ["inference_mode"] if args.tiny else ["inference_mode", "no_grad"]
    records = []
    for n_points, batch in sizes:
        for grad_mode in modes:
            record = measure(n_points, batch, 2 if args.tiny else args.steps, grad_mode=grad_mode,
                             repeats=1 if args.tiny else args.repeats,
                             min_seconds=0.01 if args.tiny else args.min_seconds, device=args.device,
                             graphs=not args.eager, implementation=args.implementation)
            records.append({**record, **machine_description(threads, args.device)})

    def micro(seconds: float) -> str:
        return f"{seconds * 1e6:.0f}"

    rows = [{"N": r["n_points"], "batch": r["batch"], "mode": r["grad_mode"] + (" graph" if r["cuda_graphs"] else "")
             + (" dense" if r["dense_path"] else " fft"),
             "bare step us": micro(r["bare_step_s"]), "free closure us": micro(r["step_with_free_closure_s"]),
             "4 closure fwd us": micro(r["four_closure_forwards_s"]),
             "step+closure us": micro(r["step_with_closure_s"]),
             "hook overhead": f"{100 * r['hook_overhead']:.1f}%", "solver share": f"{100 * r['solver_share']:.1f}%",
             "(direct)": f"{100 * r['solver_share_direct']:.1f}%",
             "(direct, paired)": f"{100 * r['solver_share_direct_paired']:.1f}%",
             "faults/step": f"{r['step_with_closure_faults_per_step']:.0f}"}
            for r in records]
    print_table(rows, ["N", "batch", "mode", "bare step us", "free closure us", "4 closure fwd us",
                       "step+closure us", "hook overhead", "solver share", "(direct)", "(direct, paired)",
                       "faults/step"],
                title=f"Closure in the hook: per-step cost ({clock_for(args.device)} clock, medians, "
                      f"{2 if args.tiny else args.steps} steps a call), float64, "
                      f"{args.device}, {threads} thread(s)")
    print()
    emit_json(records, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
