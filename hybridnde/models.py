"""Neural closures: ``torch.nn.Module``s with ``forward(t, u) -> du_dt`` (the solvers' closure hook).

* ``MLPClosure`` for ODE states ``u: (batch, n_components)``;
* ``PeriodicCNNClosure`` for fields on a periodic grid ``u: (batch, n)``: periodic convolutions keep
  it equivariant to translations of the grid, and scalar normalisation keeps that true.

Input and output normalisation are buffers, saved with the weights. ``spec`` holds the constructor
arguments, so a saved closure can be rebuilt without the code that trained it. Both are TorchScript
compatible (``torch.jit.script``).
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLPClosure", "PeriodicCNNClosure", "periodic_halo", "ACTIVATIONS", "MODEL_KINDS", "build_model", "model_from_spec"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "softplus": nn.Softplus, "elu": nn.ELU,
}


def _checked_activation(name: str) -> str:
    """``name``, or ``ValueError`` naming the choices (also where no layer takes it: ``depth = 0``, whose
    spec would store a name no later model could be built with)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r}; choose one of {sorted(ACTIVATIONS)}")
    return name


def _activation(name: str) -> nn.Module:
    return ACTIVATIONS[_checked_activation(name)]()


class _Normalized(nn.Module):
    """Shared normalisation: ``out = output_scale * net((u - input_shift) / input_scale) + output_shift``."""

    __jit_ignored_attributes__ = ["spec"]  # plain-Python metadata, not part of the scripted graph

    def __init__(self, feature_shape: Sequence[int]):
        super().__init__()
        self.register_buffer("input_shift", torch.zeros(*feature_shape))
        self.register_buffer("input_scale", torch.ones(*feature_shape))
        self.register_buffer("output_shift", torch.zeros(*feature_shape))
        self.register_buffer("output_scale", torch.ones(*feature_shape))

    @torch.no_grad()
    def set_normalization(self, *, input_shift: Tensor, input_scale: Tensor, output_shift: Tensor,
                          output_scale: Tensor) -> None:
        """Set the statistics (broadcastable to the buffers); scales are floored away from zero."""
        for name, value in (("input_shift", input_shift), ("input_scale", input_scale),
                            ("output_shift", output_shift), ("output_scale", output_scale)):
            buffer = getattr(self, name)
            value = torch.as_tensor(value, dtype=buffer.dtype, device=buffer.device).expand_as(buffer)
            if name.endswith("scale"):
                value = value.clamp_min(1e-8)
            buffer.copy_(value)


class MLPClosure(_Normalized):
    """Fully connected closure for ODE states.

    Args:
        state_dim: number of state components ``n``.
        width: hidden units per layer (Janvier et al. use 200).
        depth: hidden layers.
    Shapes: ``u: (batch, n) -> (batch, n)``. Autonomous: ``t`` is accepted and ignored.
    """

    def __init__(self, *, state_dim: int, width: int = 200, depth: int = 2, activation: str = "tanh"):
        state_dim, width, depth = _check_sizes(state_dim=state_dim, width=width, depth=depth).values()
        activation = _checked_activation(activation)
        super().__init__((state_dim,))
        self.spec = {"kind": "mlp", "state_dim": state_dim, "width": width, "depth": depth,
                                     "activation": activation}
        layers: list[nn.Module] = []
        features = state_dim
        for _ in range(depth):
            layers += [nn.Linear(features, width), _activation(activation)]
            features = width
        layers.append(nn.Linear(features, state_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # (TorchScript skips this branch: exported closures keep torch's error)
            _check_state_dim(u, self.input_shift.shape[-1])
        z = (u - self.input_shift) / self.input_scale
        return self.net(z) * self.output_scale + self.output_shift


def _check_state_dim(u: Tensor, state_dim: int) -> None:
    if u.shape[-1] != state_dim:  # else a broadcasting error deep in torch
        raise ValueError(f"MLPClosure(state_dim={state_dim}) got u of shape {tuple(u.shape)}: build it with "
                         f"state_dim={u.shape[-1]}")


def _check_sizes(**sizes: int) -> dict[str, int]:
    """The sizes as Python ints (numpy's integers too); ``ValueError`` naming the first that cannot build
    a network (depth may be 0: one layer)."""
    checked = {}
    for name, value in sizes.items():
        least = 0 if name == "depth" else 1
        try:
            checked[name] = operator.index(value)
        except TypeError:
            checked[name] = None
        if checked[name] is None or isinstance(value, bool) or checked[name] < least:
            raise ValueError(f"{name}={value!r} must be an integer >= {least}")
    return checked


#: the size of the unfolded input (torch's im2col buffer) a float64 CPU convolution gets per block of
#: members; 2-4 MiB measured alike, on a 2-core AMD EPYC (1 MiB L2 a core; benchmarks/periodic_cnn_blocks.py)
UNFOLD_BLOCK_BYTES = 4 * 2**20


class PeriodicCNNClosure(_Normalized):
    """Translation-equivariant closure for periodic 1-D fields: periodic convolutions.

    The input is wrapped around once by the whole receptive field's half-width (``halo`` points each
    side) and every convolution then runs unpadded, each shrinking the field by ``kernel_size - 1``:
    the same function as circularly padding every layer, with one copy a forward instead of one per
    layer (circular padding copies each layer's input, mostly hidden channels): forward + backward 13-26%
    cheaper on a CPU, a forward 1-22% (channels 16-32, N = 64-256; benchmarks/periodic_cnn_halo.py).

    Float64 on a CPU runs the members in blocks (``members_at_once``): torch's float64 convolutions
    there unfold their whole input at once (im2col; oneDNN takes float32, not float64), and for a
    large batch that buffer streams through memory. Blocks of a few MiB: a forward 1.2-1.8x faster,
    forward + backward 1.1-1.4x, the exact regulariser's tangents + backward 1.3-2.9x, for unfolded
    inputs of 10-84 MiB (benchmarks/periodic_cnn_blocks.py). The values are the whole batch's: bit for
    bit at even grid sizes; at odd ones a member's last bits depend on where it sits in memory (in the
    convolution and the activations' vector loops), in a block as they did in the whole batch.

    Args:
        channels: hidden channels per layer.
        depth: hidden convolution layers (each followed by the activation).
        kernel_size: odd width of every convolution; the receptive field is
            ``(depth + 1) * (kernel_size - 1) + 1`` grid points.
    Shapes: ``u: (batch, n) -> (batch, n)``; normalisation statistics are scalars.
    """

    def __init__(self, *, channels: int = 32, depth: int = 2, kernel_size: int = 5, activation: str = "tanh"):
        channels, depth, kernel_size = _check_sizes(channels=channels, depth=depth, kernel_size=kernel_size).values()
        activation = _checked_activation(activation)
        super().__init__((1,))
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd (centred stencils keep the grid aligned)")
        self.spec = {"kind": "periodic_cnn", "channels": channels, "depth": depth, "kernel_size": kernel_size,
                     "activation": activation}
        self.halo = (depth + 1) * (kernel_size // 2)
        layers: list[nn.Module] = []
        features = 1
        for _ in range(depth):
            layers += [nn.Conv1d(features, channels, kernel_size), _activation(activation)]
            features = channels
        layers.append(nn.Conv1d(features, 1, kernel_size))
        self.net = nn.Sequential(*layers)
        self.unfolded_rows = (channels if depth else 1) * kernel_size  # the widest layer's im2col rows
        self.unfold_block_bytes = UNFOLD_BLOCK_BYTES  # an attribute: TorchScript reads no module globals

    def members_at_once(self, u: Tensor, copies: int = 1) -> int:
        """How many members of ``u: (batch, n)`` one pass through the layers takes, with ``copies``
        fields a member (the tangent method pushes one a probe): all of them, except for float64 on a
        CPU, where equal blocks keep the widest layer's unfolded input near ``unfold_block_bytes``."""
        members = u.shape[0]
        if members == 0 or u.dim() != 2 or u.dtype != torch.float64 or u.device.type != "cpu":
            return members  # an empty batch too: an MPI rank may get none
        member_bytes = max(1, self.unfolded_rows * (u.shape[-1] + 2 * self.halo) * u.element_size() * copies)
        blocks = -(-members // max(1, self.unfold_block_bytes // member_bytes))
        return -(-members // blocks)

    def forward(self, t: Tensor, u: Tensor) -> Tensor:
        z = periodic_halo((u - self.input_shift) / self.input_scale, self.halo).unsqueeze(-2)
        block = self.members_at_once(u)
        if block < z.shape[0]:
            y = torch.cat([self.net(part) for part in z.split(block)])
        else:
            y = self.net(z)
        return y.squeeze(-2) * self.output_scale + self.output_shift


def periodic_halo(z: Tensor, width: int) -> Tensor:
    """``z: (..., n) -> (..., n + 2 width)``: the periodic field with ``width`` points of its other end
    on each side (``width`` may exceed ``n``: the field then wraps more than once)."""
    n = z.shape[-1]
    if width <= n:  # one concatenation: a single copy kernel
        return torch.cat([z[..., n - width:], z, z[..., :width]], dim=-1)
    index = torch.remainder(torch.arange(-width, n + width, device=z.device), n)
    return z.index_select(-1, index)


MODEL_KINDS = {"mlp": MLPClosure, "periodic_cnn": PeriodicCNNClosure}


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild an (untrained) closure from its ``spec``."""
    arguments = dict(spec)
    kind = arguments.pop("kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown closure kind {kind!r}; known: {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**arguments)


def build_model(config, *, state_shape: Sequence[int], device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float64) -> nn.Module:
    """The closure a ``ModelConfig`` describes (``kind`` resolved by ``parse_case``), for states of
    ``state_shape``."""
    if config.kind == "mlp":
        model = MLPClosure(state_dim=int(state_shape[-1]), width=config.width, depth=config.depth,
                           activation=config.activation)
    else:
        model = PeriodicCNNClosure(channels=config.width, depth=config.depth, kernel_size=config.kernel_size,
                                   activation=config.activation)
    return model.to(device=device, dtype=dtype)
