"""What a training step may change, and when a resumed training stops (``training.optimizers``,
``Trainer.fit``): only the segment starts of the batch's own windows move, a gradient that is not
finite moves nothing, and a checkpoint of the epoch that stopped early stops there again."""
from __future__ import annotations

import pytest
import torch

from hybridnde.config import TrainingConfig
from hybridnde.data import WindowSet
from hybridnde.models import MLPClosure
from hybridnde.training import RolloutLoss, Trainer
from hybridnde.training.multiple_shooting import MultipleShootingLoss
from hybridnde.training.terms import Batch, Weighted
from solvers import ClosureOnly


def small_setup(seed: int = 0):
    torch.manual_seed(seed)
    model = MLPClosure(state_dim=2, width=8).double()
    solver = ClosureOnly(state_shape=(2,), dt=0.1, closure=model)
    trajectories = torch.randn(3, 12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.1
    return model, solver, trajectories


def test_a_checkpoint_of_the_epoch_that_stopped_early_resumes_to_the_same_result(tmp_path):
    """The run stopped after epoch 4 (two epochs without a better validation loss) and then failed saving
    the closure: the resume ran epoch 5, found a better loss and trained on to epoch 10."""
    scores = [3.0, 2.0, 2.5, 2.5, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1]
    config = TrainingConfig(epochs=10, batch_size=8, checkpoint_every=1, patience=2, lr_schedule="constant")

    def fit(remaining, resume):
        model, solver, trajectories = small_setup()
        windows, given = WindowSet.build(trajectories, 3), iter(remaining)
        trainer = Trainer(model, solver, [RolloutLoss(steps=2)], lambda *_: next(given), config,
                          checkpoint_file=tmp_path / "checkpoint.pt")
        return trainer.fit(windows, windows, 0.1, resume=resume), model

    straight, model = fit(scores, resume=False)
    resumed, again = fit(scores[4:], resume=True)
    assert (straight.epochs_run, straight.best_epoch, straight.stopped_early) == (4, 2, True)
    assert (resumed.epochs_run, resumed.best_epoch, resumed.stopped_early, resumed.resumed_from) == (4, 2, True, 4)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])


def test_a_batch_moves_only_the_segment_starts_of_its_own_windows():
    """AdamW moved every correction at every step (its moments, its weight decay): after one step on the
    first window, three steps on the last moved the first window's corrections on, by ~2.6x the first."""
    model, solver, trajectories = small_setup()
    windows = WindowSet.build(trajectories, 5, stride=4)  # windows from samples 0 and 4 of each member
    term = MultipleShootingLoss(steps=4, n_segments=2, continuity_weight=1.0, trajectory_shape=tuple(trajectories.shape),
                                rtol=1e-6, atol=1e-8)
    config = TrainingConfig(epochs=1, batch_size=1, checkpoint_every=0, patience=0, lr_schedule="constant",
                            learning_rate=1e-2, weight_decay=0.1)
    trainer = Trainer(model, solver, [term], lambda *_: 1.0, config)

    def step(i: int) -> None:
        index = torch.tensor([i])
        values = term(model, solver, Batch(windows.gather(index), 0.1, windows.starts[index]), 0)
        trainer.steps.zero_grad()
        sum(value * weight for value, weight in values.values()).backward()
        assert trainer.steps.finite_gradient()
        trainer.steps.step()

    (member, first), (last_member, last_first) = windows.starts[0].tolist(), windows.starts[-1].tolist()
    step(0)
    moved = term.corrections[member, first + 2].detach().clone()
    assert moved.abs().min() > 0 and term.corrections.count_nonzero() == moved.numel()  # only its own start
    for _ in range(3):
        step(len(windows) - 1)
    torch.testing.assert_close(term.corrections[member, first + 2], moved, rtol=0, atol=0)
    assert term.corrections[last_member, last_first + 2].abs().min() > 0
    assert term.corrections.count_nonzero() == 2 * moved.numel()


class GradientOverflow:
    """A term whose value is finite (0) but whose gradient is not (sqrt at 0) in the first ``batches``."""
    name = "overflow"

    def __init__(self, batches: int):
        self.batches = batches

    def __call__(self, model, solver, batch, epoch):
        self.batches -= 1
        if self.batches < 0:
            return {}
        return {self.name: Weighted(torch.sqrt(0.0 * sum(p.sum() for p in model.parameters())), 1.0)}


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_a_finite_loss_whose_gradient_is_not_finite_is_skipped_not_stepped(clip):
    """Only the loss was checked: the step wrote NaN into every weight (clipping turns inf into NaN)."""
    model, solver, trajectories = small_setup()
    windows = WindowSet.build(trajectories, 3)
    config = TrainingConfig(epochs=1, batch_size=8, checkpoint_every=0, patience=0, lr_schedule="constant",
                            gradient_clip=clip)
    result = Trainer(model, solver, [RolloutLoss(steps=2), GradientOverflow(batches=1)], lambda *_: 1.0,
                     config).fit(windows, windows, 0.1)
    assert result.history[0]["skipped_batches"] == 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with pytest.raises(FloatingPointError, match=r"every batch gave a non-finite loss \(non-finite terms: the gradient\)"):
        Trainer(model, solver, [RolloutLoss(steps=2), GradientOverflow(batches=100)], lambda *_: 1.0,
                config).fit(windows, windows, 0.1)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_multiple_shooting_checkpoint_of_an_earlier_version_is_refused_naming_why(tmp_path):
    """Its optimiser state held the segment starts in AdamW's group: refused with the fix, not a torch error."""
    from hybridnde.io import ResumeRefused
    from hybridnde.training.checkpoint import save_checkpoint

    model, solver, trajectories = small_setup()
    windows = WindowSet.build(trajectories, 5)
    term = MultipleShootingLoss(steps=4, n_segments=2, continuity_weight=1.0, trajectory_shape=tuple(trajectories.shape))
    config = TrainingConfig(epochs=2, batch_size=8, checkpoint_every=1, patience=0, lr_schedule="constant")
    trainer = Trainer(model, solver, [term], lambda *_: 1.0, config, checkpoint_file=tmp_path / "c.pt")
    state = trainer._state(1, {"val_loss": 1.0, "epoch": 1, "state": None}, 0, [])
    del state["sparse_optimizer"]
    save_checkpoint(tmp_path / "c.pt", state, fingerprint="")
    with pytest.raises(ResumeRefused, match=r"c.pt: cannot resume: written by an earlier hybridnde, whose multiple "
                                            r"shooting moved every segment start at every step; rerun without --resume"):
        trainer.fit(windows, windows, 0.1, resume=True)
