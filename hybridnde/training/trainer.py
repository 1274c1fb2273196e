"""The training loop: AdamW, a learning-rate schedule, gradient clipping, early stopping on validation
rollouts, checkpoints with exact resume, and a JSON-lines log (one object per epoch).

The loss is a sum of ``LossTerm``s (``terms.py``); the loop knows nothing about what they compute.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time as wallclock
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from solvers import Solver
from solvers.integrators import is_step_underflow

from ..config import TrainingConfig
from ..config.fields import from_mapping
from ..data import WindowSet
from ..metrics.summary import json_ready
from ..progress import PROGRESS_LOG_SECONDS, progress_bar, progress_log
from .checkpoint import load_checkpoint, save_checkpoint
from .optimizers import ParameterSteps
from .terms import Batch, LossTerm, Weighted, time_matters

__all__ = ["Trainer", "TrainingResult", "learning_rate_at", "Validation"]

log = logging.getLogger(__name__)

#: ``validation(model, solver, windows, sample_interval) -> float``, lower is better
Validation = Callable[[nn.Module, Solver, WindowSet, float], float]


def learning_rate_at(epoch: int, config: TrainingConfig) -> float:
    """The learning rate of ``epoch`` (0-based): constant, cosine from ``learning_rate`` to
    ``min_learning_rate`` over ``epochs`` (Loshchilov & Hutter 2017, no restarts) or step decay."""
    if config.lr_schedule == "cosine":
        progress = epoch / max(config.epochs - 1, 1)
        return config.min_learning_rate + 0.5 * (config.learning_rate - config.min_learning_rate) * (
            1.0 + math.cos(math.pi * progress))
    if config.lr_schedule == "step":
        return config.learning_rate * config.lr_gamma ** (epoch // config.lr_step_epochs)
    return config.learning_rate


def log_line(record: Mapping[str, Any]) -> str:
    """One epoch of the log as strict JSON: a non-finite value (a validation rollout that blew up) is
    ``null``, which every JSON reader accepts, not Python's ``NaN``/``Infinity``, which strict ones refuse."""
    return json.dumps(json_ready(dict(record)), allow_nan=False) + "\n"


@dataclass
class TrainingResult:
    history: list[dict[str, Any]]
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    resumed_from: int = 0
    final: dict[str, Any] = field(default_factory=dict)


def _check_setup(model: nn.Module, solver: Solver, terms: Sequence[LossTerm], config: TrainingConfig) -> None:
    """``ValueError`` before any work when the model is not what the solver's hook runs (training would
    not move it), or when time matters and a term evaluates fields at ``t = 0`` only; ``ConfigError``
    for a config value a case file would refuse (a ``TrainingConfig`` built in Python is not checked
    on construction). A config naming a regularizer no term provides is warned about: the trainer
    reads only its optimiser, schedule, batch and stopping keys (``build_terms`` makes the terms)."""
    from_mapping(type(config), dataclasses.asdict(config), "training")
    names = {getattr(term, "name", None) for term in terms}
    for key in ("regularizer", "jacobian_penalty"):
        wanted = getattr(config, key)
        if wanted != "none" and wanted not in names:
            log.warning("config.%s = %r, but no term of that name was given (terms: %s): the Trainer does not add "
                        "terms from the config; pass them, or build them with build_terms(case, host)", key, wanted,
                        ", ".join(sorted(str(name) for name in names)))
    hooked = solver.closure
    hooked_parameters = {id(p) for p in hooked.parameters()} if isinstance(hooked, nn.Module) else set()
    if hooked is None or not all(id(p) in hooked_parameters for p in model.parameters()):
        raise ValueError(f"the model is not the closure in the solver's hook ({type(hooked).__name__}): build the "
                         f"solver with closure=model, so that its rollouts -- and their gradients -- run the model")
    broken = [name for name, parameter in model.named_parameters() if not torch.isfinite(parameter).all()]
    if broken:  # (its first loss would be NaN, blamed on the learning rate)
        raise ValueError(f"the model's weights {', '.join(broken[:4])} hold NaN or inf before training: initialise "
                         "it afresh or load finite weights")
    if time_matters(solver):
        for term in terms:
            if not getattr(term, "uses_window_times", False):
                raise ValueError(f"the {getattr(term, 'name', type(term).__name__)!r} term evaluates the field at "
                                 f"t = 0 for every window, but time matters here ({type(solver).__name__}.autonomous "
                                 f"= {solver.autonomous}, closure autonomous = "
                                 f"{getattr(hooked, 'autonomous', True)}): train with the rollout loss alone "
                                 f"(RolloutLoss / AdaptiveRolloutLoss integrate each window from its own start time)")


class Trainer:
    """Minimise ``sum(weight * value)`` of ``terms`` over batches of training windows.

    Args:
        model: the closure (its parameters are optimised); already in ``solver``'s hook.
        solver: the host solver the terms roll out.
        terms: loss terms, the trajectory loss first.
        validation: scores the model on validation windows (early stopping, best weights).
        config: the case's ``[training]`` table.
        log_file / checkpoint_file: JSON-lines log and checkpoint paths (``None``: none written).
        fingerprint: identifies configuration and data; a checkpoint with another is refused (unless it is
            one of ``accepted_fingerprints``: an earlier version's fingerprint of the same set-up).
        identity: what the fingerprint is made of, in words (``train_case``: the case TOML and the
            data's SHA-256), stored in checkpoints; ``describe_change(their identity)`` names what
            changed when a checkpoint's fingerprint differs (``load_checkpoint``).
    """

    def __init__(self, model: nn.Module, solver: Solver, terms: Sequence[LossTerm], validation: Validation,
                 config: TrainingConfig, *, log_file: str | Path | None = None,
                 checkpoint_file: str | Path | None = None, fingerprint: str = "", progress: bool | None = None,
                 identity: Mapping[str, str] | None = None,
                 describe_change: Callable[[Mapping[str, str]], list[str]] | None = None,
                 accepted_fingerprints: Sequence[str] = ()):
        self.model, self.solver, self.terms, self.validation, self.config = model, solver, list(terms), validation, config
        _check_setup(model, solver, self.terms, config)
        self.log_file = Path(log_file) if log_file is not None else None
        self.checkpoint_file = Path(checkpoint_file) if checkpoint_file is not None else None
        self.fingerprint, self.progress = fingerprint, progress
        self.identity = dict(identity or {})  # readable parts of the fingerprint, kept in checkpoints
        self.describe_change, self.accepted_fingerprints = describe_change, tuple(accepted_fingerprints)
        # the model's and the terms' parameters (multiple shooting's segment starts): see ParameterSteps
        self.steps = ParameterSteps(model, self.terms, config)
        self.parameters, self.optimizer = self.steps.all, self.steps.adamw
        # batches are drawn on the CPU so every device sees the same order
        self.batch_generator = torch.Generator().manual_seed(config.seed)

    # -- state ------------------------------------------------------------------------------------
    def _state(self, epoch: int, best: dict[str, Any], bad_epochs: int, history: list[dict]) -> dict[str, Any]:
        return {"epoch": epoch, "model": self.model.state_dict(), **self.steps.state_dict(),
                "batch_generator": self.batch_generator.get_state(), "torch_rng": torch.get_rng_state(),
                "terms": {term.name: term.state_dict() for term in self.terms if hasattr(term, "state_dict")},
                "best": best, "bad_epochs": bad_epochs, "history": history, "identity": dict(self.identity)}

    def _restore(self, state: dict[str, Any]) -> tuple[int, dict[str, Any], int, list[dict]]:
        self.steps.load_state_dict(state, self.checkpoint_file)
        self.model.load_state_dict(state["model"])
        self.batch_generator.set_state(state["batch_generator"])
        torch.set_rng_state(state["torch_rng"])
        for term in self.terms:
            if term.name in state["terms"]:
                term.load_state_dict(state["terms"][term.name])
        return state["epoch"], state["best"], state["bad_epochs"], list(state["history"])

    # -- one epoch --------------------------------------------------------------------------------
    def _epoch(self, windows: WindowSet, sample_interval: float, epoch: int) -> dict[str, float]:
        self.model.train()
        order = torch.randperm(len(windows), generator=self.batch_generator)
        sums: dict[str, Tensor] = {}
        total_sum, counted, skipped = None, 0, 0
        non_finite: set[str] = set()  # the terms of skipped batches that were not finite
        for first in range(0, len(windows), self.config.batch_size):
            index = order[first: first + self.config.batch_size]
            batch = Batch(windows.gather(index), sample_interval, windows.starts[index.to(windows.starts.device)],
                          start_time=windows.start_time)
            values: dict[str, Tensor] = {}
            total = None
            for term in self.terms:
                try:
                    weighted = term(self.model, self.solver, batch, epoch)
                except FloatingPointError:  # an adaptive solve whose step underflowed: a blow-up
                    weighted = {term.name: Weighted(torch.tensor(math.inf), 1.0)}
                for name, (value, weight) in weighted.items():
                    values[name] = value.detach()
                    total = weight * value if total is None else total + weight * value
            if not torch.isfinite(total):
                skipped += 1  # a non-finite batch would poison AdamW's moments: skip it
                non_finite.update(name for name, value in values.items() if not torch.isfinite(value).all())
                continue
            self.steps.zero_grad()
            try:
                total.backward()
            except AssertionError as error:  # the adjoint solve's step underflowed: as a non-finite batch
                if not is_step_underflow(error):
                    raise
                self.steps.zero_grad()
                skipped += 1
                non_finite.add("adjoint backward")
                continue
            if not self.steps.finite_gradient():  # (a finite loss can overflow backward)
                self.steps.zero_grad()
                skipped += 1
                non_finite.add("the gradient")
                continue
            self.steps.step()
            size = len(index)
            counted += size
            total_sum = total.detach() * size if total_sum is None else total_sum + total.detach() * size
            for name, value in values.items():
                sums[name] = value * size if name not in sums else sums[name] + value * size
        if counted == 0:
            which = (f"non-finite terms: {', '.join(sorted(non_finite))}" if non_finite
                     else "each term finite, their weighted sum overflowed")
            singular = (" (a condition-number penalty is infinite where the closure's Jacobian is singular, "
                        "e.g. zero)") if "condition" in non_finite else ""
            raise FloatingPointError(f"epoch {epoch + 1}: every batch gave a non-finite loss ({which}); lower "
                                     f"training.learning_rate or the regularizer weight{singular}")
        record = {"loss": float(total_sum) / counted, **{f"loss/{name}": float(s) / counted for name, s in sums.items()}}
        if skipped:
            record["skipped_batches"] = skipped
        return record

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, train: WindowSet, validation: WindowSet, sample_interval: float, *,
            resume: bool = False) -> TrainingResult:
        """Train for ``config.epochs`` epochs (fewer when early stopping fires) and leave the best
        weights (lowest validation loss) in the model."""
        for name, windows in (("training", train), ("validation", validation)):
            if len(windows) == 0:
                raise ValueError(f"no {name} windows: the trajectories are shorter than a window of {windows.length} "
                                 "samples, or every window holds a non-finite value (such windows are left out)")
        steps = getattr(self.terms[0], "steps", None)  # the trajectory loss compares steps + 1 samples
        if steps is not None and train.length < steps + 1:
            raise ValueError(f"the training windows hold {train.length} samples, the {self.terms[0].name} loss "
                             f"compares {steps + 1} ({steps} steps): build windows of at least {steps + 1}")
        config = self.config
        start, best, bad_epochs, history = 0, {"val_loss": math.inf, "epoch": -1, "state": None}, 0, []
        if resume and self.checkpoint_file is not None and self.checkpoint_file.is_file():
            start, best, bad_epochs, history = self._restore(load_checkpoint(
                self.checkpoint_file, fingerprint=self.fingerprint, describe_change=self.describe_change,
                also_accepted=self.accepted_fingerprints))
            log.info("resuming from %s after epoch %d", self.checkpoint_file, start)
        elif resume:
            log.warning("--resume: no checkpoint at %s; starting afresh", self.checkpoint_file)
        log_handle = self._open_log(history)
        checkpointed = start  # (the epochs of the checkpoint resumed, else 0)
        # a term may need epochs before early stopping can end training (homotopy: its lam = 0 stage). The
        # closure kept is still the epoch of lowest validation loss over all epochs, a coupled one included
        # (validation rolls out uncoupled): docs/training-methods.md
        earliest_stop = max((int(getattr(term, "earliest_stop", 0)) for term in self.terms), default=0)
        # a checkpoint of the epoch that stopped early (the run then failed saving the closure) stops here
        # too: another epoch could find a better validation loss and train on, as the run did not
        stopped_early = bool(start and config.patience and bad_epochs >= config.patience and start >= earliest_stop)
        bar = progress_bar(range(start, start if stopped_early else config.epochs), total=config.epochs, description="train",
                           enabled=self.progress, unit="epoch", initial=start)
        # without a terminal (a batch job's log) a line every PROGRESS_LOG_SECONDS, as rollouts give
        lines = progress_log(config.epochs, "train", "epoch", enabled=self.progress, every=PROGRESS_LOG_SECONDS,
                             initial=start)
        try:
            for epoch in bar:
                started = wallclock.perf_counter()
                rate = learning_rate_at(epoch, config)
                self.steps.set_learning_rate(rate)
                record: dict[str, Any] = {"epoch": epoch + 1, **self._epoch(train, sample_interval, epoch)}
                self.model.eval()
                with torch.no_grad():
                    record["val_loss"] = float(self.validation(self.model, self.solver, validation, sample_interval))
                record["lr"] = rate
                for term in self.terms:
                    record.update(getattr(term, "epoch_log", dict)())
                if record["val_loss"] < best["val_loss"]:
                    best = {"val_loss": record["val_loss"], "epoch": epoch + 1,
                            "state": copy.deepcopy(self.model.state_dict())}
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                record["seconds"] = wallclock.perf_counter() - started
                history.append(record)
                if log_handle is not None:
                    log_handle.write(log_line(record))
                    log_handle.flush()
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{record['loss']:.3g}", val=f"{record['val_loss']:.3g}")
                done = epoch + 1
                if self.checkpoint_file is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                    save_checkpoint(self.checkpoint_file, self._state(done, best, bad_epochs, history),
                                    fingerprint=self.fingerprint)
                    checkpointed = done
                if lines is not None:
                    lines.update(1, f"loss {record['loss']:.4g}, validation {record['val_loss']:.4g} (best "
                                    f"{best['val_loss']:.4g}, epoch {best['epoch']})"
                                    + (f", checkpoint after epoch {checkpointed}" if checkpointed else ""))
                if config.patience and bad_epochs >= config.patience and done >= earliest_stop:
                    stopped_early = True
                    log.info("early stop after epoch %d: no better validation loss in %d epochs", done, bad_epochs)
                    break
        finally:
            if log_handle is not None:
                log_handle.close()
        if best["state"] is not None:
            self.model.load_state_dict(best["state"])
        elif history:  # nan < inf is False: no epoch was ever "best" (early-stopped or not)
            raise FloatingPointError(f"no epoch of {len(history)} had a finite validation loss (the closure's validation "
                                     "rollouts blow up): nothing worth saving; lower training.learning_rate, add a "
                                     "regularizer, or check the validation data")
        last = history[-1] if history else {}
        return TrainingResult(history=history, epochs_run=len(history), best_epoch=best["epoch"],
                              best_val_loss=best["val_loss"], stopped_early=stopped_early, resumed_from=start,
                              final={key: value for key, value in last.items() if key != "seconds"})

    def _open_log(self, history: list[dict]):
        """Start the log afresh, or with the checkpoint's epochs when resuming (later lines dropped)."""
        if self.log_file is None:
            return None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_file, "w")
        for record in history:
            handle.write(log_line(record))
        handle.flush()
        return handle
