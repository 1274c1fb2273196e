"""``hybridnde simulate`` streamed (with checkpoints) against the same simulation held in memory.

    python benchmarks/simulate_streaming.py          # full ks_fd, ks_l22 x 64 members, 256 Lorenz members; ~4 min
    python benchmarks/simulate_streaming.py --tiny   # CI smoke run

Contenders, per case, timed in interleaved rounds (common.py), one whole simulation a call:

* ``in memory``: ``simulate.simulate_case`` (the whole trajectory in one array) + ``io.write_netcdf``;
* ``streamed``: ``simulation_job.run_simulation``, what ``hybridnde simulate`` runs for fixed-step
  integrators: one ``output.time_chunk`` of saves at a time into the partial file, checkpoints at
  their default spacing.

Both files are compared value for value (they must be equal, bit for bit). Then the peak resident
memory (``VmHWM``) each adds to a fresh process is measured for one large trajectory, in a
subprocess per contender.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_common_arguments, configure_threads, emit_json, machine_description,  # noqa: E402
                    peak_rss_bytes, print_table)

ROOT = Path(__file__).resolve().parents[1]

#: (case file, overrides) per size
CASES = {"full": [("ks_fd", []), ("ks_l22", ["initial_condition.members=64"]),
                  ("lorenz63", ["initial_condition.members=256", "time.n_steps=200000"])],
         "tiny": [("ks_l22", ["initial_condition.members=4", "time.n_steps=40", "time.spinup_steps=20"]),
                  ("lorenz63", ["initial_condition.members=8", "time.n_steps=2000"])]}
#: the memory probe's trajectory: 1024 Lorenz members x 10001 saves (234 MiB), or a small one
MEMORY_CASE = {"full": ["initial_condition.members=1024", "time.n_steps=100000"],
               "tiny": ["initial_condition.members=64", "time.n_steps=2000"]}


def simulate(contender: str, case, out: Path) -> None:
    from hybridnde.io import write_netcdf
    from hybridnde.simulate import simulate_case
    from hybridnde.simulation_job import run_simulation

    if contender == "in memory":
        write_netcdf(simulate_case(case, progress=False), out, compression_level=case.output.compression_level,
                     time_chunk=case.output.time_chunk)
    else:
        run_simulation(case, out, progress=False)


def same_values(first: Path, second: Path) -> bool:
    import numpy as np
    import xarray as xr

    with xr.open_dataset(first) as a, xr.open_dataset(second) as b:
        return all(np.array_equal(a[name].values, b[name].values, equal_nan=True)
                   for name in ("u", "status", "blowup_time", "time", "member"))


def warmed_up(name: str, overrides: list[str], folder: Path):
    """The case, after one short run of each contender (libraries, FFT plans, compiled kernels loaded)."""
    from hybridnde.config import load_case

    case = load_case(ROOT / "cases" / f"{name}.toml", overrides=overrides)
    short = load_case(ROOT / "cases" / f"{name}.toml", overrides=[
        *overrides, f"time.n_steps={2 * case.time.save_every}", "time.spinup_steps=0"])
    for contender in ("in memory", "streamed"):
        simulate(contender, short, folder / "warm-up.nc")
    return case


def time_case(name: str, overrides: list[str], repeats: int, folder: Path) -> tuple[dict, dict]:
    case = warmed_up(name, overrides, folder)
    files = {"in memory": folder / f"{name}_memory.nc", "streamed": folder / f"{name}_streamed.nc"}
    wall: dict[str, list[float]] = {contender: [] for contender in files}
    cpu: dict[str, list[float]] = {contender: [] for contender in files}
    for round_index in range(repeats):
        order = list(files) if round_index % 2 == 0 else list(files)[::-1]  # neither always first
        for contender in order:
            started, started_cpu = time.perf_counter(), time.process_time()
            simulate(contender, case, files[contender])
            wall[contender].append(time.perf_counter() - started)
            cpu[contender].append(time.process_time() - started_cpu)
    time_ = case.time
    row = {"case": name, "members": case.initial_condition.members,
           "steps": f"{time_.n_steps} (+{time_.spinup_steps})", "saves": time_.n_steps // time_.save_every + 1}
    for contender in files:
        row[f"{contender} s"] = f"{statistics.median(cpu[contender]):.3g}"
    ratio = statistics.median(cpu["streamed"]) / statistics.median(cpu["in memory"])
    row["streamed / in memory"] = f"{ratio:.3g}"
    record = {"benchmark": "simulate_streaming", "case": name, "overrides": overrides, "repeats": repeats,
              "seconds_cpu": {k: statistics.median(v) for k, v in cpu.items()},
              "seconds_wall": {k: statistics.median(v) for k, v in wall.items()},
              "ratio_cpu": ratio, "identical": same_values(files["in memory"], files["streamed"])}
    row["identical"] = record["identical"]
    return row, record


def memory_probe(contender: str, size: str) -> None:
    """In a fresh process: print the peak RSS growth of one simulation of ``MEMORY_CASE[size]``, its
    members and its saves."""
    with tempfile.TemporaryDirectory() as folder:
        case = warmed_up("lorenz63", MEMORY_CASE[size], Path(folder))  # imports, plans: not the trajectory's
        before = peak_rss_bytes()
        simulate(contender, case, Path(folder) / "truth.nc")
    print(peak_rss_bytes() - before, case.initial_condition.members, case.time.n_steps // case.time.save_every + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, device=False)
    parser.add_argument("--memory-probe", nargs=2, metavar=("CONTENDER", "SIZE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    threads = configure_threads(arguments.threads, arguments.cores)
    logging.disable(logging.WARNING)  # (the simulations' progress lines)
    if arguments.memory_probe:
        memory_probe(arguments.memory_probe[0].replace("_", " "), arguments.memory_probe[1])
        return
    size = "tiny" if arguments.tiny else "full"
    repeats = 1 if arguments.tiny else max(1, arguments.repeats // 2)  # (a round is whole simulations)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, overrides in CASES[size]:
            row, record = time_case(name, overrides, repeats, Path(folder))
            rows.append(row)
            records.append(record)
    print_table(rows, list(rows[0]), title=f"simulate: streamed against in memory (CPU seconds, median of {repeats})")
    growth = {}
    for contender in ("in memory", "streamed"):
        result = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--memory-probe",
                                 contender.replace(" ", "_"), size], capture_output=True, text=True, check=True)
        growth[contender], members, saves = map(int, result.stdout.split()[-3:])
    trajectory_mib = members * saves * 3 * 8 / 2**20
    print(f"\npeak RSS growth, lorenz63 {members} members x {saves} saves ({trajectory_mib:.3g} MiB trajectory): "
          f"in memory {growth['in memory'] / 2**20:.4g} MiB, streamed {growth['streamed'] / 2**20:.4g} MiB")
    records.append({"benchmark": "simulate_streaming_memory", "members": members, "saves": saves,
                    "trajectory_bytes": members * saves * 3 * 8, "peak_rss_growth_bytes": growth})
    emit_json([{**record, **machine_description(threads)} for record in records], arguments.jsonl)


if __name__ == "__main__":
    main()
