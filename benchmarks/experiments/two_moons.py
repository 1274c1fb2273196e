"""Jacobian norm and conditioning penalties on a neural-ODE two-moons classifier (Josias & Brink 2022).

The slides report, for four settings whose row assignment could not be recovered (NOTES.md), condition
numbers kappa(J) of about 5.3 ± 3.5, 27.3 ± 34.1, 45.9 ± 70.6 and 6.1 ± 5.2, and that norm penalties
cut NFE at some cost in accuracy while the condition-number penalty helps robustness to input noise.

For each penalty (none, frobenius, spectral, condition; kinetic and rnode = frobenius + kinetic as extra rows) and seed of
``cases/classifier/two_moons.toml`` one classifier is trained (``hybridnde.classifier.run_classifier``)
and we report mean ± standard deviation over seeds of: clean test accuracy, accuracy with Gaussian
input noise added to the test points, NFE of one forward solve of the test set and per training step
(last epoch), and kappa(J) of the learned field averaged over the test states along the trajectories
(exact SVD; the median is in the JSON lines). One weight for every penalty (the case's
``penalty_weight``, fixed before any run) -- their weights are unknown.

    nice python benchmarks/experiments/two_moons.py [--penalties none frobenius spectral condition kinetic rnode]
        [--seeds 0 1 2 3 4] [--tiny] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hybridnde.classifier import load_classifier_case, run_classifier, summarize  # noqa: E402

PENALTIES = ("none", "frobenius", "spectral", "condition", "kinetic", "rnode")
SLIDES_KAPPA = ("5.3 ± 3.5", "27.3 ± 34.1", "45.9 ± 70.6", "6.1 ± 5.2")


def table(rows: list[dict], noise_keys: list[str]) -> str:
    header = ["penalty", "accuracy", *[k.replace("accuracy_noise_", "acc. noise ") for k in noise_keys],
              "NFE test", "NFE/step train", "kappa(J)", "kappa median", "||J||_F^2", "CPU s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["accuracy", *noise_keys, "nfe_test", "nfe_train", "condition_number", "condition_number_median",
            "frobenius", "cpu_seconds"]
    for penalty in dict.fromkeys(r["jacobian_penalty"] for r in rows):
        group = [r for r in rows if r["jacobian_penalty"] == penalty]
        stats = summarize(group, keys)
        cells = [f"{stats[k][0]:.3g} ± {stats[k][1]:.2g}" for k in keys]
        lines.append(f"| {penalty} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=Path, default=ROOT / "cases" / "classifier" / "two_moons.toml")
    parser.add_argument("--penalties", nargs="+", default=list(PENALTIES), choices=list(PENALTIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the case's training.seeds")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 3 epochs, one seed, small data")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per run")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    overrides = list(arguments.overrides)
    if arguments.tiny:
        overrides += ["training.epochs=3", "data.train_samples=128", "data.test_samples=128"]
    case = load_classifier_case(arguments.case, overrides=overrides)
    seeds = arguments.seeds if arguments.seeds is not None else list(case.training.seeds)
    if arguments.tiny:
        seeds = seeds[:1]
    rows = []
    for penalty in arguments.penalties:
        weight = 0.0 if penalty == "none" else case.training.penalty_weight
        configured = case.replace(training={"jacobian_penalty": penalty, "penalty_weight": weight})
        for seed in seeds:
            row = run_classifier(configured, seed=seed)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
            if arguments.out is not None:
                with open(arguments.out, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    noise_keys = [f"accuracy_noise_{sigma:g}" for sigma in case.data.input_noise_levels]
    print(table(rows, noise_keys))
    print(f"slides (rows unassigned): kappa {', '.join(SLIDES_KAPPA)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
