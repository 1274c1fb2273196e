"""The periodic CNN closure in float64 on a CPU two ways: its members in blocks (``PeriodicCNNClosure``,
``members_at_once``) against the whole batch through each layer at once (what it did before), same weights.

    python benchmarks/periodic_cnn_blocks.py           # 5 sizes, up to ks_janvier's training batch
    python benchmarks/periodic_cnn_blocks.py --tiny    # CI smoke run

torch's float64 convolutions on a CPU unfold their whole input into one buffer (im2col: channels x
kernel rows a point; oneDNN, which does not, takes float32 only). For ks_janvier's training batch
(256 members, N = 256, 32 channels) that buffer is 87 MB: past glibc's largest mmap threshold it is
mapped and faulted in afresh every call, and at any size above the caches it streams through memory.
Timed interleaved (common.py), per call: a forward under ``torch.inference_mode`` (a rollout's
closure), a forward + backward to the weights (a training step's closure), and the exact directional
regulariser's tangents (``closure_jvp``, method ``"tangent"``, 2 probes) + backward. ``members a
block`` is what the closure chose (the batch: one block); ``max |diff|`` compares the two forwards.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_common_arguments, clock_for, configure_threads, emit_json,  # noqa: E402
                    machine_description, print_table, time_interleaved)


def measure(channels: int, n_points: int, batch: int, *, repeats: int, min_seconds: float,
            block_bytes: int | None) -> dict:
    import torch

    from hybridnde.models import PeriodicCNNClosure
    from hybridnde.regularizers import closure_jvp

    torch.manual_seed(0)
    blocked = PeriodicCNNClosure(channels=channels, depth=2, kernel_size=5).to(torch.float64)
    if block_bytes is not None:
        blocked.unfold_block_bytes = block_bytes
    whole = copy.deepcopy(blocked)
    whole.unfold_block_bytes = 2**62
    u = torch.randn(batch, n_points, dtype=torch.float64)
    probes = torch.randn(2, batch, n_points, dtype=torch.float64)
    t = torch.zeros((), dtype=torch.float64)
    with torch.inference_mode():
        difference = float((blocked(t, u) - whole(t, u)).abs().max())

    def forward(model):
        def call():
            with torch.inference_mode():
                model(t, u)
        return call

    def training(model):
        def call():
            model.zero_grad(set_to_none=True)
            model(t, u).square().sum().backward()
        return call

    def tangents(model):
        def call():
            model.zero_grad(set_to_none=True)
            closure_jvp(model, t, u, probes, method="tangent").square().sum().backward()
        return call

    calls = {f"{what}, {form}": (make(model), 1) for what, make in
             (("forward", forward), ("forward + backward", training), ("tangents + backward", tangents))
             for form, model in (("blocks", blocked), ("whole batch", whole))}
    timings = time_interleaved(calls, repeats=repeats, min_seconds=min_seconds)
    clock = clock_for("cpu")

    def seconds(name: str) -> float:
        return statistics.median(getattr(timings[name], clock))

    def paired(what: str) -> float:  # median over rounds of the ratio within a round
        return statistics.median(a / b for a, b in zip(getattr(timings[f"{what}, blocks"], clock),
                                                        getattr(timings[f"{what}, whole batch"], clock)))

    record = {"benchmark": "periodic_cnn_blocks", "channels": channels, "n_points": n_points, "batch": batch,
              "members_per_block": blocked.members_at_once(u),
              "unfolded_mib": blocked.unfolded_rows * (n_points + 2 * blocked.halo) * 8 * batch / 2**20,
              "max_abs_difference": difference, "dtype": "float64", "clock": clock, "repeats": repeats}
    for what, key in (("forward", "forward"), ("forward + backward", "training"), ("tangents + backward", "tangents")):
        record[f"{key}_blocks_s"] = seconds(f"{what}, blocks")
        record[f"{key}_whole_s"] = seconds(f"{what}, whole batch")
        record[f"{key}_ratio"] = paired(what)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        parser.error("--device: the blocks are for float64 on a CPU (other devices run the whole batch)")
    threads = configure_threads(args.threads, args.cores)
    sizes = ([(4, 16, 12)] if args.tiny
             else [(16, 64, 64), (16, 64, 256), (16, 256, 64), (32, 256, 256), (16, 1024, 64)])
    records = [{**measure(channels, n, batch, repeats=1 if args.tiny else args.repeats,
                          min_seconds=0.01 if args.tiny else args.min_seconds,
                          block_bytes=16384 if args.tiny else None),  # tiny: 4 blocks of 3 members
                **machine_description(threads, args.device)} for channels, n, batch in sizes]

    def milli(seconds: float) -> str:
        return f"{seconds * 1e3:.2f}"

    rows = [{"channels": r["channels"], "N": r["n_points"], "batch": r["batch"],
             "im2col MiB": f"{r['unfolded_mib']:.1f}", "members a block": r["members_per_block"],
             **{f"{label} ms blocks / whole": f"{milli(r[key + '_blocks_s'])} / {milli(r[key + '_whole_s'])}"
                for label, key in (("fwd", "forward"), ("fwd+bwd", "training"), ("jvp+bwd", "tangents"))},
             **{f"{label} ratio": f"{r[key + '_ratio']:.2f}"
                for label, key in (("fwd", "forward"), ("fwd+bwd", "training"), ("jvp+bwd", "tangents"))},
             "max |diff|": f"{r['max_abs_difference']:.1e}"} for r in records]
    print_table(rows, list(rows[0]), title=f"Periodic CNN closure, members in blocks / the whole batch at once "
                                           f"({clock_for(args.device)} clock, medians; ratio paired within rounds), "
                                           f"float64, cpu, {threads} thread(s)")
    print()
    emit_json(records, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
