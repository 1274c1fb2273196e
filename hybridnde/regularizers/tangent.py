"""Jacobian-vector products of a closure, ``J_C(u) v`` for a batch of probes, by forward-mode autodiff.

Three exact ways, all differentiable with respect to the closure's parameters (ordinary autograd
runs through them, so a penalty on ``J_C v`` has parameter gradients):

* ``"tangent"``: the tangent is pushed through the network's layers alongside one forward pass
  (``z = W h + b -> dz = W dh``; ``h = s(z) -> dh = s'(z) dz``). The primal runs once for all
  ``P`` probes; only the tangents carry the probe dimension. Works for ``MLPClosure`` and
  ``PeriodicCNNClosure`` (the layers ``models.py`` builds); the fastest (see
  benchmarks/experiments/jacobian_regularization.py --timing).
* ``"vmap"``: ``torch.func.vmap`` over the probes of ``torch.func.jvp`` (any closure).
* ``"stacked"``: one ``torch.func.jvp`` with the primal repeated once per probe (any closure).

``"auto"`` picks ``"tangent"`` when every layer is known, else ``"vmap"``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from ..models import MLPClosure, PeriodicCNNClosure, periodic_halo

__all__ = ["closure_jvp", "JVP_METHODS", "supports_tangent"]

JVP_METHODS = ("auto", "tangent", "vmap", "stacked")

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _activation_derivative(layer: nn.Module, z: Tensor, h: Tensor) -> Tensor:
    """``s'(z)`` of an elementwise activation ``h = s(z)`` (reusing ``h`` where that is cheaper)."""
    if isinstance(layer, nn.Tanh):
        return 1.0 - h * h
    if isinstance(layer, nn.ReLU):
        return (z > 0).to(z.dtype)
    if isinstance(layer, nn.SiLU):
        sigmoid = torch.sigmoid(z)
        return sigmoid * (1.0 + z * (1.0 - sigmoid))
    if isinstance(layer, nn.Softplus):  # torch: linear above threshold / beta
        return torch.where(z * layer.beta > layer.threshold, torch.ones_like(z), torch.sigmoid(z * layer.beta))
    if isinstance(layer, nn.ELU):  # h = alpha (e^z - 1) below 0, so h' = h + alpha there
        return torch.where(z > 0, torch.ones_like(z), h + layer.alpha)
    if isinstance(layer, nn.GELU) and layer.approximate == "none":  # h = z Phi(z)
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
    raise TypeError(f"no tangent rule for {layer!r}")


_ACTIVATIONS = (nn.Tanh, nn.ReLU, nn.SiLU, nn.Softplus, nn.ELU)


def _known_layer(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    if isinstance(layer, nn.Conv1d):  # unpadded: PeriodicCNNClosure wraps its input once (models.periodic_halo)
        return layer.padding == (0,) and layer.stride == (1,) and layer.dilation == (1,) and layer.groups == 1
    if isinstance(layer, nn.GELU):
        return layer.approximate == "none"
    return isinstance(layer, _ACTIVATIONS)


def supports_tangent(closure: Callable) -> bool:
    """Whether ``closure`` is a model whose layers the ``"tangent"`` method knows, computed by the
    model's own ``forward`` with no hooks (a subclass that overrides it -- an added term, a use of
    ``t`` -- or a forward hook changing the output is not: the tangent would follow only the layers and
    silently miss the rest)."""
    return (isinstance(closure, (MLPClosure, PeriodicCNNClosure))
            and type(closure).forward in (MLPClosure.forward, PeriodicCNNClosure.forward)
            and not (closure._forward_hooks or closure._forward_pre_hooks)
            and isinstance(closure.net, nn.Sequential) and all(_known_layer(layer) for layer in closure.net))


def _conv_tangent(layer: nn.Conv1d, dh: Tensor) -> Tensor:
    """The convolution without its bias on tangents ``dh: (P, batch, channels, n)``."""
    leading = dh.shape[:2]
    flat = functional.conv1d(dh.reshape(-1, *dh.shape[2:]), layer.weight, dilation=layer.dilation)
    return flat.reshape(*leading, *flat.shape[1:])


def _tangent_jvp(closure: MLPClosure | PeriodicCNNClosure, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(C(u), J_C(u) v)`` with ``u: (batch, *state)``, ``v: (P, batch, *state)``."""
    field = isinstance(closure, PeriodicCNNClosure)
    h = (u - closure.input_shift) / closure.input_scale
    dh = v / closure.input_scale
    if field:  # (batch, n) -> (batch, 1, n + 2 halo): one input channel, wrapped as the forward does
        h, dh = periodic_halo(h, closure.halo).unsqueeze(-2), periodic_halo(dh, closure.halo).unsqueeze(-2)
    for layer in closure.net:
        if isinstance(layer, nn.Linear):
            h, dh = layer(h), functional.linear(dh, layer.weight)
        elif isinstance(layer, nn.Conv1d):
            h, dh = layer(h), _conv_tangent(layer, dh)
        else:
            z = h
            h = layer(z)
            dh = _activation_derivative(layer, z, h) * dh
    if field:
        h, dh = h.squeeze(-2), dh.squeeze(-2)
    return h * closure.output_scale + closure.output_shift, dh * closure.output_scale


def closure_jvp(closure: Callable[[Tensor, Tensor], Tensor], t: Tensor, u: Tensor, v: Tensor, *,
                method: str = "auto") -> Tensor:
    """``J_C(u) v`` for every probe: ``u: (batch, *state)``, ``v: (P, batch, *state)`` -> ``(P, batch, *state)``.

    Exact (forward-mode) and differentiable with respect to the closure's parameters; ``t`` is
    passed through unchanged (a 0-dim tensor).
    """
    if method not in JVP_METHODS:
        raise ValueError(f"method={method!r}; choose one of {JVP_METHODS}")
    if v.shape[1:] != u.shape:
        raise ValueError(f"probes have shape {tuple(v.shape)}; expected (P, *{tuple(u.shape)})")
    if method == "auto":
        method = "tangent" if supports_tangent(closure) else "vmap"
    if method == "tangent":
        if not supports_tangent(closure):
            raise TypeError(f"method='tangent' needs an MLPClosure or PeriodicCNNClosure with known layers and its own forward, "
                            f"got {type(closure).__name__}; use method='vmap'")
        block = closure.members_at_once(u, copies=v.shape[0]) if isinstance(closure, PeriodicCNNClosure) else u.shape[0]
        if block >= u.shape[0]:
            return _tangent_jvp(closure, u, v)[1]
        # float64 on a CPU: members in blocks, as the closure's own forward (PeriodicCNNClosure.members_at_once)
        return torch.cat([_tangent_jvp(closure, part, probes)[1]
                          for part, probes in zip(u.split(block), v.split(block, dim=1))], dim=1)

    def along(x: Tensor) -> Tensor:
        return closure(t, x)

    if method == "vmap":
        return torch.func.vmap(lambda probe: torch.func.jvp(along, (u,), (probe,))[1])(v)
    probes = v.shape[0]
    stacked = u.unsqueeze(0).expand_as(v).reshape(-1, *u.shape[1:])
    _, jv = torch.func.jvp(along, (stacked,), (v.reshape(-1, *u.shape[1:]),))
    return jv.reshape(probes, *u.shape)
