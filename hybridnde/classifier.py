"""A neural-ODE classifier on the two-moons data set: the test bed of Josias & Brink (2022) for
Jacobian norm and conditioning penalties (Josias & Brink 2022).

The input ``x in R^2`` (padded with ``augment_dim`` zeros, Dupont et al. 2019) is the initial state
of ``dh/dt = f_theta(h)``, integrated over ``[0, end_time]`` with an adaptive torchdiffeq solver
(function evaluations counted); a linear read-out of ``h(end_time)`` gives the class logit. The
penalty (``hybridnde.regularizers.jacobian_norms``) is evaluated at the hidden states the solver
returns at ``penalty_times`` equally spaced times along each trajectory.

This is not a closure in a host solver, so it has its own small case file (``cases/classifier/two_moons.toml``)
with the sections below, validated like every case section (``config.fields.from_mapping``):
``[case]``, ``[data]``, ``[model]``, ``[training]``. ``run_classifier(config, seed=...)`` trains one
model and returns its metrics; benchmarks/experiments/two_moons.py loops over penalties and seeds.
"""
from __future__ import annotations

import difflib
import logging
import math
import time as wallclock
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .config.case import parse_override, read_case_file
from .config.fields import ConfigError, from_mapping, option, to_mapping
from .config.physics import CaseInfo
from .models import ACTIVATIONS
from .regularizers.jacobian_norms import JACOBIAN_PENALTIES, ConditionNumber, build_jacobian_penalty, dense_jacobian
from .regularizers.warm_start import WarmStarted
from solvers.integrators import ADAPTIVE_METHODS, odeint_adaptive

__all__ = ["MoonsDataConfig", "ClassifierModelConfig", "ClassifierTrainingConfig", "ClassifierCase",
           "make_moons", "NeuralODEClassifier", "load_classifier_case", "parse_classifier_case", "run_classifier",
           "summarize"]

log = logging.getLogger(__name__)


# -- configuration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoonsDataConfig:
    train_samples: int = option(512, "training points (half per class)", minimum=2)
    test_samples: int = option(1024, "test points (half per class)", minimum=2)
    noise: float = option(0.1, "standard deviation of the Gaussian noise on the moons", nonnegative=True)
    seed: int = option(0, "seed of the data (runs with other model seeds see the same points)", nonnegative=True)
    input_noise_levels: tuple[float, ...] = option((0.1, 0.2, 0.3), "robustness test: standard deviations of "
                                                   "extra Gaussian noise added to the test inputs", nonnegative=True)

    def validate(self, where: str) -> None:
        names = [f"{sigma:g}" for sigma in self.input_noise_levels]  # the results' keys, accuracy_noise_<sigma>
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"{where}.input_noise_levels gives {', '.join(repeated)} more than once (to 6 "
                              "significant digits, as the results name them); give each level once")


@dataclass(frozen=True)
class ClassifierModelConfig:
    width: int = option(32, "hidden units of f_theta", positive=True)
    depth: int = option(2, "hidden layers of f_theta", positive=True)
    activation: str = option("tanh", "nonlinearity of f_theta", choices=tuple(ACTIVATIONS))
    augment_dim: int = option(0, "zeros appended to the 2-D input (augmented neural ODE)", nonnegative=True)
    end_time: float = option(1.0, "integration time T of dh/dt = f(h)", positive=True)


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    epochs: int = option(100, "passes over the training points", positive=True)
    batch_size: int = option(128, "points per optimiser step", positive=True)
    learning_rate: float = option(1e-2, "Adam learning rate", positive=True)
    jacobian_penalty: str = option("none", "penalty on the Jacobian of f_theta along the trajectories",
                                   choices=JACOBIAN_PENALTIES)
    penalty_weight: float = option(1e-2, "weight of the penalty in the loss", nonnegative=True)
    penalty_times: int = option(5, "equally spaced times in [0, T] at which the penalty is evaluated", minimum=2)
    probes: int = option(2, "frobenius: Hutchinson probes (exact when the state dimension is no larger)",
                         positive=True)
    method: str = option("dopri5", "torchdiffeq adaptive method", choices=ADAPTIVE_METHODS)
    rtol: float = option(1e-4, "relative tolerance of the solver", positive=True)
    atol: float = option(1e-6, "absolute tolerance of the solver", positive=True)
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "model seeds of the experiment (weights, batches, probes)",
                                    nonnegative=True)


@dataclass(frozen=True)
class ClassifierCase:
    case: CaseInfo = CaseInfo(name="two_moons")
    data: MoonsDataConfig = MoonsDataConfig()
    model: ClassifierModelConfig = ClassifierModelConfig()
    training: ClassifierTrainingConfig = ClassifierTrainingConfig()

    def replace(self, **changes: Mapping[str, Any]) -> "ClassifierCase":
        """A copy with ``{"training": {"jacobian_penalty": "spectral"}, ...}`` applied and validated."""
        mapping = {name: to_mapping(getattr(self, name)) for name in CLASSIFIER_SECTIONS}
        for section, values in changes.items():
            mapping.setdefault(section, {}).update(values)
        return parse_classifier_case(mapping)


CLASSIFIER_SECTIONS = {"case": CaseInfo, "data": MoonsDataConfig, "model": ClassifierModelConfig,
             "training": ClassifierTrainingConfig}


def parse_classifier_case(raw: Mapping[str, Any], *, overrides: Iterable[str] = (), source: str = "case") -> ClassifierCase:
    """Validate a classifier case mapping (as read from TOML); ``overrides`` are ``section.key=value``."""
    raw = {name: dict(table) if isinstance(table, Mapping) else table for name, table in raw.items()}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) != 2:
            raise ConfigError(f"--set {text!r}: classifier keys are section.key, e.g. training.epochs=20")
        if path[0] not in CLASSIFIER_SECTIONS:  # (the file's unknown sections are said below, as the file's)
            close = difflib.get_close_matches(path[0], list(CLASSIFIER_SECTIONS), n=1)
            raise ConfigError(f"--set {text}: unknown section [{path[0]}]" + (f"; did you mean {close[0]}?" if close else
                              f" (known sections: {', '.join(CLASSIFIER_SECTIONS)})"))
        table = raw.setdefault(path[0], {})
        if not isinstance(table, Mapping):  # (``training = 5`` in the file, then --set training.epochs=3)
            raise ConfigError(f"{source}: [{path[0]}] must be a table")
        table[path[1]] = value
    for name, table in raw.items():
        if name not in CLASSIFIER_SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}] (known sections: {', '.join(CLASSIFIER_SECTIONS)})")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table")
    sections = {name: from_mapping(cls, raw.get(name, {}), name) for name, cls in CLASSIFIER_SECTIONS.items()}
    if "case" not in raw:
        sections["case"] = CaseInfo(name="two_moons")
    if not sections["training"].seeds:
        raise ConfigError("training.seeds is empty; give at least one seed, e.g. [0, 1, 2]")
    return ClassifierCase(**sections)


def load_classifier_case(path: str | Path, *, overrides: Iterable[str] = ()) -> ClassifierCase:
    path = Path(path)
    raw = read_case_file(path, example="cases/classifier/two_moons.toml")
    return parse_classifier_case(raw, overrides=overrides, source=str(path))


# -- data ---------------------------------------------------------------------------------------------
def make_moons(n_samples: int, *, noise: float, seed: int, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Two interleaving half circles (the scikit-learn ``make_moons`` geometry), seeded.

    Class 0: ``(cos a, sin a)``, class 1: ``(1 - cos a, 1/2 - sin a)``, ``a ~ U(0, pi)``, plus Gaussian
    noise of standard deviation ``noise``; then centred by the fixed shift ``(1/2, 1/4)`` (the
    geometry's centre), so train and test sets share the same coordinates. Returns ``x: (n, 2)`` and
    ``labels: (n,)`` (0. or 1.), classes alternating.
    """
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, math.pi, n_samples)
    labels = np.arange(n_samples) % 2
    outer = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    inner = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    x = np.where(labels[:, None] == 0, outer, inner) + noise * rng.standard_normal((n_samples, 2))
    x = x - np.array([0.5, 0.25])
    return (torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(labels, dtype=dtype, device=device))


# -- model --------------------------------------------------------------------------------------------
class NeuralODEClassifier(nn.Module):
    """``logit = w . h(T) + b`` with ``dh/dt = f(h)``, ``h(0) = (x, 0_augment)``.

    ``dynamics`` is ``f``: an MLP ``d -> width -> ... -> d`` with ``d = 2 + augment_dim``; it follows the
    closure convention ``f(t, h)`` (``t`` ignored), so the Jacobian penalties apply to it unchanged.
    """

    def __init__(self, *, width: int = 32, depth: int = 2, activation: str = "tanh", augment_dim: int = 0,
                 end_time: float = 1.0):
        super().__init__()
        self.state_dim = 2 + augment_dim
        self.augment_dim, self.end_time = augment_dim, float(end_time)
        layers: list[nn.Module] = []
        features = self.state_dim
        for _ in range(depth):
            layers += [nn.Linear(features, width), ACTIVATIONS[activation]()]
            features = width
        layers.append(nn.Linear(features, self.state_dim))
        self.net = nn.Sequential(*layers)
        self.readout = nn.Linear(self.state_dim, 1)

    def dynamics(self, t: Tensor, h: Tensor) -> Tensor:
        return self.net(h)

    def initial_state(self, x: Tensor) -> Tensor:
        return torch.cat([x, x.new_zeros(x.shape[0], self.augment_dim)], dim=-1)

    def trajectory(self, x: Tensor, *, times: int = 2, method: str = "dopri5", rtol: float = 1e-4,
                   atol: float = 1e-6) -> tuple[Tensor, Any]:
        """Hidden states ``(batch, times, d)`` at ``times`` equally spaced times in ``[0, T]``, and the
        NFE counter (its count grows during a later ``backward()`` only with an adjoint solver)."""
        grid = torch.linspace(0.0, self.end_time, times, dtype=x.dtype, device=x.device)
        return odeint_adaptive(self.dynamics, self.initial_state(x), grid, method=method, rtol=rtol, atol=atol)

    def readout_logits(self, final_state: Tensor) -> Tensor:
        return self.readout(final_state).squeeze(-1)


# -- training and metrics ------------------------------------------------------------------------------
def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float(((logits > 0).to(labels.dtype) == labels).to(torch.float64).mean())


def run_classifier(config: ClassifierCase, *, seed: int, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train one classifier and measure it.

    Returns a JSON-ready dict: ``accuracy`` (clean test set), ``accuracy_noise_<sigma>`` per input
    noise level, ``nfe_test`` (function evaluations of one forward solve of the test set),
    ``nfe_train`` (mean per optimiser step over the last epoch, forward solve), ``condition_number``
    (mean over test states along the trajectories of ``kappa(J_f)``, exact SVD), ``condition_number_median``,
    ``frobenius`` / ``spectral`` (means of ``||J||_F^2`` and ``sigma_max``), ``history`` (per-epoch loss
    and accuracy) and ``cpu_seconds`` (training, CPU time of this process).
    """
    data, model_config, training = config.data, config.model, config.training
    x_train, y_train = make_moons(data.train_samples, noise=data.noise, seed=data.seed, dtype=dtype, device=device)
    x_test, y_test = make_moons(data.test_samples, noise=data.noise, seed=data.seed + 10_000, dtype=dtype,
                                device=device)
    torch.manual_seed(seed)
    model = NeuralODEClassifier(width=model_config.width, depth=model_config.depth, activation=model_config.activation,
                                augment_dim=model_config.augment_dim, end_time=model_config.end_time).to(device, dtype)
    generator = torch.Generator().manual_seed(seed)
    penalty = build_jacobian_penalty(training.jacobian_penalty, probes=training.probes,
                                     generator=torch.Generator().manual_seed(seed + 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=training.learning_rate)
    solve = dict(method=training.method, rtol=training.rtol, atol=training.atol)
    zero = torch.zeros((), dtype=dtype, device=device)
    history, started = [], wallclock.process_time()
    for epoch in range(training.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        totals = {"loss": 0.0, "penalty": 0.0, "nfe": 0.0, "steps": 0}
        for first in range(0, len(order), training.batch_size):
            index = order[first: first + training.batch_size]
            states, counter = model.trajectory(x_train[index], times=training.penalty_times, **solve)
            logits = model.readout_logits(states[:, -1])
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y_train[index])
            value = zero
            if penalty is not None:
                # penalty at the solver's states along each trajectory; detached: a penalty on the
                # vector field where it is used, not a path through the ODE solution
                flat = states.detach().reshape(-1, model.state_dim)  # (batch x times, state), sample-major
                if isinstance(penalty, WarmStarted):  # each state warm-starts from its own last vectors: one
                    # id per (training sample, penalty time), not the shuffled batch's shape
                    times = states.shape[1]
                    ids = (index[:, None] * times + torch.arange(times)).reshape(-1).to(flat.device)
                    value = penalty(model.dynamics, zero, flat, row_ids=ids)
                else:
                    value = penalty(model.dynamics, zero, flat)
            total = loss + training.penalty_weight * value
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            totals["loss"] += float(loss.detach()) * len(index)
            totals["penalty"] += float(value.detach()) * len(index)
            totals["nfe"] += counter.nfe
            totals["steps"] += 1
        history.append({"epoch": epoch + 1, "loss": totals["loss"] / len(order),
                        "penalty": totals["penalty"] / len(order), "nfe_forward": totals["nfe"] / totals["steps"]})
    seconds = wallclock.process_time() - started
    model.eval()
    result: dict[str, Any] = {"seed": seed, "jacobian_penalty": training.jacobian_penalty,
                              "penalty_weight": training.penalty_weight, "cpu_seconds": seconds}
    with torch.no_grad():
        states, counter = model.trajectory(x_test, times=training.penalty_times, **solve)
        result["nfe_test"] = counter.nfe
        result["accuracy"] = _accuracy(model.readout_logits(states[:, -1]), y_test)
        noise_generator = torch.Generator().manual_seed(data.seed + 20_000)
        for sigma in data.input_noise_levels:
            noisy = x_test + sigma * torch.randn(x_test.shape, generator=noise_generator, dtype=dtype).to(device)
            noisy_states, _ = model.trajectory(noisy, times=2, **solve)
            result[f"accuracy_noise_{sigma:g}"] = _accuracy(model.readout_logits(noisy_states[:, -1]), y_test)
    flat = states.reshape(-1, model.state_dim)
    with torch.no_grad():
        kappa = ConditionNumber(method="exact").per_member(model.dynamics, zero, flat)
        jacobian = dense_jacobian(model.dynamics, zero, flat)
        singular_values = torch.linalg.svdvals(jacobian)
    result.update(condition_number=float(kappa.mean()), condition_number_median=float(kappa.median()),
                  frobenius=float(jacobian.pow(2).sum(dim=(-2, -1)).mean()),
                  spectral=float(singular_values[:, 0].mean()),
                  nfe_train=history[-1]["nfe_forward"], history=history)
    log.info("two moons %s seed %d: accuracy %.3f, NFE %d, kappa %.2f (%.1f s)", training.jacobian_penalty, seed,
             result["accuracy"], result["nfe_test"], result["condition_number"], seconds)
    return result


def summarize(results: list[dict[str, Any]], keys: Iterable[str]) -> dict[str, tuple[float, float]]:
    """``{key: (mean, std)}`` over runs (sample standard deviation, ``ddof = 1``; 0 for one run)."""
    out = {}
    for key in keys:
        values = np.asarray([r[key] for r in results], dtype=np.float64)
        out[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return out

