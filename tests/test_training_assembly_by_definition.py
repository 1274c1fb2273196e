"""The trainer, its checkpoints and ``train_case`` by definition (a mutation audit of ``training/trainer.py``,
``checkpoint.py``, ``build.py`` and ``assembly.py``): an epoch is AdamW over seeded random batches of the
training windows at the schedule's rate, with the gradient clipped, and logs the window-weighted mean loss;
validation scores the validation windows, the mean over them of the rollout's MSE; a resume gives what an
uninterrupted run gives, whatever the terms draw; ``train_case`` cuts the windows, fits the normalisation
and records the result as docs/training.md says."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from hybridnde.closure_file import load_closure
from hybridnde.config import ConfigError, TrainingConfig
from hybridnde.data import WindowSet, load_training_data, normalization_statistics
from hybridnde.io import DataError, ResumeRefused, write_netcdf
from hybridnde.models import MLPClosure
from hybridnde.simulate import simulate_case
from hybridnde.systems import build_host_solver
from hybridnde.training import Trainer, checkpoint_path, log_path, train_case
from hybridnde.training import trainer as trainer_module
from hybridnde.training.assembly import (RolloutValidation, build_terms, check_training_config, homotopy_schedule,
                                        reference_solver)
from hybridnde.training.checkpoint import load_checkpoint, partial_log_path, save_checkpoint
from hybridnde.training.terms import Batch, RolloutLoss
from solvers import ClosureOnly
from test_training import interrupted_in_epoch, read_log, toy_case

F64 = torch.float64


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    """test_training.py's toy truth: 5 two-body members (4 train, 1 validate) x 41 samples."""
    path = tmp_path_factory.mktemp("truth") / "truth.nc"
    write_netcdf(simulate_case(toy_case(), progress=False), path)
    return path


def small_setup(seed: int = 0):
    """An MLP closure in a closure-only solver, and 3 members x 12 samples of 2 states (2 train, 1 validate)."""
    torch.manual_seed(seed)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    trajectories = 0.5 * torch.randn(3, 12, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    return model, solver, trajectories


def cosine(epoch: int, config: TrainingConfig) -> float:
    """Loshchilov & Hutter's cosine from learning_rate (epoch 0) to min_learning_rate (the last epoch)."""
    progress = epoch / (config.epochs - 1)
    return config.min_learning_rate + 0.5 * (config.learning_rate - config.min_learning_rate) * (
        1.0 + math.cos(math.pi * progress))


# -- an epoch ---------------------------------------------------------------------------------------------------------
def test_an_epoch_is_adamw_over_seeded_batches_at_the_scheduled_rate_and_logs_the_window_mean_loss():
    """Replayed by hand: the batches are ``randperm(windows)`` of a generator seeded with ``training.seed``,
    ``batch_size`` at a time (the last one short); each step zeroes the gradient, backpropagates the batch's
    loss, clips the gradient's global norm and steps AdamW at the epoch's cosine rate. The epoch's ``loss``
    is the mean over windows (each batch weighted by its size); validation sees the validation windows."""
    model, solver, trajectories = small_setup()
    train, validation = WindowSet.build(trajectories[:2], 3), WindowSet.build(trajectories[2:], 3)
    assert len(train) == 20  # batches of 6, 6, 6 and 2
    config = TrainingConfig(epochs=3, batch_size=6, lr_schedule="cosine", learning_rate=2e-2, min_learning_rate=1e-3,
                            weight_decay=0.05, gradient_clip=0.05, seed=7, checkpoint_every=0, patience=0)
    replica = copy.deepcopy(model)
    replica_solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=replica)
    scores, seen = iter([3.0, 2.0, 1.0]), []  # the last epoch is the best: its weights are kept

    def score(model_, solver_, windows, sample_interval):
        seen.append(windows)
        return next(scores)

    result = Trainer(model, solver, [RolloutLoss(steps=2)], score, config).fit(train, validation, 0.1)
    assert all(windows is validation for windows in seen) and len(seen) == 3

    optimizer = torch.optim.AdamW(list(replica.parameters()), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator, term = torch.Generator().manual_seed(config.seed), RolloutLoss(steps=2)
    for epoch in range(config.epochs):
        rate = cosine(epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = rate
        order, total, clipped = torch.randperm(len(train), generator=generator), 0.0, []
        for first in range(0, len(train), config.batch_size):
            index = order[first: first + config.batch_size]
            (value, weight), = term(replica, replica_solver, Batch(train.gather(index), 0.1, train.starts[index]),
                                    epoch).values()
            optimizer.zero_grad()
            (weight * value).backward()
            clipped.append(float(torch.nn.utils.clip_grad_norm_(list(replica.parameters()), config.gradient_clip)))
            optimizer.step()
            total += float(value.detach()) * len(index)
        assert max(clipped) > config.gradient_clip  # (the clip acts)
        record = result.history[epoch]
        assert record["lr"] == pytest.approx(rate, rel=1e-12)
        assert record["loss"] == pytest.approx(total / len(train), rel=1e-10)
        assert record["loss/rollout"] == pytest.approx(total / len(train), rel=1e-10)
    for name, tensor in replica.state_dict().items():
        assert torch.allclose(model.state_dict()[name], tensor, rtol=0, atol=1e-13), name


def test_the_batch_order_follows_training_seed():
    """Two trainings that differ only in ``training.seed`` draw other batches, hence other weights; the
    same seed the same weights."""
    def weights(seed):
        model, solver, trajectories = small_setup()
        windows = WindowSet.build(trajectories, 3)
        config = TrainingConfig(epochs=1, batch_size=5, seed=seed, checkpoint_every=0, patience=0,
                                lr_schedule="constant", learning_rate=1e-2)
        Trainer(model, solver, [RolloutLoss(steps=2)], lambda *_: 1.0, config).fit(windows, windows, 0.1)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(weights(3), weights(3)) and not torch.equal(weights(3), weights(4))



class PoisonedRollout(RolloutLoss):
    """A rollout loss that is NaN for every batch holding window 0."""

    def __call__(self, model, solver, batch, epoch):
        (value, weight), = super().__call__(model, solver, batch, epoch).values()
        poisoned = bool((batch.starts == 0).all(-1).any())
        return {self.name: (value + float("nan") if poisoned else value, weight)}


def test_a_non_finite_batch_is_skipped_counted_and_left_out_of_the_epochs_loss():
    """docs/training.md: a batch whose loss is not finite is skipped. The epoch logs ``skipped_batches`` and
    the mean loss over the windows of the batches it stepped on."""
    model, solver, trajectories = small_setup()
    windows = WindowSet.build(trajectories[:2], 3)  # 20 windows, batches of 6, 6, 6, 2
    config = TrainingConfig(epochs=2, batch_size=6, checkpoint_every=0, patience=0, lr_schedule="constant", seed=2)
    seen = []

    class Watched(PoisonedRollout):
        def __call__(self, model, solver, batch, epoch):
            weighted = super().__call__(model, solver, batch, epoch)
            (value, _), = weighted.values()
            seen.append((epoch, len(batch.windows), float(value.detach())))
            return weighted

    result = Trainer(model, solver, [Watched(steps=2)], lambda *_: 1.0, config).fit(windows, windows, 0.1)
    for epoch, record in enumerate(result.history):
        batches = [(size, value) for e, size, value in seen if e == epoch]
        kept = [(size, value) for size, value in batches if math.isfinite(value)]
        assert len(batches) == 4 and record["skipped_batches"] == len(batches) - len(kept) == 1
        mean = sum(size * value for size, value in kept) / sum(size for size, _ in kept)
        assert record["loss"] == pytest.approx(mean, rel=1e-12)



def test_windows_shorter_than_the_trajectory_loss_compares_are_refused_before_training():
    """A rollout of ``steps`` steps compares ``steps + 1`` samples: windows of ``steps`` samples are refused
    naming the length to build (not a shape error from inside the loss)."""
    model, solver, trajectories = small_setup()
    config = TrainingConfig(epochs=1, batch_size=6, checkpoint_every=0, patience=0)
    trainer = Trainer(model, solver, [RolloutLoss(steps=3)], lambda *_: 1.0, config)
    short = WindowSet.build(trajectories, 3)
    with pytest.raises(ValueError, match="the training windows hold 3 samples, the rollout loss compares 4"):
        trainer.fit(short, short, 0.1)



def test_each_batch_knows_its_windows_start_times():
    """A term sees each window's own start time: the trajectories' first time plus its first sample's index
    times the sample interval (the time a non-autonomous field is integrated from)."""
    model, solver, trajectories = small_setup()
    windows = WindowSet.build(trajectories, 3, stride=2, start_time=5.0)
    seen = []

    class Timed(RolloutLoss):
        def __call__(self, model, solver, batch, epoch):
            seen.append(batch.window_times())
            return super().__call__(model, solver, batch, epoch)

    config = TrainingConfig(epochs=1, batch_size=4, checkpoint_every=0, patience=0)
    Trainer(model, solver, [Timed(steps=2)], lambda *_: 1.0, config).fit(windows, windows, 0.1)
    expected = 5.0 + 0.1 * windows.starts[:, 1].double()
    assert torch.allclose(torch.cat(seen).sort().values, expected.sort().values, rtol=0, atol=1e-12)


def test_a_model_only_partly_in_the_solvers_hook_is_refused():
    """Training moves the model's parameters through the solver's rollouts: a model with parameters the hooked
    closure lacks would have them never trained, and is refused."""
    model, solver, trajectories = small_setup()
    bigger = torch.nn.Sequential(model, torch.nn.Linear(2, 2).double())
    config = TrainingConfig(epochs=1, batch_size=4, checkpoint_every=0, patience=0)
    with pytest.raises(ValueError, match="the model is not the closure in the solver's hook"):
        Trainer(bigger, solver, [RolloutLoss(steps=2)], lambda *_: 1.0, config)


# -- resume -----------------------------------------------------------------------------------------------------------
class NoisyRollout(RolloutLoss):
    """A rollout loss of windows perturbed by noise from the global torch stream and from its own generator
    (its ``state_dict``): a resume must continue both; Ctrl-C in epoch ``stop_at`` (0-based)."""

    def __init__(self, *, stop_at: int | None = None):
        super().__init__(steps=2)
        self.stop_at, self.generator = stop_at, torch.Generator().manual_seed(11)

    def __call__(self, model, solver, batch, epoch):
        if epoch == self.stop_at:
            raise KeyboardInterrupt
        noise = 1e-2 * torch.randn(batch.windows.shape, dtype=F64) \
            + 1e-2 * torch.randn(batch.windows.shape, dtype=F64, generator=self.generator)
        return super().__call__(model, solver, Batch(batch.windows + noise, batch.sample_interval, batch.starts), epoch)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def test_a_resumed_trainer_equals_an_uninterrupted_one_whatever_its_terms_draw(tmp_path):
    """Checkpoint after every epoch, Ctrl-C in the fourth: the resume continues from epoch 3 with the weights,
    AdamW's moments, the batch generator, the global torch stream, the term's own state, the best epoch so far
    (2, before the checkpoint), the patience count and the log -- and ends where the uninterrupted run ends
    (early stop after epoch 5: three epochs without a better score), bit for bit."""
    scores = [3.0, 1.0, 2.0, 2.5, 2.6, 0.5, 0.4]
    config = TrainingConfig(epochs=7, batch_size=6, checkpoint_every=1, patience=3, lr_schedule="cosine",
                            learning_rate=1e-2, min_learning_rate=1e-3, seed=5)

    def fit(folder, stop_at=None, resume=False, given=scores):
        model, solver, trajectories = small_setup()
        windows, remaining = WindowSet.build(trajectories, 3), iter(given)
        trainer = Trainer(model, solver, [NoisyRollout(stop_at=stop_at)], lambda *_: next(remaining), config,
                          checkpoint_file=folder / "checkpoint.pt", log_file=folder / "log.jsonl")
        torch.manual_seed(123)  # the global stream as a fresh process leaves it
        return trainer.fit(windows, windows, 0.1, resume=resume), model

    straight, model = fit(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "interrupted", stop_at=3)
    resumed, again = fit(tmp_path / "interrupted", resume=True, given=scores[3:])
    assert (straight.epochs_run, straight.best_epoch, straight.stopped_early) == (5, 2, True)
    assert (resumed.epochs_run, resumed.best_epoch, resumed.best_val_loss, resumed.stopped_early,
            resumed.resumed_from) == (5, 2, 1.0, True, 3)

    def without_time(records):
        return [{key: value for key, value in record.items() if key != "seconds"} for record in records]

    assert without_time(resumed.history) == without_time(straight.history)
    assert (tmp_path / "interrupted" / "log.jsonl").read_text().count("\n") == 5
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    # ... and the weights of every epoch, not only the best one's: a run whose scores improve to the end
    improving = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25]
    straight, model = fit(tmp_path / "straight2", given=improving)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "interrupted2", stop_at=4, given=improving)
    resumed, again = fit(tmp_path / "interrupted2", resume=True, given=improving[4:])
    assert resumed.resumed_from == 4 and without_time(resumed.history) == without_time(straight.history)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


# -- validation -------------------------------------------------------------------------------------------------------
def test_the_validation_score_is_the_mean_over_windows_of_each_rollouts_mse():
    """``RolloutValidation``: each validation window rolled out ``steps`` data intervals from its first sample
    (not the loss's own step count), the squared error of samples 1..steps averaged over samples and states,
    then over all windows -- in batches smaller than the set, the last one short."""
    model, solver, trajectories = small_setup()
    windows = WindowSet.build(trajectories, 4, stride=3)  # 3 members x 3 windows of 4 samples
    assert len(windows) == 9
    errors = []
    with torch.no_grad():  # (as the trainer calls it)
        score = RolloutValidation(RolloutLoss(steps=1), steps=3, batch_size=4)(model, solver, windows, 0.1)
        for i in range(len(windows)):
            window = windows.gather(torch.tensor([i]))[0]
            state, squared = window[:1], []
            for step in range(1, 4):
                state = solver.rollout(state, 1, dt=0.1)[:, -1]
                squared.append((state[0] - window[step]).pow(2))
            errors.append(float(torch.stack(squared).mean()))
    assert len(set(errors)) == len(errors)  # (the windows differ)
    assert score == pytest.approx(sum(errors) / len(errors), rel=1e-10)


# -- train_case -------------------------------------------------------------------------------------------------------
def test_train_case_cuts_the_windows_fits_the_normalisation_and_records_the_best_epoch(tmp_path, truth):
    """docs/training.md: training windows of ``rollout_steps + 1`` samples every ``window_stride`` samples of the
    training members, validation windows of ``validation_rollout_steps + 1`` samples of the validation member;
    ``val_loss`` is the saved (best) closure's validation rollout MSE over them; the normalisation is fitted to
    the training states and to ``du/dt`` (a neural ODE knows no physics); the metadata records the best epoch
    and the last epoch's log record; the caller's global torch stream is left as it was."""
    case = toy_case({"epochs": 3, "rollout_steps": 1, "validation_rollout_steps": 3, "window_stride": 4,
                     "checkpoint_every": 0, "patience": 0})
    out, before = tmp_path / "closure.pt", torch.get_rng_state()
    _, result = train_case(case, truth, out, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    model, payload = load_closure(out)
    metadata, history = payload["metadata"], read_log(log_path(out))
    data = load_training_data(truth, case, window_length=4, device=torch.device("cpu"), dtype=F64)
    n_train, n_times = data.train.shape[:2]
    assert (n_train, data.validation.shape[0], n_times) == (4, 1, 41)
    assert metadata["train_windows"] == n_train * len(range(0, n_times - 2 + 1, 4))
    assert metadata["validation_windows"] == n_times - 4 + 1
    best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
    assert (metadata["best_epoch"], result.best_epoch) == (best + 1, best + 1)
    assert metadata["final"] == {key: value for key, value in history[-1].items() if key != "seconds"}

    host = build_host_solver(case, closure=model)
    windows = data.validation[0].unfold(0, 4, 1).movedim(-1, 1)  # (38, 4, state)
    with torch.no_grad():
        prediction = host.rollout(windows[:, 0], 3, dt=data.sample_interval)
    expected = float((prediction[:, 1:] - windows[:, 1:]).pow(2).mean())
    assert history[best]["val_loss"] == pytest.approx(expected, rel=1e-9)

    known = build_host_solver(case)
    stats = normalization_statistics(data.train, known.known_rhs, data.sample_interval, per_component=True)
    for name, value in stats.items():
        expected = value.clamp_min(1e-8) if name.endswith("scale") else value  # (scales floored: set_normalization)
        assert torch.allclose(getattr(model, name), expected, rtol=1e-12, atol=0), name



class _Started(Exception):
    pass


def test_training_seed_seeds_the_initial_weights(tmp_path, truth, monkeypatch):
    """The weights training starts from are drawn from ``training.seed``: the same seed the same weights,
    another seed others (the seeds of an experiment's repeats differ in their start, not only in their batches)."""
    starts = []

    def started(trainer, *args, **kwargs):
        starts.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
        raise _Started

    monkeypatch.setattr(trainer_module.Trainer, "fit", started)
    for seed in (3, 3, 4):
        with pytest.raises(_Started):
            train_case(toy_case({"seed": seed}), truth, tmp_path / f"closure{len(starts)}.pt", progress=False)
    assert torch.equal(starts[0], starts[1]) and not torch.equal(starts[0], starts[2])



def test_a_run_without_resume_starts_afresh_beside_an_interrupted_runs_checkpoint(tmp_path, truth, monkeypatch):
    """Without ``--resume`` a checkpoint there is replaced, not continued (docs/training.md): the run trains from
    epoch 1 and gives the closure of a run into an empty folder."""
    out, straight = tmp_path / "closure.pt", tmp_path / "straight" / "closure.pt"
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(3))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth, out, progress=False)
    monkeypatch.undo()
    assert checkpoint_path(out).is_file()
    _, result = train_case(toy_case(), truth, out, progress=False)
    assert result.resumed_from == 0 and [record["epoch"] for record in read_log(log_path(out))] == list(range(1, 7))
    train_case(toy_case(), truth, straight, progress=False)
    assert load_closure(out)[1]["checksum"] == load_closure(straight)[1]["checksum"]



def test_the_closures_metadata_records_the_best_epoch_not_the_last(tmp_path, truth, monkeypatch):
    """Validation scores 1, 2, 3: the best epoch is the first, whose weights are saved; the metadata says so."""
    scores = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(RolloutValidation, "__call__", lambda self, *args: next(scores))
    out = tmp_path / "closure.pt"
    train_case(toy_case({"epochs": 3, "checkpoint_every": 0}), truth, out, progress=False)
    metadata = load_closure(out)[1]["metadata"]
    assert (metadata["best_epoch"], metadata["best_val_loss"], metadata["epochs_run"]) == (1, 1.0, 3)


def test_a_closure_recorded_with_the_earlier_full_table_checksum_is_this_cases():
    """``trained_for``: the checksum now, or the full-table one closures recorded before the run-only keys were
    left out -- also where the closure stored no case to compare with; another case's is not."""
    from hybridnde.training.build import trained_for, training_checksum

    case = toy_case({"checkpoint_every": 3})
    assert trained_for(case, training_checksum(case), None)
    assert training_checksum(case, legacy=True) != training_checksum(case)
    assert trained_for(case, training_checksum(case, legacy=True), None)
    assert not trained_for(case, training_checksum(toy_case({"seed": 9}), legacy=True), None)


def test_a_checkpoint_of_other_data_is_not_resumed(tmp_path, truth, monkeypatch):
    """The fingerprint a checkpoint is written with covers the data: the same case on another truth file
    (members drawn with another seed) is refused, naming the data."""
    other = tmp_path / "other.nc"
    write_netcdf(simulate_case(toy_case(initial_condition={"seed": 9}), progress=False), other)
    out = tmp_path / "closure.pt"
    monkeypatch.setattr(trainer_module.Trainer, "_epoch", interrupted_in_epoch(2))
    with pytest.raises(KeyboardInterrupt):
        train_case(toy_case(), truth, out, progress=False)
    monkeypatch.undo()
    assert checkpoint_path(out).is_file()
    with pytest.raises(ConfigError, match="cannot resume, changed since the checkpoint: the training data"):
        train_case(toy_case(), other, out, resume=True, progress=False)


# -- build_terms --------------------------------------------------------------------------------------------------------
def _states(case, count=5, samples=4):
    """``count`` windows of ``samples`` states of the true system near the toy case's orbit."""
    host = reference_solver(case)
    u0 = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64) + 0.05 * torch.randn(
        count, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return host.rollout(u0, samples - 1, dt=case.time.sample_interval)


def test_the_jvp_regularizer_ramps_its_weight_over_the_warmup():
    case = toy_case({"regularizer": "jvp", "regularizer_weight": 0.3, "regularizer_warmup_epochs": 3, "probes": 2})
    torch.manual_seed(0)
    model = MLPClosure(state_dim=4, width=8).double()
    host = build_host_solver(case, closure=model)
    term = build_terms(case, host, device=torch.device("cpu"), dtype=F64)[1]
    windows = _states(case)
    batch = Batch(windows, case.time.sample_interval, torch.zeros(len(windows), 2, dtype=torch.long))
    weights = [weight for epoch in range(5) for _, weight in term(model, host, batch, epoch).values()]
    assert weights == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_build_terms_gives_each_term_the_weight_warmup_stencil_and_substeps_training_names():
    """The regularizer's weight ramps over ``regularizer_warmup_epochs`` (``w min(1, (e + 1) / warmup)``),
    and so does the Jacobian penalty's own weight; the FD term uses the stencil asked for; the rollout loss
    steps the host ``hybrid.substeps`` times per data interval."""
    from hybridnde.regularizers import finite_difference_directional_penalty

    case = toy_case({"regularizer": "fd", "regularizer_weight": 0.3, "fd_stencil": "centred",
                     "regularizer_warmup_epochs": 4, "jacobian_penalty": "frobenius",
                     "jacobian_penalty_weight": 0.07, "rollout_steps": 3},
                     hybrid={"setup": "neural_ode", "substeps": 2, "integrator": "euler"})  # (Euler: substeps show)
    torch.manual_seed(0)
    model = MLPClosure(state_dim=4, width=8).double()
    host = build_host_solver(case, closure=model)
    terms = build_terms(case, host, device=torch.device("cpu"), dtype=F64)
    assert [term.name for term in terms] == ["rollout", "fd", "frobenius"]
    windows = _states(case)
    batch = Batch(windows, case.time.sample_interval, torch.zeros(len(windows), 2, dtype=torch.long))
    for epoch in range(6):
        ramp = min(1.0, (epoch + 1) / 4)
        (_, fd_weight), = terms[1](model, host, batch, epoch).values()
        (_, penalty_weight), = terms[2](model, host, batch, epoch).values()
        assert (fd_weight, penalty_weight) == (pytest.approx(0.3 * ramp), pytest.approx(0.07 * ramp))
    dt = case.time.sample_interval
    with torch.no_grad():
        (fd, _), = terms[1](model, host, batch, 0).values()
        centred, one_sided = (float(finite_difference_directional_penalty(host.rhs, windows[:, :3], dt, stencil=stencil))
                              for stencil in ("centred", "one_sided"))
        assert float(fd) == pytest.approx(centred, rel=1e-12) and abs(centred - one_sided) > 1e-6 * centred
        (rollout, _), = terms[0](model, host, batch, 0).values()
        half_steps = host.rollout(windows[:, 0], 6, dt=dt / 2)[:, ::2]
        full_steps = host.rollout(windows[:, 0], 3, dt=dt)
    assert float(rollout) == pytest.approx(float((half_steps[:, 1:] - windows[:, 1:]).pow(2).mean()), rel=1e-12)
    assert float(rollout) != pytest.approx(float((full_steps[:, 1:] - windows[:, 1:]).pow(2).mean()), rel=1e-6)


@pytest.mark.parametrize("integration", ["odeint", "odeint_adjoint"])
def test_the_adaptive_losses_integrate_to_the_cases_tolerances(integration):
    """``[time]``'s ``rtol`` and ``atol`` (not swapped), the adjoint where asked for, for the plain adaptive
    rollout and for the homotopy and multiple shooting losses, with their own keys."""
    common = {"integration": integration, "rollout_steps": 4}
    time = {"rtol": 1e-5, "atol": 1e-9}
    cases = [toy_case(common, time=time),
             toy_case({**common, "method": "homotopy", "homotopy_stages": 3, "homotopy_ratio": 0.3, "coupling": 2.5,
                       "smoothing": 0.2}, time=time),
             toy_case({**common, "method": "multiple_shooting", "shooting_segments": 2, "continuity_weight": 0.4},
                      time=time)]
    for case in cases:
        host = build_host_solver(case, closure=MLPClosure(state_dim=4, width=8).double())
        data = SimpleNamespace(train=torch.zeros(4, 41, 4, dtype=F64))  # (multiple shooting reads its shape)
        term = build_terms(case, host, device=torch.device("cpu"), dtype=F64, data=data)[0]
        assert (term.rtol, term.atol, term.adjoint) == (1e-5, 1e-9, integration == "odeint_adjoint"), case.training.method
        if case.training.method == "homotopy":
            assert (term.coupling, term.smoothing, term.schedule.ratio) == (2.5, 0.2, 0.3)
        if case.training.method == "multiple_shooting":
            assert term.continuity_weight == 0.4


# -- checkpoint files -----------------------------------------------------------------------------------------------------
def test_the_files_beside_a_closure_are_named_as_documented_and_a_checkpoint_is_read_only_for_its_set_up(tmp_path):
    """docs/training.md's table: ``closure.checkpoint.pt``, ``closure.log.jsonl`` and ``closure.log.jsonl.partial``
    beside ``closure.pt``. A checkpoint reads back what was saved for its fingerprint (or one accepted as the same
    set-up's), is refused for another, and a torch file without the checkpoint format tag is no checkpoint."""
    closure = tmp_path / "runs" / "closure.pt"
    assert checkpoint_path(closure) == tmp_path / "runs" / "closure.checkpoint.pt"
    assert log_path(closure) == tmp_path / "runs" / "closure.log.jsonl"
    assert partial_log_path(closure) == tmp_path / "runs" / "closure.log.jsonl.partial"
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 3, "weights": torch.arange(4.0)}, fingerprint="abc")
    state = load_checkpoint(path, fingerprint="abc")
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(4.0))
    assert load_checkpoint(path, fingerprint="new", also_accepted=("abc",))["epoch"] == 3
    with pytest.raises(ResumeRefused):
        load_checkpoint(path, fingerprint="new")
    torch.save({"fingerprint": "abc", "epoch": 3}, path)  # a torch file, not a checkpoint
    with pytest.raises(DataError, match="not a hybridnde-checkpoint/1 file"):
        load_checkpoint(path, fingerprint="abc")



# -- the checks before training -------------------------------------------------------------------------------------------
def test_the_training_checks_refuse_exactly_what_they_name():
    """Each rule at its boundary: a cosine from the rate to the same rate is no climb; as many epochs as homotopy
    stages give each stage one; an epoch count that ends as the last stage (lam = 0) would start is refused, one
    more is not; as many shooting segments as intervals is allowed. ``epochs_per_stage = 0`` means
    ``epochs // stages``."""
    def refused(**training):
        try:
            check_training_config(toy_case(training))
        except ConfigError:
            return True
        return False

    assert not refused(lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=1e-3)
    assert refused(lr_schedule="cosine", learning_rate=1e-3, min_learning_rate=2e-3)
    homotopy = {"integration": "odeint", "method": "homotopy", "homotopy_stages": 3}
    assert not refused(**homotopy, epochs=3) and refused(**homotopy, epochs=2)
    assert refused(**homotopy, epochs=4, homotopy_epochs_per_stage=2)  # the last stage would start at epoch 5
    assert not refused(**homotopy, epochs=5, homotopy_epochs_per_stage=2)
    shooting = {"integration": "odeint", "method": "multiple_shooting", "rollout_steps": 4}
    assert not refused(**shooting, shooting_segments=4) and refused(**shooting, shooting_segments=5)
    assert homotopy_schedule(toy_case({**homotopy, "epochs": 8}).training).epochs_per_stage == 8 // 3


def test_the_jvp_reference_is_the_true_system_on_the_host_grid():
    """For a sub-grid host (KS resolved on 64 points, the host on 32) the reference field lives on the host's grid."""
    from pathlib import Path

    from hybridnde.config import load_case

    case = load_case(Path(__file__).resolve().parent.parent / "cases" / "ks_l22.toml",
                     overrides=["hybrid.system={n_points = 32}"])
    assert case.system.n_points == 64
    assert reference_solver(case).state_shape == build_host_solver(case).state_shape == (32,)


def test_the_fd_regularizer_trains_on_windows_of_three_samples_and_the_data_must_hold_the_longest_window(tmp_path,
                                                                                                      truth):
    """``L_FD`` uses each window's first three samples: with ``rollout_steps = 1`` the training windows still hold
    3 (every start but the last two of each of the 4 training members). Data shorter than the validation
    window are refused as such, before training."""
    out = tmp_path / "closure.pt"
    train_case(toy_case({"epochs": 1, "rollout_steps": 1, "regularizer": "fd", "regularizer_weight": 1e-3,
                         "checkpoint_every": 0}), truth, out, progress=False)
    assert load_closure(out)[1]["metadata"]["train_windows"] == 4 * (41 - 3 + 1)
    with pytest.raises(DataError, match="training windows need 46 consecutive samples"):
        train_case(toy_case({"validation_rollout_steps": 45}), truth, tmp_path / "long.pt", progress=False)


def test_a_jvp_regularizer_whose_reference_is_the_host_itself_is_warned_about(caplog):
    """ks_fd: the true equations on the host's 16 points are the host, so J_F v - J_host v is 0 for every
    v and 'jvp' trained a bare closure-Jacobian penalty under the name loss/jvp, without a word. Over
    every case: the warning comes exactly where the term's target (J_F v, less J_host v but for a neural
    ODE) is zero (a second-order host, the kinematics alone, was warned about too)."""
    from pathlib import Path

    from hybridnde.config import load_case
    from hybridnde.training.assembly import reference_solver

    generator = torch.Generator().manual_seed(0)
    seen = set()
    for path in sorted((Path(__file__).resolve().parents[1] / "cases").glob("*.toml")):
        case = load_case(path, overrides=["training.regularizer=\"jvp\""])
        host, reference = build_host_solver(case), reference_solver(case)
        u, v = (0.5 + torch.rand(3, *host.state_shape, dtype=torch.float64, generator=generator) for _ in range(2))
        target = reference.jvp(0.0, u, v) - (0.0 if case.hybrid.setup == "neural_ode" else host.jvp(0.0, u, v))
        zero = target.abs().max().item() == 0.0
        caplog.clear()
        with caplog.at_level("WARNING"):
            build_terms(case, host, device="cpu", dtype=torch.float64)
        warned = any("the target J_F v - J_host v is zero" in record.getMessage() for record in caplog.records)
        assert warned == zero, path.name
        seen.add((case.hybrid.setup, zero))
    assert {("residual", True), ("residual", False), ("second_order", False), ("neural_ode", False)} <= seen
