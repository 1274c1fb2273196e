"""Random probe directions for Hutchinson-type estimates of Jacobian norms.

For a matrix ``A`` and probes ``v`` with ``E[v v^T] = I`` (standard Gaussian or Rademacher entries),
``E ||A v||^2 = ||A||_F^2`` (Hutchinson 1990). With ``B = A^T A`` the variance of one sample
``v^T B v`` is ``2 (||B||_F^2 - sum_i B_ii^2)`` for Rademacher and ``2 ||B||_F^2`` for Gaussian
probes (Avron & Toledo 2011), so Rademacher probes are never worse.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["PROBE_DISTRIBUTIONS", "ProbeSampler", "draw_probes", "generator_state", "load_generator_state",
           "random_directions", "unit_rows"]

PROBE_DISTRIBUTIONS = ("gaussian", "rademacher")

log = logging.getLogger(__name__)


def draw_probes(shape: Sequence[int], *, count: int, distribution: str = "gaussian",
                normalize: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Tensor:
    """``count`` probes for states of ``shape = (batch, *state)``: returns ``(count, batch, *state)``.

    Each probe has i.i.d. entries, standard normal (``"gaussian"``) or +-1 (``"rademacher"``), so that
    ``E[v v^T] = I`` over the state. With ``normalize`` every probe is scaled to unit 2-norm over the
    state dimensions; then ``E[v v^T] = I / n`` exactly for both laws (Rademacher probes all have
    norm ``sqrt(n)``; normalised Gaussian ones are uniform on the sphere) and the estimates are of
    ``||A||_F^2 / n``.

    ``generator`` must live on ``device`` (``torch.Generator(device=...)``); draws are then
    reproducible on that device.
    """
    if distribution not in PROBE_DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; choose one of {PROBE_DISTRIBUTIONS}")
    if count < 1:
        raise ValueError(f"count={count} must be at least 1")
    full_shape = (count, *shape)
    if distribution == "gaussian":
        probes = torch.randn(full_shape, generator=generator, device=device, dtype=dtype)
    else:
        bits = torch.randint(0, 2, full_shape, generator=generator, device=device, dtype=torch.int8)
        probes = bits.to(dtype).mul_(2.0).sub_(1.0)
    if normalize:
        state_dims = tuple(range(2, probes.ndim))
        probes = probes / probes.norm(dim=state_dims, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return probes


class ProbeSampler:
    """Seeded probe source on a device: ``sampler(u) -> (count, *u.shape)`` probes like ``u``.

    Its generator state is part of a training checkpoint (``state_dict``/``load_state_dict``), so a
    resumed run draws the same probes as an uninterrupted one.
    """

    def __init__(self, *, count: int, distribution: str = "gaussian", normalize: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu"):
        if distribution not in PROBE_DISTRIBUTIONS:
            raise ValueError(f"distribution={distribution!r}; choose one of {PROBE_DISTRIBUTIONS}")
        self.count = int(count)
        self.distribution = distribution
        self.normalize = bool(normalize)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))

    def __call__(self, u: Tensor) -> Tensor:
        # a GPU's index must match ("cuda" without one draws on the current device); a CPU's never does
        index = self.device.index if self.device.type == "cuda" else None
        if u.device.type != self.device.type or (index is not None and u.device.index != index):
            raise ValueError(f"ProbeSampler draws on {self.device} but u is on {u.device}; "
                             f"build it with ProbeSampler(..., device=u.device)")
        return draw_probes(u.shape, count=self.count, distribution=self.distribution, normalize=self.normalize,
                           generator=self.generator, device=u.device, dtype=u.dtype)

    def state_dict(self) -> dict[str, Tensor | str]:
        return {"generator": self.generator.get_state(), "device_type": self.device.type}

    def load_state_dict(self, state: dict[str, Tensor | str]) -> None:
        """The stream where it was; a state from another kind of device (a CPU generator's 5056 bytes, a
        GPU's 16: a training checkpoint resumed elsewhere) seeds the stream from its bytes instead, so
        every such resume draws the same probes, though not the uninterrupted run's."""
        saved = state["generator"]
        written_on = state.get("device_type", self.device.type)  # older checkpoints: not recorded
        if written_on == self.device.type and saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
            return
        digest = hashlib.sha256(saved.cpu().numpy().tobytes()).digest()
        self.generator.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        log.warning("the probes' random stream was saved on %s and goes on on %s: it continues from a seed taken "
                    "from the saved state, so the probes differ from an uninterrupted run's", written_on,
                    self.device.type)

    def __repr__(self) -> str:
        return (f"ProbeSampler(count={self.count}, distribution={self.distribution!r}, "
                f"normalize={self.normalize})")


def unit_rows(v: Tensor) -> Tensor:
    """Unit rows of ``v: (batch, n)`` (a zero row stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def random_directions(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None,
                      distribution: str = "gaussian") -> Tensor:
    """Probe vectors drawn on the CPU (same numbers on every device) and moved to ``like``'s device."""
    if distribution == "rademacher":
        draw = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(like.dtype) * 2 - 1
    else:
        draw = torch.randn(shape, generator=generator, dtype=like.dtype)
    return draw.to(like.device)


def generator_state(generator: torch.Generator | None) -> dict[str, Tensor]:
    """A random stream for checkpoints (``None``: torch's global one, which the trainer keeps itself)."""
    return {} if generator is None else {"generator": generator.get_state()}


def load_generator_state(generator: torch.Generator | None, state: dict[str, Tensor]) -> None:
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
