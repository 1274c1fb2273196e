"""The periodic CNN closure two ways: one wrap of its input (``PeriodicCNNClosure``) against circular
padding at every layer (torch's ``padding_mode="circular"``, what the closure did before), same weights.

    python benchmarks/periodic_cnn_halo.py             # channels 16 and 32, N = 64 and 256, batch 64
    python benchmarks/periodic_cnn_halo.py --tiny      # CI smoke run
    python benchmarks/periodic_cnn_halo.py --device cuda

Timed interleaved (common.py), float64, per call: a forward under ``torch.inference_mode`` (a rollout's
closure) and a forward + backward to the weights (a training step's closure). Circular padding copies
the hidden channels at every layer; one wrap copies the single input channel once, and the unpadded
convolutions then compute the halo's values instead of copying them. ``max |diff|`` is the largest
difference of the two outputs (0 on a CPU: the same sums in the same order).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (add_common_arguments, clock_for, configure_threads, emit_json,  # noqa: E402
                    machine_description, print_table, synchronize, time_interleaved)


def circularly_padded(model):
    """``model``'s network rebuilt as circularly padded ``Conv1d`` layers sharing its weights: the
    closure's forward as it was before the one wrap."""
    from torch import nn

    layers = []
    for layer in model.net:
        if isinstance(layer, nn.Conv1d):
            padded = nn.Conv1d(layer.in_channels, layer.out_channels, layer.kernel_size[0],
                               padding=layer.kernel_size[0] // 2, padding_mode="circular")
            padded.weight, padded.bias = layer.weight, layer.bias
            layers.append(padded)
        else:
            layers.append(layer)
    net = nn.Sequential(*layers)

    def forward(t, u):
        z = (u - model.input_shift) / model.input_scale
        return net(z.unsqueeze(-2)).squeeze(-2) * model.output_scale + model.output_shift
    return forward


def measure(channels: int, n_points: int, batch: int, *, device: str, repeats: int, min_seconds: float) -> dict:
    import torch

    from hybridnde.models import PeriodicCNNClosure

    torch.manual_seed(0)
    model = PeriodicCNNClosure(channels=channels, depth=2, kernel_size=5).to(device=device, dtype=torch.float64)
    padded = circularly_padded(model)
    u = torch.randn(batch, n_points, dtype=torch.float64, device=device)
    t = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        difference = float((model(t, u) - padded(t, u)).abs().max())

    def inference(closure):
        def call():
            with torch.inference_mode():
                closure(t, u)
            synchronize(device)
        return call

    def training(closure):
        def call():
            closure(t, u).square().sum().backward()
            synchronize(device)
        return call

    timings = time_interleaved({"forward, one wrap": (inference(model), 1),
                                "forward, circular padding": (inference(padded), 1),
                                "forward + backward, one wrap": (training(model), 1),
                                "forward + backward, circular padding": (training(padded), 1)},
                               repeats=repeats, min_seconds=min_seconds)
    clock = clock_for(device)

    def paired(new: str, old: str) -> float:  # median over rounds of the ratio within a round
        return statistics.median(a / b for a, b in zip(getattr(timings[new], clock), getattr(timings[old], clock)))

    seconds = {name: statistics.median(getattr(timing, clock)) for name, timing in timings.items()}
    return {"benchmark": "periodic_cnn_halo", "channels": channels, "n_points": n_points, "batch": batch,
            "forward_wrap_s": seconds["forward, one wrap"], "forward_padded_s": seconds["forward, circular padding"],
            "training_wrap_s": seconds["forward + backward, one wrap"],
            "training_padded_s": seconds["forward + backward, circular padding"],
            "forward_ratio": paired("forward, one wrap", "forward, circular padding"),
            "training_ratio": paired("forward + backward, one wrap", "forward + backward, circular padding"),
            "max_abs_difference": difference, "dtype": "float64", "clock": clock, "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    threads = configure_threads(args.threads, args.cores)
    sizes = [(4, 16, 4)] if args.tiny else [(16, 64, 64), (16, 256, 64), (32, 64, 64), (32, 256, 64)]
    records = [{**measure(channels, n, batch, device=args.device, repeats=1 if args.tiny else args.repeats,
                          min_seconds=0.01 if args.tiny else args.min_seconds),
                **machine_description(threads, args.device)} for channels, n, batch in sizes]

    def micro(seconds: float) -> str:
        return f"{seconds * 1e6:.0f}"

    rows = [{"channels": r["channels"], "N": r["n_points"], "batch": r["batch"],
             "fwd wrap us": micro(r["forward_wrap_s"]), "fwd padded us": micro(r["forward_padded_s"]),
             "fwd ratio": f"{r['forward_ratio']:.2f}", "fwd+bwd wrap us": micro(r["training_wrap_s"]),
             "fwd+bwd padded us": micro(r["training_padded_s"]), "fwd+bwd ratio": f"{r['training_ratio']:.2f}",
             "max |diff|": f"{r['max_abs_difference']:.1e}"} for r in records]
    print_table(rows, list(rows[0]), title=f"Periodic CNN closure, one wrap / circular padding at every layer "
                                           f"({clock_for(args.device)} clock, medians; ratio paired within rounds), "
                                           f"float64, {args.device}, {threads} thread(s)")
    print()
    emit_json(records, args.jsonl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
