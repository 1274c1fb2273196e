"""Spectral Kuramoto-Sivashinsky ETDRK4: member-steps per second, side by side with its peers.

    python benchmarks/ks_stepper.py                 # 1 thread, the four (N, batch) points of issue 9
    python benchmarks/ks_stepper.py --threads 0     # every core (torch and XLA alike)
    python benchmarks/ks_stepper.py --tiny          # CI smoke run (seconds)
    python benchmarks/ks_stepper.py --threads 1 --cores 0             # one core against one core
    python benchmarks/ks_stepper.py --threads 0 --peer-cores 0        # each at its best on this machine
    python benchmarks/ks_stepper.py --device cuda --no-numpy --no-memory   # on a GPU (wall clock)

Equation (all contenders): ``u_t = -u u_x - u_xx - u_xxxx`` on ``[0, 22)``, float64, ``dt = 0.25``,
ETDRK4 with 2/3 dealiasing. Contenders, timed interleaved in one process (see common.py):

* ``hybridnde``: ``KuramotoSivashinskySpectral.trajectory`` (Fourier state kept between steps), under
  ``torch.inference_mode``; ``hybridnde step()``: the public one-step call on physical states; on a
  GPU also ``hybridnde (no CUDA graph)``: the trajectory with ``cuda_graphs=False`` (eager launches),
  ``hybridnde fft`` / ``dense``: each implementation forced (``auto`` picks one per size), and
  ``hybridnde fft unfused``: the FFT path without the fused Triton updates (``fused_updates=False``);
  on the CPU ``hybridnde stages``: without the compiled whole step of small batches
  (``whole_fourier_step=False``: the C stage kernels between DUCC's transforms), ``hybridnde torch
  FFT``: without that and without DUCC's transforms (``ducc_fft=False``, ``torch.fft`` with the C
  stage kernels) and ``hybridnde torch ops``: without any compiled code (``fused_updates=False``);
* ``exponax``: ``exponax.stepper.KuramotoSivashinskyConservative(order=4)`` -- the conservative
  ``-1/2 (u^2)_x`` form, which is our equation (the plain ``KuramotoSivashinsky`` stepper is the
  combustion form ``-1/2 u_x^2``, a different equation) -- ``jax.vmap`` over the batch, ``jax.jit``
  of a ``lax.fori_loop`` over the steps, ``block_until_ready`` (on JAX's GPU with ``--device cuda``);
  once calling the stepper on physical
  states (what ``exponax.rollout`` does) and once on its Fourier state (``step_fourier``);
* ``hybridnde torch.compile`` (``--compile`` only): inductor-compiled block of steps;
* ``numpy KT``: a plain batched numpy ETDRK4 in the style of Kassam & Trefethen 2005 (kursiv.m);
* ``FFT floor``: only the 4 forward + 4 inverse batched real FFTs one ETDRK4 step needs, in torch,
  written into reused buffers (``out=``, the faster way); ``(allocating)`` without ``out=``.

A correctness column gives each contender's max deviation from ours after 20 steps of a smooth
state (they differ only in dealiasing details and contour points, so it is tiny).

Also measures peak memory (RSS) of a streamed ``trajectory()`` against ``rollout()`` for growing
lengths, each in a fresh subprocess (``--memory-only`` runs just that part).
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (ConfinedCalls, add_common_arguments, configure_threads, emit_json,  # noqa: E402
                    format_rate, machine_description, on_gpu, parse_cores, peak_rss_bytes, print_table,
                    synchronize, time_interleaved)

DOMAIN_LENGTH = 22.0
DT = 0.25
FULL_SIZES = [(64, 1), (64, 256), (256, 256), (1024, 64)]
TINY_SIZES = [(32, 2)]
CHECK_STEPS = 20


def smooth_initial_state(n_points: int, batch: int):
    """(batch, n) float64 smooth periodic fields with member-dependent phases (numpy): modes 1-3 only,
    so every contender's dealiasing sees the same band-limited field. (Until 2026-11-27 a sin(k x / 2)
    factor, not L-periodic, made it broadband: |u_hat| up to 0.6 at modes 20-32, and the contenders'
    different cuts then differed by 1e-4 to 2e-3, hiding any smaller disagreement.)"""
    import numpy as np

    x = np.arange(n_points) * DOMAIN_LENGTH / n_points
    phase = 2 * np.pi * np.arange(batch)[:, None] / max(batch, 1)
    k = 2 * np.pi / DOMAIN_LENGTH
    return (np.cos(k * x[None] + phase) * (1 + np.sin(2 * k * x[None] + phase))
            + 0.3 * np.sin(3 * k * x[None] - phase))


def kept_modes(n_points: int) -> int:
    """The highest mode our 2/3 rule keeps in the quadratic term (``m < (2/3) N/2``, i.e. ``3 m < N``)."""
    return (n_points - 1) // 3


#: the contenders must compute the same steps: deviation after CHECK_STEPS steps, relative to the state
AGREEMENT_TOLERANCE = 1e-9


# -- contenders: each returns (run_steps(), final_state_after(n_steps) -> numpy) -------------------
def hybridnde_contender(n_points: int, u0, steps: int, *, public_step: bool = False, device: str = "cpu",
                        cuda_graphs: bool = True, implementation: str = "auto", fused_updates: bool = True,
                        ducc_fft: bool = True, whole_fourier_step: bool = True):
    import torch

    from solvers import KuramotoSivashinskySpectral

    solver = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, device=device,
                                         cuda_graphs=cuda_graphs, implementation=implementation)
    solver.fused_updates = fused_updates
    solver.ducc_fft = solver.ducc_fft and ducc_fft
    solver.whole_fourier_step = whole_fourier_step
    state = torch.as_tensor(u0, dtype=torch.float64, device=device)

    def advance(n: int):
        with torch.inference_mode():
            if public_step:
                u = state
                for i in range(n):
                    u = solver.step(i * DT, u)
            else:
                for _, u in solver.trajectory(state, n, save_every=n):
                    pass
        synchronize(device)
        return u

    return (lambda: advance(steps)), (lambda n: advance(n).cpu().numpy())


def compiled_contender(n_points: int, u0, steps: int):
    """``torch.compile`` of a block of ``steps`` differentiable-path steps (opt-in: ``--compile``).

    Returns ``None`` when compilation fails (no compiler, unsupported op): it is an experiment, never
    required. On CPU inductor emits no code for complex tensors and calls the FFTs as external
    kernels, so expect no gain (docs/performance.md has the measured figures).
    """
    import torch

    from solvers import KuramotoSivashinskySpectral

    solver = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT)
    plan = solver.plan(DT)
    coefficients, nonlinear = solver._nonlinear_terms(0.0, DT)
    from solvers.etdrk4_stepping import fourier_step

    def block(u_hat, n: int):
        for _ in range(n):
            u_hat = fourier_step(u_hat, plan, coefficients, nonlinear)
        return u_hat

    u_hat = torch.fft.rfft(torch.as_tensor(u0, dtype=torch.float64))
    try:
        compiled = torch.compile(block, dynamic=False)
        with torch.inference_mode():
            compiled(u_hat, steps)
    except Exception as error:  # noqa: BLE001 -- any failure means "not available here"
        print(f"torch.compile contender skipped: {type(error).__name__}: {error}"[:300], file=sys.stderr)
        return None

    def advance(n: int):
        with torch.inference_mode():
            return torch.fft.irfft(compiled(u_hat, n), n=n_points)

    return (lambda: advance(steps)), (lambda n: advance(n).numpy())


def exponax_contenders(n_points: int, u0, steps: int, *, device: str = "cpu"):
    """Two exponax variants (physical-state stepping and Fourier-state stepping), on the JAX device
    of the same kind as ``device`` (its GPU for ``cuda``)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import exponax

    platform = "gpu" if on_gpu(device) else "cpu"

    # exponax keeps modes m <= fraction * N/2 - 1 (its nonlin_fun), ours m < (2/3) N/2: the same cut needs
    # fraction (kept + 1.5) / (N/2) (its 2/3 keeps one mode fewer, e.g. m <= 20 against 21 at N = 64)
    fraction = (kept_modes(n_points) + 1.5) / (n_points // 2)
    stepper = exponax.stepper.KuramotoSivashinskyConservative(
        1, DOMAIN_LENGTH, n_points, DT, order=4, dealiasing_fraction=fraction)
    state = jax.device_put(jnp.asarray(u0[:, None, :]), jax.devices(platform)[0])  # (batch, channel=1, n)
    physical = jax.vmap(stepper)
    fourier = jax.vmap(stepper.step_fourier)

    def make(n: int, *, in_fourier: bool):
        if in_fourier:
            def rollout(u):
                u_hat = jax.lax.fori_loop(0, n, lambda i, v: fourier(v), jnp.fft.rfft(u, axis=-1))
                return jnp.fft.irfft(u_hat, n=n_points, axis=-1)
        else:
            def rollout(u):
                return jax.lax.fori_loop(0, n, lambda i, v: physical(v), u)
        return jax.jit(rollout)

    def final_state(n: int, in_fourier: bool):
        return jax.device_get(make(n, in_fourier=in_fourier)(state))[:, 0]

    contenders = {}
    for label, in_fourier in (("exponax", False), ("exponax (Fourier state)", True)):
        timed = make(steps, in_fourier=in_fourier)
        contenders[label] = ((lambda timed=timed: timed(state).block_until_ready()),
                             (lambda n, in_fourier=in_fourier: final_state(n, in_fourier)))
    return contenders


def numpy_kassam_trefethen(n_points: int, u0, steps: int):
    """Batched numpy ETDRK4 after Kassam & Trefethen 2005 (their kursiv.m, real FFTs, 2/3 rule)."""
    import numpy as np

    modes = np.arange(n_points // 2 + 1)
    k = 2 * np.pi / DOMAIN_LENGTH * modes
    linear = k**2 - k**4
    E, E2 = np.exp(DT * linear), np.exp(DT * linear / 2)
    roots = np.exp(1j * np.pi * (np.arange(1, 33) - 0.5) / 32)
    LR = DT * linear[:, None] + roots[None, :]
    Q = DT * np.real(np.mean((np.exp(LR / 2) - 1) / LR, axis=1))
    f1 = DT * np.real(np.mean((-4 - LR + np.exp(LR) * (4 - 3 * LR + LR**2)) / LR**3, axis=1))
    f2 = DT * np.real(np.mean((2 + LR + np.exp(LR) * (LR - 2)) / LR**3, axis=1))
    f3 = DT * np.real(np.mean((-4 - 3 * LR - LR**2 + np.exp(LR) * (4 - LR)) / LR**3, axis=1))
    ik = 1j * k
    ik[-1] = 0
    g = -0.5 * ik * (modes < (2 / 3) * (n_points // 2) - 1e-9)
    v0 = np.fft.rfft(u0, axis=-1)

    def nonlinear(v):
        return g * np.fft.rfft(np.fft.irfft(v, n=n_points, axis=-1) ** 2, axis=-1)

    def advance(n: int):
        v = v0
        for _ in range(n):
            Nv = nonlinear(v)
            a = E2 * v + Q * Nv
            Na = nonlinear(a)
            b = E2 * v + Q * Na
            Nb = nonlinear(b)
            c = E2 * a + Q * (2 * Nb - Nv)
            Nc = nonlinear(c)
            v = E * v + Nv * f1 + 2 * (Na + Nb) * f2 + Nc * f3
        return np.fft.irfft(v, n=n_points, axis=-1)

    return (lambda: advance(steps)), advance


def fft_floor(n_points: int, u0, steps: int, *, into_buffers: bool = True, device: str = "cpu",
              graph: str | None = None):
    """The 4 rfft + 4 irfft of one step, ``steps`` times: what no FFT-based stepper can beat in torch.

    ``into_buffers``: write into reused outputs (``out=``), the fastest way to call them here;
    otherwise every call allocates its result. ``graph`` (CUDA only): the 8 FFTs of a step captured
    as one CUDA graph replayed once per step (``"per step"``: the floor for a stepper that replays a
    graph a step, like ours), or all ``8 steps`` FFTs as one graph (``"all steps"``: no per-step
    launch at all, an even lower floor).
    """
    import torch

    u = torch.as_tensor(u0, dtype=torch.float64, device=device)
    u_hat = torch.fft.rfft(u)
    u_out, u_hat_out = torch.empty_like(u), torch.empty_like(u_hat)

    def advance():
        with torch.inference_mode():
            for _ in range(steps):
                for _ in range(4):
                    if into_buffers:
                        torch.fft.rfft(u, out=u_hat_out)
                        torch.fft.irfft(u_hat, n=n_points, out=u_out)
                    else:
                        torch.fft.rfft(u)
                        torch.fft.irfft(u_hat, n=n_points)
        synchronize(device)

    if graph is None:
        return advance, None
    advance()  # plans made before capture
    captured = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(captured):
        for _ in range(4 * (1 if graph == "per step" else steps)):  # 4 pairs a step
            torch.fft.rfft(u, out=u_hat_out)
            torch.fft.irfft(u_hat, n=n_points, out=u_out)
    replays = steps if graph == "per step" else 1
    buffers = (u, u_hat, u_out, u_hat_out)  # the graph reads and writes these addresses: keep them alive

    def replay():
        for _ in range(replays):
            captured.replay()
        synchronize(device)

    replay.buffers = buffers

    return replay, None


def ducc_fft_floor(n_points: int, u0, steps: int, *, threads: int = 1):
    """``fft_floor`` with DUCC's transforms into reused outputs (the FFT library of XLA on CPUs, and of
    our step where ``ducc0`` is installed), on ``threads`` threads; ``None`` without ``ducc0``."""
    try:
        import ducc0
    except ImportError:
        return None
    import numpy as np

    u = np.ascontiguousarray(u0, dtype=np.float64)
    u_hat = np.fft.rfft(u, axis=-1)
    u_out, u_hat_out = np.empty_like(u), np.empty_like(u_hat)
    axis = u.ndim - 1

    def advance():
        for _ in range(steps):
            for _ in range(4):
                ducc0.fft.r2c(u, axes=(axis,), forward=True, inorm=0, out=u_hat_out, nthreads=threads)
                ducc0.fft.c2r(u_hat, axes=(axis,), lastsize=n_points, forward=False, inorm=2, out=u_out,
                              nthreads=threads)

    return advance, None


FLOORS = ("FFT floor", "FFT floor (allocating)", "FFT floor (DUCC)", "FFT floor (graph per step)",
          "FFT floor (one graph, all steps)")  # (the graph floors on a GPU)


# -- the throughput table ------------------------------------------------------------------------
def throughput(args, threads: int) -> list[dict[str, object]]:
    import numpy as np

    sizes = TINY_SIZES if args.tiny else args.sizes or FULL_SIZES
    try:
        import exponax  # noqa: F401
        import jax  # noqa: F401
        have_exponax = True
    except ImportError:
        have_exponax = False
    records = []
    for n_points, batch in sizes:
        device = args.device
        gpu = on_gpu(device)
        # steps per timed call: 20-50 on the CPU (sized to the work), always 50 on a GPU, so that a
        # call's fixed costs (a trajectory's set-up and final transforms: one FFT pair, i.e. 1/8 of a
        # step on the CPU; the synchronisation on a GPU) weigh little, as in a long rollout (with 4
        # steps a call, identical code came out up to 35% apart on the H100, docs/performance.md)
        steps = 2 if args.tiny else 50 if gpu else max(20, min(50, int(2e5 // (n_points * batch * math.log2(n_points)))))
        u0 = smooth_initial_state(n_points, batch)
        builders: dict[str, tuple[Callable[[], object], Callable[[int], object] | None]] = {
            "hybridnde": hybridnde_contender(n_points, u0, steps, device=device),
            "hybridnde step()": hybridnde_contender(n_points, u0, steps, public_step=True, device=device),
        }
        if gpu:
            builders["hybridnde (no CUDA graph)"] = hybridnde_contender(n_points, u0, steps, device=device,
                                                                        cuda_graphs=False)
            for implementation in ("fft", "dense"):
                builders[f"hybridnde {implementation}"] = hybridnde_contender(n_points, u0, steps, device=device,
                                                                              implementation=implementation)
            builders["hybridnde fft unfused"] = hybridnde_contender(n_points, u0, steps, device=device,
                                                                    implementation="fft", fused_updates=False)
        else:  # what the compiled whole step, DUCC's FFTs (solvers.cpu_fft) and the C kernels (solvers.c_kernels) buy
            builders["hybridnde stages"] = hybridnde_contender(n_points, u0, steps, device=device,
                                                               whole_fourier_step=False)
            builders["hybridnde torch FFT"] = hybridnde_contender(n_points, u0, steps, device=device, ducc_fft=False,
                                                                  whole_fourier_step=False)
            builders["hybridnde torch ops"] = hybridnde_contender(n_points, u0, steps, device=device,
                                                                  fused_updates=False, ducc_fft=False)
        if have_exponax:
            try:
                builders.update(exponax_contenders(n_points, u0, steps, device=device))
            except Exception as error:  # noqa: BLE001 -- a peer that cannot run here is reported, not fatal
                print(f"exponax skipped at N={n_points}, batch={batch}: {type(error).__name__}: {error}"[:400],
                      file=sys.stderr)
        if args.compile:
            compiled = compiled_contender(n_points, u0, steps)
            if compiled is not None:
                builders["hybridnde torch.compile"] = compiled
        if not args.no_numpy:
            builders["numpy KT"] = numpy_kassam_trefethen(n_points, u0, steps)
        builders["FFT floor"] = fft_floor(n_points, u0, steps, device=device)
        builders["FFT floor (allocating)"] = fft_floor(n_points, u0, steps, into_buffers=False, device=device)
        ducc_floor = None if gpu else ducc_fft_floor(n_points, u0, steps, threads=max(threads, 1))
        if ducc_floor is not None:
            builders["FFT floor (DUCC)"] = ducc_floor
        if gpu:
            builders["FFT floor (graph per step)"] = fft_floor(n_points, u0, steps, device=device, graph="per step")
            builders["FFT floor (one graph, all steps)"] = fft_floor(n_points, u0, steps, device=device,
                                                                    graph="all steps")

        peers = [name for name in builders if name.startswith("exponax") or name == "numpy KT"]
        confined = {}
        if args.peer_cores and not gpu:  # the peers on the cores they run fastest on, ours on every core
            confine = ConfinedCalls(parse_cores(args.peer_cores, "--peer-cores"))
            confined = dict.fromkeys(peers, confine)  # round by round: the switch stays outside the timing

        reference = builders["hybridnde"][1](CHECK_STEPS)
        scale = float(np.abs(reference).max())
        timings = time_interleaved({name: (run, batch * steps) for name, (run, _) in builders.items()},
                                   repeats=1 if args.tiny else args.repeats,
                                   min_seconds=0.01 if args.tiny else args.min_seconds, confined=confined)
        ours = timings["hybridnde"]
        for name, timing in timings.items():
            final = builders[name][1]
            deviation = (float(np.abs(np.asarray(final(CHECK_STEPS)) - reference).max()) / scale
                         if final is not None else None)
            if deviation is not None and not deviation <= AGREEMENT_TOLERANCE:
                print(f"WARNING: {name} at N={n_points}, batch={batch} deviates from ours by {deviation:.1e} after "
                      f"{CHECK_STEPS} steps (> {AGREEMENT_TOLERANCE:g}): not the same computation", file=sys.stderr)
            records.append({
                "benchmark": "ks_stepper", "n_points": n_points, "batch": batch, "contender": name,
                "member_steps_per_s_cpu": timing.rate("cpu"), "member_steps_per_s_wall": timing.rate("wall"),
                "ours_over_this_cpu": ours.rate("cpu") / timing.rate("cpu"),
                "ours_over_this_wall": ours.rate("wall") / timing.rate("wall"),
                "ours_over_this_cpu_paired": ours.paired_speedup(timing, "cpu"),
                "ours_over_this_wall_paired": ours.paired_speedup(timing, "wall"),
                "relative_deviation_after_20_steps": deviation, "steps_per_call": steps,
                "agrees": None if deviation is None else bool(deviation <= AGREEMENT_TOLERANCE),
                "repeats": len(timing.cpu), "dtype": "float64", "domain_length": DOMAIN_LENGTH, "dt": DT,
                "contender_device": ("cpu" if name == "numpy KT" or (name.startswith("exponax") and not gpu)
                                     else device),
                "peer_cores": args.peer_cores if name in peers and not gpu else None,
                **machine_description(threads, device),
                # a peer confined to one core runs XLA on one thread whatever --threads says
                **({"threads": len(parse_cores(args.peer_cores, "--peer-cores"))}
                   if name in peers and args.peer_cores and not gpu else {})})
    return records


def print_throughput(records: list[dict[str, object]], threads: int) -> None:
    peer_cores = {r["peer_cores"] for r in records if r.get("peer_cores")}
    confined = (f"; the peers confined to core(s) {', '.join(sorted(peer_cores))}, ours on every core: "
                "compare the wall clock" if peer_cores else "")
    rows = [{
        "N": r["n_points"], "batch": r["batch"], "contender": r["contender"],
        "member-steps/s (cpu)": format_rate(r["member_steps_per_s_cpu"]),
        "(wall)": format_rate(r["member_steps_per_s_wall"]),
        "ours/this (cpu)": f"{r['ours_over_this_cpu']:.2f}", "(wall)#": f"{r['ours_over_this_wall']:.2f}",
        "paired (cpu)": f"{r['ours_over_this_cpu_paired']:.2f}", "(wall)##": f"{r['ours_over_this_wall_paired']:.2f}",
        "deviation": "-" if r["relative_deviation_after_20_steps"] is None
        else f"{r['relative_deviation_after_20_steps']:.1e}",
    } for r in records]
    print_table(rows, ["N", "batch", "contender", "member-steps/s (cpu)", "(wall)", "ours/this (cpu)",
                       "(wall)#", "paired (cpu)", "(wall)##", "deviation"],
                title=f"KS ETDRK4 throughput, float64, L=22, dt=0.25, {threads} thread(s); medians "
                      "(paired: median over rounds of the ratio within a round)" + confined)


def target_summary(records: list[dict[str, object]]) -> list[dict[str, object]]:
    """Issue 9's target 1 per (N, batch): ours over exponax's faster variant, and ours as a share of the
    *fastest* FFT floor (torch into buffers, torch allocating, DUCC), on each clock; one record per size."""
    summary = []
    for n_points, batch in dict.fromkeys((r["n_points"], r["batch"]) for r in records):
        rows = {r["contender"]: r for r in records if (r["n_points"], r["batch"]) == (n_points, batch)}
        ours = rows["hybridnde"]
        record = {"benchmark": "ks_stepper_targets", "n_points": n_points, "batch": batch,
                  **{key: ours[key] for key in ("commit", "device", "cpu_model", "threads") if key in ours}}
        for clock in ("cpu", "wall"):
            floors = {name: rows[name][f"member_steps_per_s_{clock}"] for name in FLOORS if name in rows}
            fastest = max(floors, key=floors.get)
            record[f"fastest_floor_{clock}"] = fastest
            record[f"share_of_fastest_floor_{clock}"] = ours[f"member_steps_per_s_{clock}"] / floors[fastest]
            exponax = {name: row for name, row in rows.items() if name.startswith("exponax")}
            if exponax:  # against its faster variant (physical-state or Fourier-state stepping)
                faster = max(exponax, key=lambda name: exponax[name][f"member_steps_per_s_{clock}"])
                record[f"exponax_variant_{clock}"] = faster
                record[f"over_exponax_{clock}"] = exponax[faster][f"ours_over_this_{clock}_paired"]
        record["all_agree"] = all(r.get("agrees") is not False for r in rows.values())
        summary.append(record)
    return summary


def print_targets(summary: list[dict[str, object]]) -> None:
    rows = [{"N": r["n_points"], "batch": r["batch"],
             "ours/exponax, faster variant (cpu, paired)": f"{r['over_exponax_cpu']:.2f}" if "over_exponax_cpu" in r
             else "-",
             "(wall)": f"{r['over_exponax_wall']:.2f}" if "over_exponax_wall" in r else "-",
             "ours/fastest floor (cpu)": f"{r['share_of_fastest_floor_cpu']:.0%} of {r['fastest_floor_cpu']}",
             "(wall)#": f"{r['share_of_fastest_floor_wall']:.0%} of {r['fastest_floor_wall']}",
             "same results": "yes" if r["all_agree"] else "NO"} for r in summary]
    print_table(rows, ["N", "batch", "ours/exponax, faster variant (cpu, paired)", "(wall)", "ours/fastest floor (cpu)", "(wall)#",
                       "same results"],
                title="Target 1 (issue 9): >= 1.5x exponax and >= 60% of the fastest FFT floor at batch >= 64, "
                      ">= 1x exponax at batch 1")


# -- memory: streamed trajectory vs stacked rollout -------------------------------------------------
def memory_probe(mode: str, n_steps: int, n_points: int, batch: int, device: str = "cpu") -> None:
    """Child process: run one rollout and print the peak memory growth over the warmed-up baseline
    (resident set on the CPU; the caching allocator's peak allocation on a GPU)."""
    import json

    import torch

    from hybridnde.allocator import keep_freed_memory
    from solvers import KuramotoSivashinskySpectral

    keep_freed_memory()  # as a rollout under the hybridnde command runs
    torch.set_num_threads(1)
    gpu = on_gpu(device)
    solver = KuramotoSivashinskySpectral(domain_length=DOMAIN_LENGTH, n_points=n_points, dt=DT, device=device)
    u0 = torch.as_tensor(smooth_initial_state(n_points, batch), dtype=torch.float64, device=device)
    with torch.inference_mode():
        for _ in solver.trajectory(u0, 8):  # warm up allocator, FFT plans, coefficients
            pass
        if gpu:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device) if gpu else peak_rss_bytes()
        if mode == "trajectory":
            total = torch.zeros(n_points, dtype=torch.float64, device=device)
            for _, u in solver.trajectory(u0, n_steps):  # streamed, as the NetCDF writer consumes it
                total += u.sum(0)
        else:
            saved = solver.rollout(u0, n_steps)
            total = saved.sum((0, 1))
        checksum = float(total.sum())
    peak = torch.cuda.max_memory_allocated(device) if gpu else peak_rss_bytes()
    print(json.dumps({"peak_rss_growth_bytes": peak - baseline, "checksum": checksum}))


def memory(args, threads: int) -> list[dict[str, object]]:
    import json

    n_points, batch = (32, 4) if args.tiny else (64, 64)
    lengths = [10, 40] if args.tiny else [500, 2000, 8000]
    records = []
    for mode in ("trajectory", "rollout"):
        for n_steps in lengths:
            output = subprocess.run(
                [sys.executable, __file__, "--memory-probe", mode, str(n_steps), str(n_points), str(batch),
                 args.device],
                check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
            growth = json.loads(output.strip().splitlines()[-1])["peak_rss_growth_bytes"]
            records.append({"benchmark": "ks_rollout_memory", "mode": mode, "n_steps": n_steps,
                            "n_points": n_points, "batch": batch, "peak_rss_growth_bytes": growth,
                            "saved_states_bytes": (n_steps + 1) * n_points * batch * 8,
                            "memory": "cuda_allocated" if on_gpu(args.device) else "rss",
                            **machine_description(threads, args.device)})
    rows = [{"method": r["mode"], "steps": r["n_steps"], "N x batch": f"{r['n_points']} x {r['batch']}",
             "peak growth": f"{r['peak_rss_growth_bytes'] / 2**20:.1f} MiB",
             "all states would be": f"{r['saved_states_bytes'] / 2**20:.1f} MiB"} for r in records]
    kind = "GPU allocation" if on_gpu(args.device) else "resident set"
    print_table(rows, ["method", "steps", "N x batch", "peak growth", "all states would be"],
                title=f"Peak memory ({kind}) of a rollout vs its length (fresh process each, float64, {args.device})")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--memory-only", action="store_true", help="only the memory part")
    parser.add_argument("--no-numpy", action="store_true", help="leave out the numpy contender (always on the CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of a block of steps (slow to compile; no gain on CPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory part")
    parser.add_argument("--sizes", nargs="*", metavar="N,BATCH", help="(N, batch) points (default: issue 9's four)",
                        type=lambda text: tuple(int(part) for part in text.split(",")))
    parser.add_argument("--peer-cores", default=None, metavar="CORES",
                        help="time the peers (exponax, numpy) with the whole process confined to these CPU cores "
                             "(e.g. 0; one core also makes XLA single-threaded), ours on every core with --threads: "
                             "each where it runs fastest (exponax ran 1.2-1.3x faster pinned to one core than "
                             "unpinned, on one thread or two, on a 2-core VM)")
    parser.add_argument("--memory-probe", nargs=5, metavar=("MODE", "STEPS", "N", "BATCH", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        mode, n_steps, n_points, batch, device = args.memory_probe
        memory_probe(mode, int(n_steps), int(n_points), int(batch), device)
        return 0
    threads = configure_threads(args.threads, args.cores)
    if args.peer_cores and len(parse_cores(args.peer_cores, "--peer-cores")) == 1 \
            and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + " --xla_cpu_multi_thread_eigen=false").strip()  # before jax is imported
    # JAX takes 75% of a GPU's memory at start-up unless told otherwise; torch shares this GPU
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    records = []
    if not args.memory_only:
        records += throughput(args, threads)
        print_throughput(records, threads)
        summary = target_summary(records)
        print_targets(summary)
        records += summary
    if not args.no_memory:
        records += memory(args, threads)
    print()
    emit_json(records, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
