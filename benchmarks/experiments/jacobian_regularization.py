"""Does directional-derivative Jacobian regularization lengthen valid predictions? (Janvier et al.)

For Two-Body, Rigid Body and Kuramoto-Sivashinsky (L = 22), closures are trained with 2-step
rollouts and ``training.regularizer`` = none / jvp (exact directional derivatives) / fd (finite
differences, the paper's L_FD), lambda swept over two decades and several seeds, through the
package's own ``train_case``. Each closure then runs in its host solver from held-out initial states
over a long horizon; we report

* VPT: valid prediction time, first time ``||u - u*|| / rms(u*) > 0.5`` (``hybridnde.metrics``),
  median over test members, then mean and spread over seeds;
* bounded: fraction of test members whose state stays finite and below 10x the largest true state
  norm over the whole horizon;
* jac: the exact-directional-derivative mismatch ``||J_{F_theta} - J_F||_F^2`` (Hutchinson, 32
  probes) on test states;
* the paper's own metrics (NOTES.md): ``mse``, the rollout MSE over the whole test horizon (median
  over test members; a member that blows up counts as ``inf``), ``kl``, the KL divergence between
  50-bin histograms of predicted and true states over the horizon, and ``jac_norm``,
  ``sqrt(mean ||J_{F_theta}||_F^2)`` of the hybrid right-hand side on test states.

Lambda grid, fixed before looking at any outcome: ``lambda_0`` balances the regularizer against the
rollout loss of the unregularized closure of the same seed (``lambda_0 = L_rollout / L_reg`` at its
final weights), and the sweep is ``{0.1, 1, 10} x lambda_0`` (two decades).

Budget cuts against the paper (NOTES.md) are in ``CASES`` with a comment each; ``--tiny`` is a
smoke run for CI. Prints one JSON line per run and a table at the end:

    nice python benchmarks/experiments/jacobian_regularization.py [--cases two_body rigid_body ks]
        [--seeds 3] [--tiny] [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hybridnde.config import load_case  # noqa: E402
from hybridnde.io import write_netcdf  # noqa: E402
from hybridnde.metrics import histogram_kl_divergence, normalised_error, valid_prediction_time  # noqa: E402
from hybridnde.regularizers import (directional_jacobian_penalty, draw_probes,  # noqa: E402
                                    finite_difference_directional_penalty)
from hybridnde.regularizers.jacobian_norms import FrobeniusNorm  # noqa: E402
from hybridnde.simulate import simulate_case  # noqa: E402
from hybridnde.systems import build_host_solver  # noqa: E402
from hybridnde.training import reference_solver, train_case  # noqa: E402

# Per case: the case file, overrides for training (cuts against the paper say why), the test set
# (seed 1, other members) and the evaluation horizon in host steps.
CASES = {
    "two_body": {
        "file": "cases/two_body.toml",
        "train": [
            "model.width=64",            # paper 200: 10x cheaper per step, spent on more optimiser steps
            "training.epochs=12",        # paper 900: CPU budget (about 1500 optimiser steps here)
            "training.batch_size=128",
            "training.window_stride=2",  # every other start: half the windows per epoch
            "training.probes=10",        # paper: 10 directions
        ],
        "test_members": 20, "horizon": 3200,   # 4x the 800-step training trajectories
    },
    "rigid_body": {
        "file": "cases/rigid_body.toml",
        "train": [
            "model.width=64",
            "time.n_steps=800",          # 1500 in the paper: fewer windows per epoch
            "training.epochs=12",
            "training.batch_size=128",
            "training.window_stride=2",
            "training.probes=10",
        ],
        "test_members": 20, "horizon": 6000,   # 4x the paper's 1500-step trajectories
    },
    "ks": {
        "file": "cases/ks_janvier.toml",
        "train": [
            "system.n_points=64",        # paper 256
            "initial_condition.members=40",  # paper 512 + 128
            "time.n_steps=400",          # 100 samples at 0.2 (paper 140)
            "model.width=16",
            "training.epochs=15",        # paper 1000
            "training.batch_size=64",
            "training.window_stride=2",
            "training.probes=2",
        ],
        "test_members": 16, "horizon": 1280,   # 256 time units; VPT is read over the first 640 steps
        "vpt_steps": 640,
    },
}

TINY = {"training.epochs=1", "model.width=8", "time.n_steps=80", "initial_condition.members=5",
        "time.spinup_steps=40"}


def case_with(name: str, overrides: list[str]):
    return load_case(ROOT / CASES[name]["file"], overrides=overrides)


def test_set(name: str, case, members: int, steps: int):
    """Held-out truth: ``members`` trajectories (seed 1) of ``steps`` host steps. ``(u, times)``."""
    host_dt = case.host_time.dt
    save_every = case.time.save_every
    test = dataclasses.replace(
        case, initial_condition=dataclasses.replace(case.initial_condition, seed=1, members=members),
        time=dataclasses.replace(case.time, n_steps=steps * save_every * case.hybrid.substeps))
    dataset = simulate_case(test, progress=False)
    u = torch.as_tensor(dataset["u"].values)
    return u, np.arange(u.shape[1]) * host_dt * case.hybrid.substeps


@torch.no_grad()
def evaluate(case, model, truth: torch.Tensor, times: np.ndarray, vpt_steps: int | None) -> dict:
    host = build_host_solver(case, closure=model)
    steps = truth.shape[1] - 1
    predicted = host.rollout(truth[:, 0], steps * case.hybrid.substeps, save_every=case.hybrid.substeps)
    predicted, truth_np = predicted.numpy(), truth.numpy()
    window = slice(0, (vpt_steps or steps) + 1)
    error = normalised_error(predicted[:, window], truth_np[:, window])
    vpt, _ = valid_prediction_time(error, times[window], threshold=case.evaluate.vpt_threshold)
    norms = np.sqrt((predicted.reshape(*predicted.shape[:2], -1) ** 2).sum(-1))
    true_max = np.sqrt((truth_np.reshape(*truth_np.shape[:2], -1) ** 2).sum(-1)).max(axis=1)
    bounded = np.isfinite(norms).all(axis=1) & (np.nan_to_num(norms, nan=np.inf).max(axis=1) <= 10 * true_max)
    # Jacobian mismatch on (finite) test states, Hutchinson with 32 Rademacher probes
    states = truth[:, :: max(1, steps // 20)].reshape(-1, *truth.shape[2:])
    reference = reference_solver(case)
    known = None if case.hybrid.setup == "neural_ode" else build_host_solver(case).jvp
    probes = draw_probes(states.shape, count=32, distribution="rademacher", generator=torch.Generator().manual_seed(7))
    jac = float(directional_jacobian_penalty(model, states, probes, reference_jvp=reference.jvp, known_jvp=known))
    # the paper's metrics over the whole horizon
    with np.errstate(over="ignore", invalid="ignore"):
        member_mse = ((predicted - truth_np) ** 2).reshape(len(predicted), -1).mean(axis=1)
    member_mse = np.where(np.isfinite(member_mse), member_mse, np.inf)
    kl = histogram_kl_divergence(predicted, truth_np, bins=50)
    jac_norm = float(FrobeniusNorm(probes=32, generator=torch.Generator().manual_seed(8))(host.rhs, 0.0, states)) ** 0.5
    return {"vpt_median": float(np.median(vpt)), "vpt_mean": float(np.mean(vpt)), "bounded": float(bounded.mean()),
            "jac": jac, "mse": float(np.median(member_mse)), "kl": kl, "jac_norm": jac_norm}


@torch.no_grad()
def balancing_weight(case, model, data_path: Path, regularizer: str, rollout_loss: float) -> float:
    """``lambda_0 = L_rollout / L_reg`` at the unregularized closure (regularizer on training states)."""
    from hybridnde.data import load_training_data

    data = load_training_data(data_path, case, window_length=3)
    u = data.train[:, ::4]
    host = build_host_solver(case, closure=model)
    if regularizer == "jvp":
        states = u.reshape(-1, *u.shape[2:])
        known = None if case.hybrid.setup == "neural_ode" else build_host_solver(case).jvp
        probes = draw_probes(states.shape, count=8, generator=torch.Generator().manual_seed(3))
        value = directional_jacobian_penalty(model, states, probes, reference_jvp=reference_solver(case).jvp,
                                             known_jvp=known)
    else:
        windows = data.windows("train", 3, stride=4).gather()
        value = finite_difference_directional_penalty(host.rhs, windows, data.sample_interval,
                                                      stencil=case.training.fd_stencil)
    return rollout_loss / max(float(value), 1e-300)


def run_case(name: str, seeds: range, tiny: bool, folder: Path, emit, extra: list[str] = ()) -> list[dict]:
    spec = CASES[name]
    train_overrides = list(spec["train"]) + (sorted(TINY) if tiny else []) + list(extra)
    base = case_with(name, train_overrides + ["training.checkpoint_every=0"])
    data_path = folder / f"{name}_truth.nc"
    started = time.perf_counter()
    write_netcdf(simulate_case(base, progress=False), data_path)
    horizon = 40 if tiny else spec["horizon"]
    truth, times = test_set(name, base, 4 if tiny else spec["test_members"], horizon)
    vpt_steps = None if tiny else spec.get("vpt_steps")
    logging.info("%s: data in %.1f s", name, time.perf_counter() - started)
    rows = []
    for seed in seeds:
        runs = [("none", 0.0)]
        for regularizer, multiplier, lam0 in _sweep(name, seed, base, data_path, folder, truth, times, vpt_steps,
                                                    rows, emit):
            runs.append((regularizer, multiplier * lam0))
        for regularizer, weight in runs[1:]:
            rows.append(_train_and_score(name, seed, base, data_path, folder, regularizer, weight, truth, times,
                                         vpt_steps, emit))
    return rows


def _train_and_score(name, seed, base, data_path, folder, regularizer, weight, truth, times, vpt_steps, emit):
    case = base.replace(training=dataclasses.replace(base.training, seed=seed, regularizer=regularizer,
                                                     regularizer_weight=weight))
    started = time.perf_counter()
    model, result = train_case(case, data_path, folder / f"{name}_{regularizer}_{seed}.pt", progress=False)
    seconds = time.perf_counter() - started
    scores = evaluate(case, model, truth, times, vpt_steps)
    row = {"case": name, "regularizer": regularizer, "weight": weight, "seed": seed, "train_seconds": round(seconds, 1),
           "loss_rollout": result.final.get("loss/rollout"), "val_loss": result.best_val_loss, **scores}
    emit(row)
    row["_model"] = model
    row["_result"] = result
    return row


def _sweep(name, seed, base, data_path, folder, truth, times, vpt_steps, rows, emit):
    """Train the unregularized closure of ``seed``, then yield ``(regularizer, multiplier, lambda_0)``."""
    row = _train_and_score(name, seed, base, data_path, folder, "none", 0.0, truth, times, vpt_steps, emit)
    rows.append(row)
    case = base.replace(training=dataclasses.replace(base.training, seed=seed))
    for regularizer in ("jvp", "fd"):
        lam0 = balancing_weight(case, row["_model"], data_path, regularizer, row["loss_rollout"])
        for multiplier in (0.1, 1.0, 10.0):
            yield regularizer, multiplier, lam0


def table(rows: list[dict]) -> str:
    """Mean (and standard deviation over seeds) of each (case, regularizer, lambda multiplier)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        smallest = min(r["weight"] for r in rows if (r["case"], r["regularizer"], r["seed"])
                       == (row["case"], row["regularizer"], row["seed"]))
        multiplier = 0.0 if row["regularizer"] == "none" else round(row["weight"] / smallest * 0.1, 3)
        groups.setdefault((row["case"], row["regularizer"], multiplier), []).append(row)
    lines = [f"{'case':<11} {'reg':<5} {'lambda/l0':>9} {'lambda (mean)':>13} {'seeds':>5} {'VPT median':>16} "
             f"{'bounded':>13} {'jac mismatch':>13} {'val loss':>10} {'MSE':>9} {'KL':>7} {'|J|_F':>7}"]
    for (case, regularizer, multiplier), members in sorted(groups.items()):
        def stat(key):
            values = np.array([m[key] for m in members], dtype=float)
            return values.mean(), values.std()
        vpt, vpt_sd = stat("vpt_median")
        bounded, bounded_sd = stat("bounded")
        jac, _ = stat("jac")
        val, _ = stat("val_loss")
        # the paper's metrics, median over seeds (MSE may be inf)
        paper = [np.median([m.get(key, np.nan) for m in members]) for key in ("mse", "kl", "jac_norm")]
        weight = np.mean([m["weight"] for m in members])
        lines.append(f"{case:<11} {regularizer:<5} {multiplier:>9.3g} {weight:>13.3g} {len(members):>5} "
                     f"{vpt:>8.3g} ± {vpt_sd:<5.2g} {bounded:>6.2f} ± {bounded_sd:<4.2f} {jac:>13.3g} {val:>10.3g} "
                     f"{paper[0]:>9.3g} {paper[1]:>7.3g} {paper[2]:>7.3g}")
    return "\n".join(lines)


def step_timing(tiny: bool = False, emit=print) -> None:
    """Cost of one training step (forward + backward of the 2-step rollout loss, plus the regularizer
    with 2 probes) relative to the plain rollout step: exact JVP by each ``closure_jvp`` method and FD.

    3-layer periodic CNN (32 channels) in a spectral KS host at batch 64 for N = 64, 256, 1024, and
    the 200-wide MLP neural ODE of Two-Body at batch 256. Medians of repeated steps, one thread.
    """
    import statistics

    from hybridnde.models import MLPClosure, PeriodicCNNClosure
    from hybridnde.regularizers import ProbeSampler
    from hybridnde.training import Batch, DirectionalDerivativeTerm, FiniteDifferenceTerm, RolloutLoss
    from solvers import ClosureOnly, KuramotoSivashinskySpectral, TwoBody

    def median_seconds(step, repeats):
        for _ in range(2):
            step()
        samples = []
        for _ in range(repeats):
            begun = time.perf_counter()
            step()
            samples.append(time.perf_counter() - begun)
        return statistics.median(samples)

    setups = []
    for n_points in ((16,) if tiny else (64, 256, 1024)):
        torch.manual_seed(0)
        model = PeriodicCNNClosure(channels=4 if tiny else 32, depth=2).double()
        host = KuramotoSivashinskySpectral(n_points=n_points, dt=0.2, nonlinear_coefficient=0.0, closure=model)
        truth = KuramotoSivashinskySpectral(n_points=n_points, dt=0.2)
        windows = 0.5 * torch.randn(64, 3, n_points, dtype=torch.float64)
        setups.append((f"ks cnn N={n_points} batch=64", model, host, truth.jvp, host.jvp, windows, 0.2))
    torch.manual_seed(0)
    mlp = MLPClosure(state_dim=4, width=8 if tiny else 200).double()
    two_body = TwoBody(dt=0.01)
    windows = two_body.rollout(torch.tensor([[0.4, 0.0, 0.0, 2.0]], dtype=torch.float64).repeat(256, 1)
                               + 0.01 * torch.randn(256, 4, dtype=torch.float64), 2)
    setups.append(("two_body mlp200 batch=256", mlp, ClosureOnly(state_shape=(4,), dt=0.01, closure=mlp),
                   two_body.jvp, None, windows, 0.01))
    for label, model, host, reference_jvp, known_jvp, windows, dt in setups:
        batch = Batch(windows, dt, torch.zeros(len(windows), 2, dtype=torch.long))
        rollout = RolloutLoss(steps=2)

        def step_with(terms):
            def step():
                total = sum(weight * value for term in terms
                            for value, weight in term(model, host, batch, 0).values())
                model.zero_grad(set_to_none=True)
                total.backward()
            return step

        variants = {"plain": [rollout]}
        for method in ("tangent", "vmap", "stacked"):
            variants[f"jvp-{method}"] = [rollout, DirectionalDerivativeTerm(
                weight=1.0, reference_jvp=reference_jvp, known_jvp=known_jvp, probes=ProbeSampler(count=2),
                method=method)]
        variants["fd"] = [rollout, FiniteDifferenceTerm(weight=1.0)]
        repeats = 3 if tiny else 15
        seconds = {name: median_seconds(step_with(terms), repeats) for name, terms in variants.items()}
        emit({"timing": label, **{name: round(value * 1e3, 2) for name, value in seconds.items()},
              **{f"{name}/plain": round(value / seconds["plain"], 2) for name, value in seconds.items()}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from here: first-seed .. first-seed + seeds - 1")
    parser.add_argument("--tiny", action="store_true", help="smoke run: one epoch, tiny models, short horizon")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    parser.add_argument("--timing", action="store_true", help="only time a training step per regularizer (ms)")
    parser.add_argument("--table", nargs="+", type=Path, default=None, metavar="RESULTS.jsonl",
                        help="only print the table of earlier runs' JSON lines (several files are merged)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="extra case override for every run, e.g. --set training.epochs=60")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hybridnde").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    handle = open(arguments.out, "a") if arguments.out else None

    def emit(row):
        line = json.dumps({key: value for key, value in row.items() if not key.startswith("_")})
        print(line, flush=True)
        if handle:
            handle.write(line + "\n")
            handle.flush()

    if arguments.timing:
        step_timing(arguments.tiny, emit)
        return 0
    if arguments.table:
        print(table([json.loads(line) for path in arguments.table for line in path.read_text().splitlines()
                     if line.startswith("{")]))
        return 0
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for name in arguments.cases:
            seeds = range(arguments.first_seed, arguments.first_seed + arguments.seeds)
            rows += run_case(name, seeds, arguments.tiny, Path(folder), emit, arguments.extra)
    print(table(rows))
    print(f"total {time.perf_counter() - started:.0f} s")
    if handle:
        handle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
