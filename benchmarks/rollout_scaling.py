"""Ensemble rollouts: member-steps per second on 1 and 2 MPI ranks, and the weak-scaling efficiency.

    python benchmarks/rollout_scaling.py              # KS (cases/ks_l22.toml, N = 64) and two-body
    python benchmarks/rollout_scaling.py --tiny       # CI smoke run: KS with its closure, 1 and 2 ranks
    python benchmarks/rollout_scaling.py --ranks 1 2 4 --members-per-rank 512

What runs: ``mpiexec -n R python -m hybridnde.cli rollout CASE --out ...`` (R = 1 too, so both pay
the same MPI start-up), each rank with one thread (``rollout.threads = 1``) and a fixed number of
members (weak scaling: ``rollout.batch_size`` = members per rank, so each rank runs one batch).
The figure is the rollout's own ``member_steps_per_second`` attribute: all members' steps divided
by the wall time of the stepping loop on rank 0 (set-up, imports and the final rename excluded;
gathering, writing and compressing every ``save_every``-th state included). Weak-scaling
efficiency = rate(R) / (R * rate(1)), from the median over ``--repeats`` interleaved runs and from
the best run (on a shared machine the best run is the one other processes disturbed least).

For each case two set-ups: ``bare`` (the true system, no closure) and ``hybrid`` (the case's
``[hybrid]`` host with a closure of the case's ``[model]``, its last layer zeroed so that it costs
what a trained one costs but leaves the host's dynamics tame). A ``solver only`` column times the
same batch stepped in a plain loop in this process, without saving anything: the rollout's
overhead over the solver is ``1 - rollout per rank / solver only``. Every configuration runs with
zlib at the default level 4 and without compression (``--compression-levels``), since compressing
every saved state on rank 0 is the part of a rollout that does not scale with ranks.
"""
from __future__ import annotations

import argparse
import os
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
#: members per rank and steps of the full runs: a few seconds per run on one core, several output chunks
#: for the cheap bare solvers so that writing overlaps stepping as it does in long rollouts
FULL = {("ks_l22", "bare"): dict(members=128, steps=4000), ("ks_l22", "hybrid"): dict(members=64, steps=500),
        ("two_body", "bare"): dict(members=512, steps=4000), ("two_body", "hybrid"): dict(members=256, steps=500)}
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


def rollout_rate(case_path: Path, ranks: int, members_per_rank: int, steps: int, save_every: int,
                 compression_level: int, closure: Path | None, folder: Path, setup: str) -> float:
    """member-steps/s of one ``mpiexec -n ranks`` rollout, read back from its file."""
    import xarray as xr

    out = folder / f"{case_path.stem}_{setup}_{ranks}.nc"
    overrides = [f"rollout.members={ranks * members_per_rank}", f"rollout.batch_size={members_per_rank}",
                 f"rollout.steps={steps}", f"rollout.save_every={save_every}", "rollout.threads=1",
                 f"output.compression_level={compression_level}", "compute.device=cpu"]
    if setup == "bare":
        overrides += BARE
    command = [sys.executable, "-m", "hybridnde.cli", "-q", "rollout", str(case_path), "--out", str(out),
               "--no-progress"] + [item for override in overrides for item in ("--set", override)]
    if closure is not None:
        command += ["--closure", str(closure)]
    environment = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                       OMP_NUM_THREADS="1")
    subprocess.run(["mpiexec", "-n", str(ranks), *command], check=True, env=environment, stdout=subprocess.DEVNULL)
    with xr.open_dataset(out) as dataset:
        rate = float(dataset.attrs["member_steps_per_second"])
    out.unlink()
    return rate


def solver_only_rate(case_path: Path, members: int, steps: int, closure: Path | None, setup: str) -> float:
    """member-steps/s of the bare stepping loop (no saves, no output), one thread, this process."""
    import torch

    from hybridnde.closure_file import load_closure
    from hybridnde.config import load_case
    from hybridnde.initial_conditions import draw_initial_conditions
    from hybridnde.systems import build_host_solver

    overrides = BARE if setup == "bare" else []
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts (the first is the base)")
    parser.add_argument("--members-per-rank", type=int, default=None, help="override the per-case default")
    parser.add_argument("--steps", type=int, default=None, help="override the per-case default")
    parser.add_argument("--save-every", type=int, default=10, help="rollout.save_every (output volume)")
    parser.add_argument("--compression-levels", type=int, nargs="+", default=[4, 0],
                        help="output.compression_level values to run (4: the default; 0: no zlib)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--setups", nargs="+", default=["bare", "hybrid"], choices=["bare", "hybrid"])
    arguments = parser.parse_args()
    if shutil.which("mpiexec") is None:
        sys.exit("rollout_scaling: needs mpiexec (pip install 'hybridnde[mpi]')")
    threads = configure_threads(arguments.threads)
    repeats = 1 if arguments.tiny else max(1, min(arguments.repeats, 3))
    sizes = TINY if arguments.tiny else FULL
    levels = arguments.compression_levels
    if arguments.tiny:  # one case with its closure: every code path, two launches
        arguments.cases, arguments.setups, levels = arguments.cases[:1], ["hybrid"], levels[:1]
    rows, records = [], []
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
                    samples: dict[int, list[float]] = {ranks: [] for ranks in arguments.ranks}
                    for _ in range(repeats):  # interleaved, so that a load spike hits every rank count alike
                        for ranks in arguments.ranks:
                            samples[ranks].append(rollout_rate(case_path, ranks, members, steps, arguments.save_every,
                                                               level, closure, folder, setup))
                    rates = {ranks: statistics.median(values) for ranks, values in samples.items()}
                    best = {ranks: max(values) for ranks, values in samples.items()}  # the least disturbed run
                    base = arguments.ranks[0]
                    for ranks, rate in rates.items():
                        efficiency = rate / (ranks / base * rates[base])
                        best_efficiency = best[ranks] / (ranks / base * best[base])
                        overhead = 1 - (rate / ranks) / solver_only
                        rows.append({"case": case_name, "setup": setup, "zlib": level, "ranks": ranks,
                                     "members": ranks * members, "steps": steps,
                                     "member-steps/s": format_rate(rate), "per rank": format_rate(rate / ranks),
                                     "solver only": format_rate(solver_only), "overhead": f"{overhead:.0%}",
                                     "weak eff.": f"{efficiency:.0%}", "best": format_rate(best[ranks]),
                                     "weak eff. (best)": f"{best_efficiency:.0%}"})
                        records.append({"benchmark": "rollout_scaling", "case": case_name, "setup": setup,
                                        "ranks": ranks, "members_per_rank": members, "steps": steps,
                                        "save_every": arguments.save_every, "compression_level": level,
                                        "member_steps_per_second": rate,
                                        "solver_only_member_steps_per_second": solver_only,
                                        "weak_scaling_efficiency": efficiency, "rollout_overhead": overhead,
                                        "best_member_steps_per_second": best[ranks],
                                        "best_weak_scaling_efficiency": best_efficiency,
                                        "samples": samples[ranks], "repeats": repeats, **machine_description(threads)})
    print_table(rows, ["case", "setup", "zlib", "ranks", "members", "steps", "member-steps/s", "per rank",
                       "solver only", "overhead", "weak eff.", "best", "weak eff. (best)"],
                title=f"ensemble rollouts, weak scaling (save_every = {arguments.save_every}; one thread per rank; "
                      "wall time of the stepping loop until the data are on disk)")
    emit_json(records, arguments.jsonl)


if __name__ == "__main__":
    main()
