"""Cost of one optimiser step with and without Jacobian regularizers, and the memory of a step.

    python benchmarks/training_step.py                  # item 3 (N = 64, 256, 1024) and item 5 memory
    python benchmarks/training_step.py --no-memory      # only the step costs
    python benchmarks/training_step.py --memory-only    # only the memory table
    python benchmarks/training_step.py --tiny           # CI smoke run (seconds)

**Step cost (issue 9, item 3).** The set-up of ``cases/ks_l22.toml`` at ``N`` grid points: the
residual spectral KS host (ETDRK4, the closure learns ``-u u_x``) with its 3-layer periodic CNN
closure (``--channels`` 32, kernel 5, tanh), float64, batch 64, windows of the true KS attractor
(sampled every 0.25). One step = loss terms forward + backward + AdamW step, as ``Trainer`` runs it:

* ``plain``: the 2-step short-rollout loss (``RolloutLoss``, gradients through the solver's steps);
* ``+ jvp <method>``: plus ``DirectionalDerivativeTerm`` (exact ``L_AD``, 2 probes) with each
  ``closure_jvp`` method -- ``tangent`` (tangents pushed through the layers), ``vmap`` (vmap of
  ``torch.func.jvp``), ``stacked`` (one ``jvp`` over the stacked probes);
* ``+ fd``: plus ``FiniteDifferenceTerm`` (the paper's ``L_FD`` on each window's 3 samples);
* ``+ dense <jacfwd|jacrev>``: plus the penalty a user writes without directional derivatives,
  ``mean_batch ||J_C(u) - (J_F(u) - J_known(u))||_F^2`` with the full closure Jacobian from
  ``torch.func.vmap(torch.func.jacfwd / jacrev)`` against the dense true Jacobian (its ``N``
  columns from the solvers' exact ``jvp``). Its expectation is what ``L_AD`` estimates. Evaluated in
  member chunks with their gradients accumulated (same gradient, bounded memory: the tangents of
  ``N`` basis vectors through 32 channels take ``~100 N^2`` bytes per member). Skipped above
  ``--dense-max-n`` (default 256): the table then gives an extrapolation from its measured growth.

Interleaved rounds, medians, one thread, CPU clock (as ``benchmarks/common.py`` describes); the load
average is printed and recorded. "per probe" is the extra cost over the plain step per probe (per
column for the dense penalty) relative to the plain step: constant in ``N`` when the cost of a probe
scales like the plain step's.

**Memory of a step (issue 9, item 5).** Each (set-up, k) in a fresh process with glibc told to
``mmap`` every allocation above 64 kB (so freed tensors leave the resident set at once): a warm-up
step at k = 1, then the peak resident-set growth (``VmHWM`` reset through ``/proc/self/clear_refs``)
of one step at rollout length k = 1, 2, 4, 8, 16, and the bytes autograd saved for backward.
Set-ups: the KS step above (N = 64, through the ETDRK4 steps); and ``cases/two_body.toml`` (MLP 2 x
200 neural ODE, batch 256) through RK4 steps, ``odeint`` (dopri5, backpropagated through its
internals) and ``odeint_adjoint`` (torchdiffeq's adjoint: constant memory), the three
``training.integration`` options.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Timing, add_common_arguments, clock_for, configure_threads, emit_json,  # noqa: E402
                    machine_description, on_gpu, print_table, synchronize)

REPOSITORY = Path(__file__).resolve().parents[1]
KS_CASE = REPOSITORY / "cases" / "ks_l22.toml"
ODE_CASE = REPOSITORY / "cases" / "two_body.toml"
JVP_METHODS = ("tangent", "vmap", "stacked")
DENSE_METHODS = ("jacfwd", "jacrev")
#: bytes of tangents one dense-penalty chunk may hold (members per chunk follow from N and the width)
DENSE_CHUNK_BYTES = 1 << 30
MEMORY_SETUPS = ("ks_step", "ode_step", "ode_odeint", "ode_adjoint")
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# -- the KS set-up ------------------------------------------------------------------------------
def ks_setup(n_points: int, channels: int, batch: int, rollout_steps: int, *, seed: int = 0, device: str = "cpu"):
    """``(case, model, host, reference, windows)``: ks_l22 at ``n_points`` with a ``channels``-wide CNN;
    ``windows: (batch, max(rollout_steps, 2) + 1, n_points)`` on the attractor, 0.25 apart."""
    import torch

    from hybridnde.config import load_case
    from hybridnde.initial_conditions import draw_initial_conditions
    from hybridnde.models import build_model
    from hybridnde.systems import build_host_solver
    from hybridnde.training import reference_solver

    case = load_case(KS_CASE, overrides=[f"system.n_points={n_points}", f"model.width={channels}",
                                         f"training.batch_size={batch}", f"training.rollout_steps={rollout_steps}"])
    torch.manual_seed(seed)
    model = build_model(case.model, state_shape=(n_points,), device=device)
    host = build_host_solver(case, closure=model, device=device)
    reference = reference_solver(case, device=device)
    with torch.no_grad():
        u0 = draw_initial_conditions(case.initial_condition, reference, range(batch))
        u = reference.rollout(u0, case.time.spinup_steps)[:, -1]
        windows = reference.rollout(u, max(rollout_steps, 2) * case.time.save_every, save_every=case.time.save_every)
    if not torch.isfinite(windows).all():
        raise RuntimeError(f"KS at N = {n_points} blew up during spin-up; use a larger N")
    return case, model, host, reference, windows


def dense_chunk(n_points: int, channels: int) -> int:
    """Members per dense-penalty chunk: ~12 tangent tensors of (N, channels, N) float64 per member."""
    return max(1, int(DENSE_CHUNK_BYTES // (12 * n_points * n_points * channels * 8)))


def dense_target(reference, host, u):
    """``(batch, N, N)`` dense ``J_F(u) - J_known(u)`` from ``N`` exact JVPs per member (no gradients)."""
    import torch

    batch, n = u.shape
    t = torch.zeros((), dtype=u.dtype, device=u.device)
    with torch.no_grad():
        basis = torch.eye(n, dtype=u.dtype, device=u.device).repeat(batch, 1)          # row b * n + j is e_j
        stacked = u.detach().repeat_interleave(n, dim=0)              # row b * n + j is u_b
        columns = reference.jvp(t, stacked, basis) - host.jvp(t, stacked, basis)
        return columns.reshape(batch, n, n).transpose(1, 2)           # [b, i, j] = (J e_j)_i


def dense_penalty(model, reference, host, u, method: str):
    """``sum_members ||J_C(u) - (J_F - J_known)(u)||_F^2`` over ``u: (members, N)``, with gradients.

    ``J_C`` by ``torch.func.vmap(torch.func.jacfwd | jacrev)`` of the closure, one member at a time.
    """
    import torch

    t = torch.zeros((), dtype=u.dtype, device=u.device)
    transform = torch.func.jacfwd if method == "jacfwd" else torch.func.jacrev

    def member(x):
        return model(t, x.unsqueeze(0)).squeeze(0)

    jacobian = torch.func.vmap(transform(member))(u)                  # (members, N, N)
    return (jacobian - dense_target(reference, host, u)).pow(2).sum()


def dense_penalty_backward(model, reference, host, u, method: str, *, chunk: int) -> float:
    """Backpropagate the batch mean of ``dense_penalty`` chunk by chunk (gradients accumulate); its value."""
    total = 0.0
    for first in range(0, u.shape[0], chunk):
        value = dense_penalty(model, reference, host, u[first:first + chunk], method) / u.shape[0]
        value.backward()
        total += float(value.detach())
    return total


def step_variants(n_points: int, arguments, *, dense: bool) -> tuple[dict[str, Callable[[], None]], dict, dict]:
    """The timed training steps for one ``N`` (name -> call), probes per variant, and exactness checks."""
    import torch

    from hybridnde.regularizers import ProbeSampler, directional_jacobian_penalty
    from hybridnde.training import Batch, DirectionalDerivativeTerm, FiniteDifferenceTerm, RolloutLoss

    device = arguments.device
    case, model, host, reference, windows = ks_setup(n_points, arguments.channels, arguments.batch,
                                                     arguments.rollout_steps, device=device)
    batch = Batch(windows, case.time.sample_interval, torch.zeros(len(windows), 2, dtype=torch.long))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)  # tiny steps: the weights stay typical
    rollout = RolloutLoss(steps=arguments.rollout_steps)

    def training_step(terms, extra: Callable[[], None] | None = None) -> Callable[[], None]:
        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            total = sum(weight * value for term in terms for value, weight in term(model, host, batch, 0).values())
            total.backward()
            if extra is not None:
                extra()
            optimizer.step()
            synchronize(device)
        return step

    probes = arguments.probes
    variants = {"plain": training_step([rollout])}
    counts = {"plain": 0}
    for method in JVP_METHODS:
        term = DirectionalDerivativeTerm(weight=1.0, reference_jvp=reference.jvp, known_jvp=host.jvp,
                                         probes=ProbeSampler(count=probes, seed=1, device=device), method=method)
        variants[f"+ jvp {method}"] = training_step([rollout, term])
        counts[f"+ jvp {method}"] = probes
    variants["+ fd"] = training_step([rollout, FiniteDifferenceTerm(weight=1.0)])
    counts["+ fd"] = 1  # one direction per window (its own step), two right-hand-side evaluations
    chunk = dense_chunk(n_points, arguments.channels)
    if dense:
        u = windows[:, 0]
        for method in arguments.dense_methods:
            variants[f"+ dense {method}"] = training_step(
                [rollout], lambda method=method: dense_penalty_backward(model, reference, host, u, method, chunk=chunk))
            counts[f"+ dense {method}"] = n_points

    # exactness, at the initial weights: every exact method gives the same L_AD and gradient, and the
    # dense penalty equals L_AD with the N basis vectors as probes (times N: L_AD averages over probes)
    u = windows[:, 0]
    fixed = ProbeSampler(count=probes, seed=1, device=device)(u)
    gradients = {}
    for method in JVP_METHODS:
        model.zero_grad(set_to_none=True)
        value = directional_jacobian_penalty(model, u, fixed, reference_jvp=reference.jvp, known_jvp=host.jvp,
                                             method=method)
        value.backward()
        # biases of the last layer do not change J_C: no gradient
        gradients[method] = (float(value.detach()), torch.cat([torch.zeros_like(p).reshape(-1) if p.grad is None
                                                               else p.grad.reshape(-1) for p in model.parameters()]))
    value0, gradient0 = gradients["tangent"]
    checks = {"jvp_methods_max_relative_gradient_difference": max(
        float((g - gradient0).norm() / gradient0.norm()) for _, g in gradients.values()),
        "jvp_methods_max_relative_value_difference": max(abs(v - value0) / abs(value0) for v, _ in gradients.values())}
    if dense:  # on a few members: N basis probes through the tangent method hold N times the activations
        few = u[:4]
        basis = torch.eye(n_points, dtype=u.dtype, device=u.device).unsqueeze(1).expand(n_points, *few.shape)
        with torch.no_grad():
            ad_basis = float(directional_jacobian_penalty(model, few, basis, reference_jvp=reference.jvp,
                                                          known_jvp=host.jvp, method="tangent")) * n_points
        for method in arguments.dense_methods:
            dense_value = float(dense_penalty(model, reference, host, few, method).detach()) / len(few)
            checks[f"dense_{method}_vs_basis_probes_relative_difference"] = abs(dense_value - ad_basis) / abs(ad_basis)
    model.zero_grad(set_to_none=True)
    return variants, counts, checks


def time_variants(variants: dict[str, Callable[[], None]], repeats: int, dense_repeats: int) -> dict[str, Timing]:
    """Each variant once to warm up, then interleaved rounds of one call each (dense variants only in the
    first ``dense_repeats`` rounds: a call lasts many seconds)."""
    timings = {name: Timing(name, 1.0) for name in variants}
    for call in variants.values():
        call()
    for round_index in range(repeats):
        for name, call in variants.items():
            if name.startswith("+ dense") and round_index >= dense_repeats:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            timings[name].wall.append(time.perf_counter() - wall)
            timings[name].cpu.append(time.process_time() - cpu)
    return timings


def step_costs(arguments, threads: int) -> list[dict]:
    records = []
    for n_points in arguments.sizes:
        dense = n_points <= arguments.dense_max_n and bool(arguments.dense_methods)
        load_before = load_average()
        variants, counts, checks = step_variants(n_points, arguments, dense=dense)
        timings = time_variants(variants, arguments.repeats, arguments.dense_repeats)
        plain = timings["plain"]
        clock = clock_for(arguments.device)

        def median(timing: Timing) -> float:
            return timing.cpu_median if clock == "cpu" else timing.wall_median

        for name, timing in timings.items():
            ratio = median(timing) / median(plain)
            per_probe = (ratio - 1.0) / counts[name] if counts[name] else None
            records.append({"benchmark": "training_step", "n_points": n_points, "variant": name,
                            "channels": arguments.channels, "batch": arguments.batch, "probes": counts[name],
                            "rollout_steps": arguments.rollout_steps, "step_s_cpu": timing.cpu_median,
                            "step_s_wall": timing.wall_median, "ratio_to_plain": ratio,
                            "ratio_to_plain_cpu": timing.cpu_median / plain.cpu_median,
                            "ratio_to_plain_wall": timing.wall_median / plain.wall_median,
                            "extra_per_probe_over_plain": per_probe, "repeats": len(timing.cpu),
                            "samples_cpu": timing.cpu, "load_average_before": load_before,
                            "load_average_after": load_average(), "clock": clock, **checks,
                            **machine_description(threads, arguments.device)})
        print(f"N = {n_points}: load average {load_before} -> {load_average()}; checks {checks}", flush=True)
    records += dense_extrapolation(records, arguments)
    return records


def dense_extrapolation(records: list[dict], arguments) -> list[dict]:
    """Dense rows for the sizes above ``--dense-max-n``: the extra cost over the plain step grows like
    ``N^b`` relative to the plain step, ``b`` fitted on the two largest measured sizes."""
    extra = []
    for method in arguments.dense_methods:
        measured = {r["n_points"]: r for r in records if r["variant"] == f"+ dense {method}"}
        plains = {r["n_points"]: r for r in records if r["variant"] == "plain"}
        if len(measured) < 2:
            continue
        n1, n2 = sorted(measured)[-2:]
        growth = math.log((measured[n2]["ratio_to_plain"] - 1) / (measured[n1]["ratio_to_plain"] - 1)) / math.log(n2 / n1)
        for n_points in arguments.sizes:
            if n_points in measured or n_points not in plains:
                continue
            ratio = 1 + (measured[n2]["ratio_to_plain"] - 1) * (n_points / n2) ** growth
            clock = measured[n2]["clock"]
            extra.append({"benchmark": "training_step", "n_points": n_points, "variant": f"+ dense {method}",
                          "extrapolated": True, "growth_exponent_of_extra_over_plain": growth,
                          "ratio_to_plain": ratio, "clock": clock,
                          f"step_s_{clock}": ratio * plains[n_points][f"step_s_{clock}"],
                          "extra_per_probe_over_plain": (ratio - 1) / n_points, "probes": n_points,
                          "fitted_on": [n1, n2], "channels": arguments.channels, "batch": arguments.batch,
                          # the machine of the rows it is fitted on (this process, their threads and device)
                          **machine_description(measured[n2]["threads"], measured[n2]["device"])})
    return extra


def print_step_tables(records: list[dict]) -> None:
    rows = []
    for r in records:
        if r["benchmark"] != "training_step":
            continue
        flag = " (extrapolated)" if r.get("extrapolated") else ""
        rows.append({"N": r["n_points"], "variant": r["variant"] + flag,
                     "ms/step (cpu)": f"{r['step_s_cpu'] * 1e3:.1f}" if "step_s_cpu" in r else "-",
                     "(wall)": f"{r['step_s_wall'] * 1e3:.1f}" if "step_s_wall" in r else "-",
                     "x plain": f"{r['ratio_to_plain']:.2f} ({r['clock']})",
                     "probes": r["probes"] or "-",
                     "extra per probe / plain": "-" if r["extra_per_probe_over_plain"] is None
                     else f"{r['extra_per_probe_over_plain']:.3f}",
                     "rounds": r.get("repeats", "-"), "load": r.get("load_average_before", "-")})
    print_table(rows, ["N", "variant", "ms/step (cpu)", "(wall)", "x plain", "probes", "extra per probe / plain",
                       "rounds", "load"], title="training step: forward + backward + AdamW (1 thread, medians)")


# -- memory of a step (item 5) --------------------------------------------------------------------
def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_child(setup: str, steps: int, tiny: bool, device: str = "cpu") -> dict:
    """One training step of ``setup`` at rollout length ``steps`` (run in a fresh process).

    On a GPU the peak is the caching allocator's (``torch.cuda.max_memory_allocated``) over what was
    allocated before the step, the GPU's counterpart of the resident-set growth."""
    import gc

    import torch

    torch.set_num_threads(1)
    from hybridnde.config import load_case
    from hybridnde.initial_conditions import draw_initial_conditions
    from hybridnde.models import build_model
    from hybridnde.systems import build_host_solver, build_solver
    from hybridnde.training import Batch, RolloutLoss, build_terms

    def terms_for(k: int):
        if setup == "ks_step":
            return [RolloutLoss(steps=k)]
        integration = {"ode_step": "step", "ode_odeint": "odeint", "ode_adjoint": "odeint_adjoint"}[setup]
        return build_terms(load_case(ODE_CASE, overrides=[f"training.integration={integration}",
                                                          f"training.rollout_steps={k}"]),
                           host, device=torch.device(device), dtype=torch.float64)[:1]

    if setup == "ks_step":
        case, model, host, _, windows = ks_setup(16 if tiny else 64, 4 if tiny else 32, 8 if tiny else 64,
                                                 max(steps, 2), device=device)
    else:
        case = load_case(ODE_CASE, overrides=["model.width=16"] if tiny else [])
        torch.manual_seed(0)
        model = build_model(case.model, state_shape=(4,), device=device)
        host = build_host_solver(case, closure=model, device=device)
        truth = build_solver(case.system, case.time, device=device)
        batch_size = 8 if tiny else case.training.batch_size
        with torch.no_grad():
            windows = truth.rollout(draw_initial_conditions(case.initial_condition, truth, range(batch_size)),
                                    max(steps, 2))
    interval = case.time.sample_interval
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    saved = {"bytes": 0, "seen": set()}

    def pack(tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key not in saved["seen"]:
            saved["seen"].add(key)
            saved["bytes"] += key[1]
        return tensor

    def step(k: int, count_saved: bool) -> dict:
        terms = terms_for(k)
        batch = Batch(windows[:, :k + 1], interval, torch.zeros(len(windows), 2, dtype=torch.long))
        optimizer.zero_grad(set_to_none=True)
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                total = sum(w * v for term in terms for v, w in term(model, host, batch, 0).values())
        else:
            total = sum(w * v for term in terms for v, w in term(model, host, batch, 0).values())
        total.backward()
        optimizer.step()
        return getattr(terms[0], "epoch_log", dict)()

    step(1, False)  # warm-up: imports, FFT plans, AdamW state
    gc.collect()
    gpu = on_gpu(device)
    if gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident, reset = torch.cuda.memory_allocated(device), True
    else:
        resident, reset = _status_bytes("VmRSS"), _reset_peak()
    started = time.perf_counter() if gpu else time.process_time()
    nfe = step(steps, False)
    if gpu:
        torch.cuda.synchronize(device)
        seconds, peak = time.perf_counter() - started, torch.cuda.max_memory_allocated(device)
    else:
        seconds, peak = time.process_time() - started, _status_bytes("VmHWM")
    step(steps, True)  # saved-tensor count on its own step (the hook costs time and holds references)
    return {"benchmark": "training_step_memory", "setup": setup, "rollout_steps": steps,
            "peak_rss_growth_bytes": peak - resident if reset else None, "peak_rss_bytes": peak,
            "saved_for_backward_bytes": saved["bytes"], "step_s": seconds, "batch": len(windows),
            "memory": "cuda_allocated" if gpu else "rss", "device": device,
            **{key: int(value) for key, value in nfe.items()}}


def memory_table(arguments, threads: int) -> list[dict]:
    records = []
    ks = (1, 2) if arguments.tiny else arguments.memory_steps
    setups = ("ks_step", "ode_adjoint") if arguments.tiny else MEMORY_SETUPS
    load_before = load_average()
    for setup in setups:
        for k in ks:
            environment = dict(os.environ, OMP_NUM_THREADS="1", **MALLOC_ENVIRONMENT)
            command = ([sys.executable, __file__, "--memory-child", setup, str(k), arguments.device]
                       + (["--tiny"] if arguments.tiny else []))
            result = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
            record = json.loads(result.stdout.strip().splitlines()[-1])
            record.update(load_average_before=load_before, **machine_description(threads, arguments.device))
            record["allocator"] = " ".join(f"{key}={value}" for key, value in MALLOC_ENVIRONMENT.items())  # the child's
            records.append(record)
    rows = []
    for k in ks:
        row = {"k": k}
        for setup in setups:
            (r,) = [r for r in records if r["setup"] == setup and r["rollout_steps"] == k]
            growth = r["peak_rss_growth_bytes"]
            row[setup] = "-" if growth is None else f"{growth / 2**20:.1f}"
            row[f"{setup} saved"] = f"{r['saved_for_backward_bytes'] / 2**20:.1f}"
            if "nfe_forward" in r:
                row[f"{setup} nfe"] = f"{r['nfe_forward']}+{r['nfe_backward']}"
        rows.append(row)
    columns = ["k"] + [c for setup in setups for c in (setup, f"{setup} saved", f"{setup} nfe") if c in rows[0]]
    peak = "peak GPU allocation" if on_gpu(arguments.device) else "peak RSS growth"
    print_table(rows, columns, title=f"training-step memory: {peak} of one step / bytes saved for backward "
                                     "(MiB), function evaluations forward+backward")
    return records


def profile_steps(arguments) -> None:
    """The plain and the exact-regularized step at the first size under torch.profiler: per step, the
    kernel launches, host synchronisations and copies (on a GPU, what makes a launch-bound step), then
    the operators that cost the most. Printed only: a diagnosis, not a figure."""
    from torch.profiler import ProfilerActivity, profile

    cuda = arguments.device.startswith("cuda")
    variants, _, _ = step_variants(arguments.sizes[0], arguments, dense=False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    for name in ("plain", "+ jvp tangent"):
        step, steps = variants[name], 3
        step()
        step()
        with profile(activities=activities) as profiler:
            for _ in range(steps):
                step()
        events = profiler.key_averages()

        def per_step(*keys: str) -> float:
            return sum(event.count for event in events if event.key in keys) / steps

        print(f"N = {arguments.sizes[0]}, {name}, per step: {per_step('cudaLaunchKernel', 'cuLaunchKernel'):.0f} "
              f"kernel launches, {per_step('cudaStreamSynchronize', 'cudaDeviceSynchronize'):.0f} "
              f"synchronisations (one is the benchmark's own), {per_step('cudaMemcpyAsync'):.0f} copies, "
              f"{per_step('aten::_local_scalar_dense'):.0f} scalar reads, {per_step('aten::copy_'):.0f} aten::copy_")
        print(events.table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=15), flush=True)


def main() -> None:
    if len(sys.argv) >= 5 and sys.argv[1] == "--memory-child":
        print(json.dumps(memory_child(sys.argv[2], int(sys.argv[3]), "--tiny" in sys.argv[5:], sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024], help="grid sizes N")
    parser.add_argument("--channels", type=int, default=32, help="CNN hidden channels (model.width)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--rollout-steps", type=int, default=2)
    parser.add_argument("--dense-methods", nargs="*", default=list(DENSE_METHODS), choices=DENSE_METHODS)
    parser.add_argument("--dense-max-n", type=int, default=256, help="largest N with a measured dense penalty")
    parser.add_argument("--dense-repeats", type=int, default=3, help="timed rounds of the dense penalty")
    parser.add_argument("--memory-steps", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="rollout lengths k")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the plain and jvp steps at the first size (launches, syncs, top operators)")
    arguments = parser.parse_args()
    threads = configure_threads(arguments.threads, arguments.cores)
    if arguments.tiny:
        arguments.sizes, arguments.channels, arguments.batch = [16, 32], 4, 8
        arguments.repeats, arguments.dense_repeats, arguments.dense_max_n = 2, 2, 32
    if arguments.profile:
        profile_steps(arguments)
        return
    print(f"load average at start: {os.getloadavg()}", flush=True)
    records = []
    if not arguments.memory_only:
        records += step_costs(arguments, threads)
        print_step_tables(records)
    if not arguments.no_memory:
        records += memory_table(arguments, threads)
    print(f"load average at end: {os.getloadavg()}", flush=True)
    emit_json(records, arguments.jsonl)


if __name__ == "__main__":
    main()
