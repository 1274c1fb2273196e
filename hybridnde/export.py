"""TorchScript export of a trained closure, for C++/Fortran codes (libtorch ``torch::jit::load``, FTorch).

The exported module keeps the closure signature ``forward(t, u) -> du_dt`` (``t``: 0-dim tensor,
``u: (batch, *state)``) and carries its normalisation buffers; it needs neither Python nor
hybridnde to run. Metadata (spec, weights checksum, dtype, probe shape) travel in the archive as
``extra/hybridnde.json``. See docs/closure-hook.md.
"""
from __future__ import annotations

import contextlib
import json
import tomllib
import warnings
from pathlib import Path

import torch
from torch import nn

from .closure_file import load_closure
from .io import DataError, atomic_path

__all__ = ["export_closure", "probe_shape", "EXTRA_FILE", "AccelerationsOnly", "DtypeChecked"]

#: name of the metadata entry in the TorchScript archive (``_extra_files``)
EXTRA_FILE = "hybridnde.json"


def probe_shape(spec: dict, n_points: int = 32) -> tuple[int, ...]:
    """A state shape the closure accepts: ``(2, state_dim)`` for MLPs, ``(2, n_points)`` for periodic CNNs."""
    if spec.get("kind") == "mlp":
        return (2, int(spec["state_dim"]))
    return (2, n_points)


def _trained_state_shape(payload: dict) -> tuple[int, ...] | None:
    """The state shape per member the closure was trained on, from its case; ``None`` where none is stored."""
    if payload["spec"].get("kind") == "mlp":
        return (int(payload["spec"]["state_dim"]),)
    from .config import ConfigError, parse_case_text

    try:
        host = parse_case_text(payload.get("case_toml", ""), source="the closure's case").host_system
    except (ConfigError, ValueError, KeyError):
        return None
    n_points = getattr(host, "n_points", None)
    return None if n_points is None else (int(n_points),)


class AccelerationsOnly(nn.Module):
    """A ``second_order`` closure as its host adds it: ``P C(t, u)``, the position block zeroed.

    Its host (``solvers.SecondOrderHost``) keeps only the accelerations of the network's output;
    exported bare, a time loop adding the whole output to ``(v, 0)`` would add the network's
    untrained position block to ``dq/dt``. ``u: (batch, 2 m) -> (batch, 2 m)``.
    """

    def __init__(self, closure: nn.Module, half: int):
        super().__init__()
        self.closure = closure
        self.half = half

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        du_dt = self.closure(t, u)
        return torch.cat([torch.zeros_like(du_dt[..., : self.half]), du_dt[..., self.half:]], dim=-1)


class DtypeChecked(nn.Module):
    """``closure`` behind a check that ``u`` is in its weights' dtype: a C++ or Fortran host passing
    another precision gets this message instead of torch's "Input type (double) and bias type (float)"
    (or, for float32 input to float64 weights, a silent float64 answer)."""

    def __init__(self, closure: nn.Module, dtype: torch.dtype, device: torch.device | str = "cpu"):
        super().__init__()
        self.closure = closure
        # on the weights' device: an archive whose tensors all live on one device loads where they do
        self.register_buffer("dtype_of_weights", torch.zeros((), dtype=dtype, device=device))

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if u.dtype != self.dtype_of_weights.dtype:
            raise RuntimeError("hybridnde closure: u has another dtype than the closure's weights (see the archive's "
                               "extra/hybridnde.json 'dtype'): convert u first, or export with --dtype")
        return self.closure(t, u)


def _setup(payload: dict, closure_path: str | Path) -> str:
    """The ``hybrid.setup`` the closure was trained in (``""`` for a file saved without its case).

    Read from the TOML itself, not a validated case: a case an earlier version wrote may fail a rule
    added since, and a ``second_order`` closure exported as the bare network would be wrong."""
    text = payload.get("case_toml") or ""
    if not text:
        return ""
    try:
        hybrid = tomllib.loads(text).get("hybrid", {})
    except tomllib.TOMLDecodeError as error:
        raise DataError(f"{closure_path}: its stored case is not readable TOML ({error})") from None
    return str(hybrid.get("setup", "residual")) if isinstance(hybrid, dict) else "residual"


def export_closure(closure_path: str | Path, out: str | Path, *, dtype: torch.dtype | None = None,
                   device: torch.device | str = "cpu") -> dict:
    """Script the closure in ``closure_path`` and save it to ``out`` (atomically).

    The archive returns what the host adds to its own tendency: for a ``second_order`` closure the
    accelerations only (``AccelerationsOnly``). It is checked against the Python closure on a random
    probe before anything is written: same output bit for bit, else ``RuntimeError``. Returns the
    metadata stored with it.
    """
    out = Path(out)
    network, payload = load_closure(closure_path, device=device, dtype=dtype)
    setup = _setup(payload, closure_path)
    model = network
    if setup == "second_order":
        model = AccelerationsOnly(network, int(payload["spec"]["state_dim"]) // 2).eval()
    parameter = next(iter(network.state_dict().values()))  # the weights' dtype and device
    model = DtypeChecked(model, parameter.dtype, parameter.device).eval()
    with _torchscript_allowed():
        try:
            scripted = torch.jit.script(model)
        except Exception as error:  # a closure class TorchScript cannot compile
            raise DataError(f"{closure_path}: the closure cannot be compiled to TorchScript ({error})") from None
    state_shape = _trained_state_shape(payload)
    shape = probe_shape(payload["spec"]) if state_shape is None else (2, *state_shape)  # on the trained grid
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(shape, generator=generator, dtype=parameter.dtype).to(parameter.device)
    t = torch.zeros((), dtype=parameter.dtype, device=parameter.device)
    with torch.inference_mode():
        if not torch.equal(scripted(t, u), model(t, u)):
            raise RuntimeError(f"{closure_path}: the TorchScript closure does not reproduce the Python one")
    metadata = {"format": "hybridnde-torchscript-closure/1", "spec": payload["spec"],
                "weights_checksum": payload["checksum"], "dtype": str(parameter.dtype).replace("torch.", ""),
                "signature": "forward(t: Tensor[], u: Tensor[batch, *state]) -> Tensor[batch, *state]",
                "probe_shape": list(shape), "case_toml": payload.get("case_toml", ""),
                # per member, from the case (a periodic CNN runs on any grid, but learned this one); None unknown
                "state_shape": None if state_shape is None else list(state_shape),
                "hybrid_setup": setup,
                "output": ("the accelerations: P C(t, u), the position block zeroed (add it to (v, 0))"
                           if setup == "second_order" else "C(t, u): add it to the host's tendency")}
    with atomic_path(out) as temporary, _torchscript_allowed():
        torch.jit.save(scripted, str(temporary), _extra_files={EXTRA_FILE: json.dumps(metadata)})
    return metadata


@contextlib.contextmanager
def _torchscript_allowed():
    """Silence torch's deprecation of ``torch.jit``: recent torch prefers torch.export, but libtorch's
    ``torch::jit::load`` and FTorch read TorchScript archives only, which is the point of the export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        yield
