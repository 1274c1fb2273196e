"""What the partial file's chunk journal costs a rollout: the same rollout with and without it.

    python benchmarks/chunk_journal.py          # Lorenz (3-component chunks) and KS FD; ~3 min
    python benchmarks/chunk_journal.py --tiny   # CI smoke run

While a rollout streams into ``.NAME.partial``, the writer locates each chunk it stores by reading the
file back and, at each checkpoint, appends the new chunks to ``.NAME.chunks`` (``partial_repair``),
so that a resume can rebuild a partial file a kill left damaged. Contenders, timed in interleaved
rounds, one whole ``run_rollout`` a call, 1 thread, the default checkpoint after every output chunk:

* ``journal``: as shipped;
* ``no journal``: the writer without it (as before 2026-11-28).

The worst case for the journal is many small chunks: Lorenz states (3 numbers, 64 saves: 1.5 KiB a
chunk, compressed) with the stepping cheap; the KS finite-difference host (64 points: 32 KiB chunks)
is the usual case. Both files are compared value for value.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_arguments, configure_threads, emit_json, machine_description, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: (case, overrides) per size; save every step, so every step's state is written
CASES = {"full": [("lorenz63", ["rollout.members=256", "rollout.steps=32000"]),
                  ("ks_fd", ["rollout.members=64", "rollout.steps=6400"])],
         "tiny": [("lorenz63", ["rollout.members=8", "rollout.steps=256"]),
                  ("ks_fd", ["rollout.members=4", "rollout.steps=128"])]}
COMMON = ["rollout.save_every=1", "rollout.threads=1"]


class _NoJournal:
    """Stands in for ``ChunkJournal`` and ``ChunkLocator``: notes, locates and records nothing (two empty
    calls a chunk are all that is left of them)."""

    def __init__(self, *args, **kwargs):
        pass

    def note(self, *args) -> None:
        pass

    def after(self, *args) -> None:
        return None

    def checkpoint(self, *args, **kwargs) -> dict:
        return {}

    def close(self) -> None:
        pass


def rollout(contender: str, case, out: Path) -> None:
    from hybridnde import netcdf_stream
    from hybridnde.rollout_job import run_rollout

    real = netcdf_stream.ChunkJournal, netcdf_stream.ChunkLocator
    if contender == "no journal":  # (a fresh start's only uses of them)
        netcdf_stream.ChunkJournal = netcdf_stream.ChunkLocator = _NoJournal
    try:
        run_rollout(case, out, progress=False)
    finally:
        netcdf_stream.ChunkJournal, netcdf_stream.ChunkLocator = real


def same_values(first: Path, second: Path) -> bool:
    import numpy as np
    import xarray as xr

    with xr.open_dataset(first) as a, xr.open_dataset(second) as b:
        return all(np.array_equal(a[name].values, b[name].values, equal_nan=True)
                   for name in ("u", "status", "blowup_time", "time", "member"))


def time_case(name: str, overrides: list[str], repeats: int, folder: Path) -> tuple[dict, dict]:
    from hybridnde.config import load_case
    from hybridnde.rollout import SaveSchedule

    case = load_case(ROOT / "cases" / f"{name}.toml", overrides=[*overrides, *COMMON])
    short = load_case(ROOT / "cases" / f"{name}.toml", overrides=[*overrides, *COMMON, "rollout.steps=64"])
    files = {"journal": folder / f"{name}_journal.nc", "no journal": folder / f"{name}_none.nc"}
    for contender in files:  # (imports, plans)
        rollout(contender, short, folder / "warm-up.nc")
    cpu: dict[str, list[float]] = {contender: [] for contender in files}
    wall: dict[str, list[float]] = {contender: [] for contender in files}
    for round_index in range(repeats):
        for contender in list(files) if round_index % 2 == 0 else list(files)[::-1]:
            started, started_cpu = time.perf_counter(), time.process_time()
            rollout(contender, case, files[contender])
            wall[contender].append(time.perf_counter() - started)
            cpu[contender].append(time.process_time() - started_cpu)
    chunks = case.rollout.members * SaveSchedule(steps=case.rollout.steps, save_every=1,
                                                 time_chunk=case.output.time_chunk, dt=1.0).n_chunks
    median = {contender: statistics.median(cpu[contender]) for contender in files}
    record = {"benchmark": "chunk_journal", "case": name, "overrides": overrides, "repeats": repeats, "chunks": chunks,
              "seconds_cpu": median, "seconds_wall": {k: statistics.median(v) for k, v in wall.items()},
              "ratio_cpu": median["journal"] / median["no journal"],
              "overhead_us_per_chunk": 1e6 * (median["journal"] - median["no journal"]) / chunks,
              "identical": same_values(files["journal"], files["no journal"])}
    row = {"case": name, "members x steps": f"{case.rollout.members} x {case.rollout.steps}", "chunks": chunks,
           "journal s": f"{median['journal']:.3g}", "no journal s": f"{median['no journal']:.3g}",
           "ratio": f"{record['ratio_cpu']:.3f}", "us / chunk": f"{record['overhead_us_per_chunk']:.2g}",
           "identical": record["identical"]}
    return row, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, device=False)
    arguments = parser.parse_args()
    threads = configure_threads(arguments.threads, arguments.cores)
    logging.disable(logging.WARNING)
    size = "tiny" if arguments.tiny else "full"
    repeats = 1 if arguments.tiny else max(1, arguments.repeats // 2)  # (a round is whole rollouts)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, overrides in CASES[size]:
            row, record = time_case(name, overrides, repeats, Path(folder))
            rows.append(row)
            records.append({**record, **machine_description(threads)})
    print_table(rows, list(rows[0]), title=f"rollout with and without the chunk journal (CPU seconds, median of {repeats})")
    emit_json(records, arguments.jsonl)


if __name__ == "__main__":
    main()
