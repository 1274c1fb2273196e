"""What the trainer steps and how: AdamW over the model's parameters and the loss terms' own
(``term.parameters()``), and a lazy Adam (``torch.optim.SparseAdam``) over tables whose rows a batch
gathers with sparse gradients (``term.sparse_parameters()``: multiple shooting's segment starts), so
that the rows a batch does not gather keep still -- AdamW's moments and weight decay moved every row
at every step, a correction seen once by up to ~10x that step's move. The gathered rows take AdamW's
decoupled weight decay, as before: a batch of every window steps them as AdamW did (up to where Adam's
``eps`` is added)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..config import TrainingConfig
from ..errors import ResumeRefused

__all__ = ["ParameterSteps"]


class ParameterSteps:
    """The trainable parameters (``all``: dense, then sparse) and their optimisers (``optimizers``)."""

    def __init__(self, model: nn.Module, terms: Sequence[Any], config: TrainingConfig):
        self.dense = list(model.parameters()) + [p for term in terms for p in getattr(term, "parameters", tuple)()]
        self.sparse = [p for term in terms for p in getattr(term, "sparse_parameters", tuple)()]
        self.all = self.dense + self.sparse
        self.adamw = torch.optim.AdamW(self.dense, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.lazy = torch.optim.SparseAdam(self.sparse, lr=config.learning_rate) if self.sparse else None
        self.optimizers = [self.adamw] + ([self.lazy] if self.lazy else [])
        self.gradient_clip, self.weight_decay = config.gradient_clip, config.weight_decay

    def zero_grad(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def set_learning_rate(self, rate: float) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = rate

    def finite_gradient(self) -> bool:
        """Whether every gradient is finite (a finite loss can overflow backward: a step would then write
        NaN into every weight); the dense ones clipped to ``gradient_clip`` on the way, when it is set."""
        if self.gradient_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.dense, self.gradient_clip)
        else:
            grads = [p.grad for p in self.dense if p.grad is not None]
            norm = (torch.stack([g.detach().norm().to(torch.float64) for g in grads]).norm() if grads
                    else torch.zeros(()))  # (nn.utils.get_total_norm: torch >= 2.6 only)
        finite = torch.isfinite(norm)
        for p in self.sparse:
            if p.grad is not None:
                p.grad = p.grad.coalesce()  # once: the decay's rows and SparseAdam take it as it is
                finite = finite & torch.isfinite(p.grad.values()).all()
        return bool(finite)

    def step(self) -> None:
        self.adamw.step()
        if self.lazy is None:
            return
        rate = self.lazy.param_groups[0]["lr"]
        with torch.no_grad():  # AdamW's decoupled decay, on the rows the batch gathered (SparseAdam has none)
            for p in self.sparse:  # (coalesce: a no-op after finite_gradient, which the trainer calls first)
                if p.grad is not None and self.weight_decay:
                    p[p.grad.coalesce().indices()[0]] *= 1.0 - rate * self.weight_decay
        self.lazy.step()

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's entries: ``optimizer`` (AdamW's, as before there was a lazy one) and
        ``sparse_optimizer``."""
        return {"optimizer": self.adamw.state_dict(), **({"sparse_optimizer": self.lazy.state_dict()} if self.lazy else {})}

    def load_state_dict(self, state: dict[str, Any], checkpoint: Path | None) -> None:
        if self.lazy is not None and "sparse_optimizer" not in state:
            raise ResumeRefused(f"{checkpoint}: cannot resume: written by an earlier hybridnde, whose multiple shooting "
                                "moved every segment start at every step", "rerun without --resume")
        self.adamw.load_state_dict(state["optimizer"])
        if self.lazy is not None:
            self.lazy.load_state_dict(state["sparse_optimizer"])
