"""Ensemble rollouts: member-steps per second on 1 and 2 MPI ranks, and the weak-scaling efficiency.

    python benchmarks/rollout_scaling.py              # KS (cases/ks_l22.toml, N = 64) and two-body
    python benchmarks/rollout_scaling.py --max-other-load 0.2   # wait for a quiet machine before each run
    python benchmarks/rollout_scaling.py --codec-only # how fast the NetCDF writer compresses, per level
    python benchmarks/rollout_scaling.py --tiny       # CI smoke run: KS with its closure, 1 and 2 ranks
    python benchmarks/rollout_scaling.py --ranks 1 2 4 --members-per-rank 512

What runs: ``mpiexec -n R python -m hybridnde.cli rollout CASE --out ...`` (R = 1 too, so both pay
the same MPI start-up), each rank with one thread (``rollout.threads = 1``) and a fixed number of
members (weak scaling: ``rollout.batch_size`` = members per rank, so each rank runs one batch).
Open MPI binds each rank to a core (its default for up to 2 ranks), so each rank's encoder thread
(which compresses that rank's saves) and rank 0's writer thread share their rank's core. Two
figures per run:

* ``loop``: the rollout's own ``member_steps_per_second`` attribute: all members' steps divided by
  the wall time of the stepping loop on rank 0 (set-up, imports and the final rename excluded;
  gathering, writing and compressing every ``save_every``-th state included);
* ``end to end``: all members' steps divided by the wall time of the whole ``mpiexec`` command
  (start-up, imports, set-up and commit included).

Weak-scaling efficiency = rate(R) / (R * rate(1)), from the medians over ``--repeats`` interleaved
runs, and from the best run of each rank count. Each run also records the **CPU time other
processes used while it ran** (``/proc/stat`` busy time minus this process tree's, in cores): on a
shared 2-core machine a 2-rank run competes with everyone else, so that column says whether a
figure measures the code or the neighbours. ``--max-other-load L`` waits (up to ``--max-wait``
seconds) before each run until other processes use less than ``L`` cores over a 3 s probe.

For each case two set-ups, both stepping the true system (``[hybrid]`` host overridden): ``bare``
(no closure) and ``hybrid`` (plus a closure of the case's ``[model]`` with random weights and its
output layer zeroed: it costs what a trained one costs, adds nothing, and the dynamics stay on the
attractor -- the case's own hosts, linear KS or a neural ODE, would blow up or freeze with an
untrained closure, and blown-up members are dropped from the batch, which would flatter the rate).
Members that blow up anyway are counted in the JSON lines (``blew_up``). A ``solver only`` column
times the same batch stepped in a plain loop in this process, without saving anything: the rollout's
overhead over the solver is ``1 - loop rate per rank / solver only``. Every configuration runs at
the ``--compression-levels`` given (default 4 = the default ``output.compression_level``, 1, and 0 =
no zlib), since compressing is the costliest part of writing (each rank compresses its own saves,
``hybridnde/chunk_codec.py``). ``--codec`` adds a table of the
writer's compression cost per level on these KS fields (``--codec-only``: just that table).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_arguments, configure_threads, emit_json, format_rate, machine_description, print_table  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
CASES = {"ks_l22": REPOSITORY / "cases" / "ks_l22.toml", "two_body": REPOSITORY / "cases" / "two_body.toml"}
#: members per rank and steps of the full runs: 5-15 s of stepping per run on one core (start-up is
#: 2-3 s), many output chunks, so writing overlaps stepping as it does in long rollouts
FULL = {("ks_l22", "bare"): dict(members=128, steps=20000), ("ks_l22", "hybrid"): dict(members=64, steps=1000),
        ("two_body", "bare"): dict(members=512, steps=40000), ("two_body", "hybrid"): dict(members=256, steps=2000)}
TINY = {key: dict(members=4, steps=20) for key in FULL}
#: overrides that make the host the true system (two_body.toml's host is a neural ODE, ks_l22.toml's lacks u u_x)
BARE = ["hybrid.setup=residual", "hybrid.system={}"]


def closure_file(case_path: Path, folder: Path) -> Path:
    """The case's ``[model]`` with random weights and a zeroed output layer, as closure.pt."""
    import torch

    from hybridnde.closure_file import save_closure
    from hybridnde.config import load_case
    from hybridnde.models import build_model
    from hybridnde.systems import build_host_solver

    case = load_case(case_path)
    torch.manual_seed(0)
    model = build_model(case.model, state_shape=build_host_solver(case).state_shape)
    last = [module for module in model.modules() if hasattr(module, "weight")][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    path = folder / f"{case_path.stem}_closure.pt"
    save_closure(path, model)
    return path


# -- what else runs on the machine ----------------------------------------------------------------
def _busy_seconds() -> float | None:
    """CPU seconds all processes on this machine have computed since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its finished children (the mpiexec trees we waited for)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class OtherLoad:
    """Cores' worth of CPU time that processes other than ours used during a ``with`` block."""

    def __enter__(self) -> "OtherLoad":
        self.busy, self.own, self.wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        self.cores: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        busy = _busy_seconds()
        if busy is None or self.busy is None:
            return
        wall = time.perf_counter() - self.wall
        self.cores = max(0.0, (busy - self.busy) - (_own_seconds() - self.own)) / max(wall, 1e-9)


def wait_for_quiet(max_other: float | None, max_wait: float) -> float | None:
    """Sleep until other processes use less than ``max_other`` cores over a 3 s probe (at most
    ``max_wait`` s); returns the last probe's figure."""
    started = time.perf_counter()
    while True:
        with OtherLoad() as probe:
            time.sleep(3.0)
        if max_other is None or probe.cores is None or probe.cores < max_other:
            return probe.cores
        if time.perf_counter() - started > max_wait:
            print(f"  (still {probe.cores:.2f} cores busy elsewhere after {max_wait:.0f} s: measuring anyway)",
                  file=sys.stderr, flush=True)
            return probe.cores
        time.sleep(10.0)


# -- one rollout -----------------------------------------------------------------------------------
#: Open MPI's launcher failing before any rank ran (a transient PMIx start failure seen once in ~100
#: launches on a shared machine, exit 213): the launch is retried, up to this many times in all
LAUNCHER_NOT_STARTED = "listener thread failed to start"
LAUNCH_ATTEMPTS = 3


def rollout_rate(case_path: Path, ranks: int, members_per_rank: int, steps: int, save_every: int,
                 compression_level: int, closure: Path | None, folder: Path, setup: str, *,
                 max_other: float | None = None, max_wait: float = 0.0, independent: bool = False) -> dict:
    """One ``mpiexec -n ranks`` rollout: its loop rate (from the file), end-to-end rate, and the load
    other processes put on the machine meanwhile.

    ``independent``: the control instead -- ``ranks`` separate one-process rollouts of
    ``members_per_rank`` members each at the same time, process ``i`` pinned to core ``i`` (as Open MPI
    binds rank ``i``), without MPI: what the machine gives ``ranks`` concurrent rollouts that never
    communicate and each write their own file. Rates are summed.
    """
    import xarray as xr

    copies = ranks if independent else 1
    members = members_per_rank if independent else ranks * members_per_rank
    outs = [folder / f"{case_path.stem}_{setup}_{ranks}_{copy}.nc" for copy in range(copies)]
    overrides = [f"rollout.members={members}", f"rollout.batch_size={members_per_rank}",
                 f"rollout.steps={steps}", f"rollout.save_every={save_every}", "rollout.threads=1",
                 f"output.compression_level={compression_level}", "compute.device=cpu", *BARE]

    def command(out: Path) -> list[str]:
        line = [sys.executable, "-m", "hybridnde.cli", "-q", "rollout", str(case_path), "--out", str(out),
                "--no-progress"] + [item for override in overrides for item in ("--set", override)]
        return line + (["--closure", str(closure)] if closure is not None else [])

    environment = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                       OMP_NUM_THREADS="1")
    quiet = wait_for_quiet(max_other, max_wait) if max_other is not None else None
    load_before = round(os.getloadavg()[0], 2)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with OtherLoad() as others:
        started = time.perf_counter()
        if independent:
            processes = [subprocess.Popen(command(out), env=environment, stdout=subprocess.DEVNULL,
                                          preexec_fn=(lambda core=cores[copy % len(cores)]: os.sched_setaffinity(0, {core}))
                                          if cores else None)
                         for copy, out in enumerate(outs)]
            if any(process.wait() != 0 for process in processes):
                raise RuntimeError("an independent rollout failed")
        else:
            for attempts in range(1, LAUNCH_ATTEMPTS + 1):
                started = time.perf_counter()  # a launch that failed to start did no work: time the one that ran
                finished = subprocess.run(["mpiexec", "-n", str(ranks), *command(outs[0])], env=environment,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                sys.stderr.write(finished.stderr)  # shown as before (warnings of the run included)
                if finished.returncode == 0:
                    break
                if LAUNCHER_NOT_STARTED not in finished.stderr or attempts == LAUNCH_ATTEMPTS:
                    raise subprocess.CalledProcessError(finished.returncode, finished.args)
                print(f"mpiexec did not start (attempt {attempts} of {LAUNCH_ATTEMPTS}); launching again",
                      file=sys.stderr)
                time.sleep(1.0)
        seconds = time.perf_counter() - started
    rate, member_steps, blew_up, size = 0.0, 0, 0, 0
    for out in outs:
        with xr.open_dataset(out) as dataset:
            rate += float(dataset.attrs["member_steps_per_second"])
            member_steps += int(dataset.attrs["member_steps"])
            blew_up += int(dataset.attrs["members_blew_up"])
        size += out.stat().st_size
        out.unlink()
    return {"rate": rate, "end_to_end_rate": member_steps / seconds, "end_to_end_seconds": seconds,
            "other_cores": others.cores, "other_cores_before": quiet, "load_average_before": load_before,
            "file_bytes": size, "blew_up": blew_up, "launch_attempts": 1 if independent else attempts}


def solver_only_rate(case_path: Path, members: int, steps: int, closure: Path | None, setup: str) -> float:
    """member-steps/s of the bare stepping loop (no saves, no output), one thread, this process."""
    import torch

    from hybridnde.closure_file import load_closure
    from hybridnde.config import load_case
    from hybridnde.initial_conditions import draw_initial_conditions
    from hybridnde.systems import build_host_solver

    overrides = BARE
    case = load_case(case_path, overrides=overrides)
    model = load_closure(closure)[0] if closure is not None else None
    solver = build_host_solver(case, closure=model)
    u0 = draw_initial_conditions(case.initial_condition, solver, range(members), seed=1)
    times = [torch.tensor(i * solver.dt, dtype=solver.dtype) for i in range(steps)]
    with torch.inference_mode():
        state = solver.to_internal(u0)
        state = solver.step_internal(times[0], state, solver.dt)  # warm-up (plans, caches)
        started = time.perf_counter()
        for t in times:
            state = solver.step_internal(t, state, solver.dt)
        seconds = time.perf_counter() - started
    return members * steps / seconds


def codec_table(members: int, steps: int, save_every: int, levels: list[int], time_chunk: int = 64) -> list[dict]:
    """CPU cost of writing bare-KS saves through ``TrajectoryStreamWriter`` at each zlib level (this
    process, one thread: the writer thread runs beside an idle main thread)."""
    import numpy as np
    import torch

    from hybridnde.config import load_case
    from hybridnde.initial_conditions import draw_initial_conditions
    from hybridnde.netcdf_stream import TrajectoryStreamWriter
    from hybridnde.systems import build_host_solver

    case = load_case(CASES["ks_l22"], overrides=BARE)
    solver = build_host_solver(case)
    with torch.inference_mode():
        u0 = solver.rollout(draw_initial_conditions(case.initial_condition, solver, range(members), seed=1), 400)[:, -1]
        started = time.process_time()
        saves = solver.rollout(u0, steps, save_every=save_every).numpy()
        stepping = time.process_time() - started
    times = np.arange(saves.shape[1]) * save_every * solver.dt
    records = []
    with tempfile.TemporaryDirectory() as temporary:
        for level in levels:
            path = Path(temporary) / f"level{level}.nc"
            writer = TrajectoryStreamWriter(
                path, members=np.arange(members), times=times, state_dim="x", state_coords=solver.x.numpy(),
                state_shape=solver.state_shape, dtype=saves.dtype, title="codec", solver=repr(solver),
                closure_checksum="", case_toml="", extra_attrs={}, compression_level=level, time_chunk=time_chunk)
            wall, cpu = time.perf_counter(), time.process_time()
            for first in range(0, saves.shape[1], time_chunk):
                writer.write(0, first, np.ascontiguousarray(saves[:, first:first + time_chunk]))
            writer.flush()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            writer.commit(np.zeros(members, np.int8), np.full(members, np.nan), {})
            records.append({"benchmark": "rollout_codec", "compression_level": level, "members": members,
                            "saves": saves.shape[1], "state_bytes": saves.nbytes, "write_cpu_seconds": cpu,
                            "write_wall_seconds": wall, "megabytes_per_cpu_second": saves.nbytes / cpu / 1e6,
                            "file_bytes": path.stat().st_size, "size_ratio": path.stat().st_size / saves.nbytes,
                            "stepping_cpu_seconds": stepping, "write_over_stepping": cpu / stepping,
                            "save_every": save_every})
    print_table([{"zlib": r["compression_level"], "MB": f"{r['state_bytes'] / 1e6:.0f}",
                  "MB/s (cpu)": f"{r['megabytes_per_cpu_second']:.0f}", "file / data": f"{r['size_ratio']:.3f}",
                  "write / stepping (w)": f"{r['write_over_stepping']:.2f}",
                  "1/(1+w)": f"{1 / (1 + r['write_over_stepping']):.0%}"}
                 for r in records], ["zlib", "MB", "MB/s (cpu)", "file / data", "write / stepping (w)", "1/(1+w)"],
                title=f"NetCDF writer, bare KS N = 64, {members} members x {steps} steps, save_every = {save_every} "
                      "(w: CPU time of encoding + writing / of stepping; 1/(1+w): the loop rate left of the "
                      "solver's when one core both steps and writes)")
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, device=False)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (the first is the base)")
    parser.add_argument("--members-per-rank", type=int, default=None, help="override the per-case default")
    parser.add_argument("--steps", type=int, default=None, help="override the per-case default")
    parser.add_argument("--save-every", type=int, default=10, help="rollout.save_every (output volume)")
    parser.add_argument("--compression-levels", type=int, nargs="+", default=[4, 1, 0],
                        help="output.compression_level values to run (4: the default; 0: no zlib)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--setups", nargs="+", default=["bare", "hybrid"], choices=["bare", "hybrid"])
    parser.add_argument("--max-other-load", type=float, default=None,
                        help="before each run, wait until other processes use fewer cores than this")
    parser.add_argument("--max-wait", type=float, default=600.0, help="longest wait for a quiet machine (s)")
    parser.add_argument("--control", action="store_true",
                        help="also run R independent one-process rollouts at once (one per core, no MPI): the "
                             "machine's own ceiling for R concurrent rollouts")
    parser.add_argument("--codec", action="store_true", help="also time the writer's compression per level")
    parser.add_argument("--codec-only", action="store_true", help="only the compression table")
    arguments = parser.parse_args()
    threads = configure_threads(arguments.threads, arguments.cores)
    levels = arguments.compression_levels
    records: list[dict] = []
    if arguments.codec or arguments.codec_only:
        codec_levels = sorted(set(levels) | {0, 1, 4}) if not arguments.tiny else [0, 1]
        members, steps = (4, 40) if arguments.tiny else (128, 4000)
        records += [dict(r, **machine_description(threads)) for r in
                    codec_table(members, steps, arguments.save_every, codec_levels)]
        if arguments.codec_only:
            emit_json(records, arguments.jsonl)
            return
    if shutil.which("mpiexec") is None:
        sys.exit("rollout_scaling: needs mpiexec (pip install 'hybridnde[mpi]')")
    repeats = 1 if arguments.tiny else max(1, arguments.repeats)
    sizes = TINY if arguments.tiny else FULL
    if arguments.tiny:  # one case with its closure: every code path, two launches
        arguments.cases, arguments.setups, levels = arguments.cases[:1], ["hybrid"], levels[:1]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for case_name in arguments.cases:
            case_path = CASES[case_name]
            for setup in arguments.setups:
                members = arguments.members_per_rank or sizes[case_name, setup]["members"]
                steps = arguments.steps or sizes[case_name, setup]["steps"]
                closure = closure_file(case_path, folder) if setup == "hybrid" else None
                solver_only = solver_only_rate(case_path, members, min(steps, 500), closure, setup)
                for level in levels:
                    # keys: rank counts, and ("independent", R) for the control
                    runs: dict = {ranks: [] for ranks in arguments.ranks}
                    if arguments.control:
                        runs.update({("independent", ranks): [] for ranks in arguments.ranks[1:]})
                    for _ in range(repeats):  # interleaved, so that a load spike hits every rank count alike
                        for key in runs:
                            ranks = key[1] if isinstance(key, tuple) else key
                            runs[key].append(rollout_rate(case_path, ranks, members, steps, arguments.save_every,
                                                          level, closure, folder, setup,
                                                          max_other=arguments.max_other_load,
                                                          max_wait=arguments.max_wait,
                                                          independent=isinstance(key, tuple)))
                    base = arguments.ranks[0]

                    def median(key, field):
                        return statistics.median(run[field] for run in runs[key])

                    for key in runs:
                        ranks = key[1] if isinstance(key, tuple) else key
                        label = f"{ranks} indep." if isinstance(key, tuple) else str(ranks)
                        rate, e2e = median(key, "rate"), median(key, "end_to_end_rate")
                        scale = ranks / base
                        efficiency = rate / (scale * median(base, "rate"))
                        e2e_efficiency = e2e / (scale * median(base, "end_to_end_rate"))
                        best = max(run["rate"] for run in runs[key])
                        best_efficiency = best / (scale * max(run["rate"] for run in runs[base]))
                        others = [run["other_cores"] for run in runs[key] if run["other_cores"] is not None]
                        other = statistics.median(others) if others else float("nan")
                        overhead = 1 - (rate / ranks) / solver_only
                        rows.append({"case": case_name, "setup": setup, "zlib": level, "ranks": label,
                                     "members": ranks * members, "steps": steps, "loop rate": format_rate(rate),
                                     "per rank": format_rate(rate / ranks), "solver only": format_rate(solver_only),
                                     "overhead": f"{overhead:.0%}", "weak eff.": f"{efficiency:.0%}",
                                     "(best run)": f"{best_efficiency:.0%}",
                                     "end to end": format_rate(e2e), "weak eff. (e2e)": f"{e2e_efficiency:.0%}",
                                     "others (cores)": f"{other:.2f}",
                                     "load": f"{statistics.median(r['load_average_before'] for r in runs[key]):.2f}"})
                        records.append({"benchmark": "rollout_scaling", "case": case_name, "setup": setup,
                                        "ranks": ranks, "independent_processes": isinstance(key, tuple),
                                        "members_per_rank": members, "steps": steps,
                                        "save_every": arguments.save_every, "compression_level": level,
                                        "member_steps_per_second": rate, "end_to_end_member_steps_per_second": e2e,
                                        "solver_only_member_steps_per_second": solver_only,
                                        "weak_scaling_efficiency": efficiency,
                                        "end_to_end_weak_scaling_efficiency": e2e_efficiency,
                                        "rollout_overhead": overhead, "best_member_steps_per_second": best,
                                        "best_weak_scaling_efficiency": best_efficiency,
                                        "other_processes_cores_median": other, "runs": runs[key],
                                        "repeats": repeats, **machine_description(threads)})
                    blew_up = sum(run["blew_up"] for values in runs.values() for run in values)
                    print(f"{case_name} {setup} zlib {level}: " + ", ".join(
                        f"{key} {format_rate(median(key, 'rate'))}" for key in runs)
                        + (f"; WARNING: {blew_up} member(s) blew up, the rates are flattered" if blew_up else ""),
                        file=sys.stderr, flush=True)
    print_table(rows, ["case", "setup", "zlib", "ranks", "members", "steps", "loop rate", "per rank", "solver only",
                       "overhead", "weak eff.", "(best run)", "end to end", "weak eff. (e2e)", "others (cores)", "load"],
                title=f"ensemble rollouts, weak scaling (save_every = {arguments.save_every}; one thread per rank; "
                      "medians of interleaved runs; 'others': cores other processes used meanwhile)")
    emit_json(records, arguments.jsonl)


if __name__ == "__main__":
    main()
