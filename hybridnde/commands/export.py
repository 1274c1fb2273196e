"""``hybridnde export closure.pt --out closure.ts``: a TorchScript closure for C++/Fortran codes.

The archive loads with ``torch.jit.load`` (Python) or ``torch::jit::load`` (libtorch, FTorch) alone
and keeps the closure signature ``forward(t, u) -> du_dt``; see docs/closure-hook.md.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ConfigError
from ..io import check_output_path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="trained closure -> TorchScript for libtorch/FTorch",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("closure", type=Path, metavar="closure.pt", help="closure file from `hybridnde train`")
    parser.add_argument("--out", type=Path, default=None, help="TorchScript file (default: closure.pt with suffix .ts)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default=None,
                        help="precision of the exported weights (default: as trained)")
    parser.add_argument("--device", default="cpu",
                        help="device the archive's tensors live on: 'cpu' (default), 'cuda', 'cuda:N' or 'auto' (C++ can still move it)")
    parser.set_defaults(run=run)


def run(arguments: argparse.Namespace) -> int:
    import torch

    from ..export import export_closure
    from ..systems import resolve_device

    out = arguments.out or arguments.closure.with_suffix(".ts")
    if out.resolve() == arguments.closure.resolve():
        raise ConfigError(f"--out {out}: would overwrite the closure file; give another name, e.g. closure.ts")
    if out.suffix.lower() not in (".ts", ".pt", ".pth"):  # a typo would replace a truth.nc with an archive
        raise ConfigError(f"--out {out}: give a TorchScript file name ending in .ts (or .pt, .pth), e.g. "
                          "closure.ts")
    check_output_path(out)
    device = resolve_device(arguments.device, field="--device")
    dtype = getattr(torch, arguments.dtype) if arguments.dtype else None
    metadata = export_closure(arguments.closure, out, dtype=dtype, device=device)
    print(f"export: {arguments.closure} -> {out} (TorchScript, {metadata['dtype']}, weights checksum "
          f"{metadata['weights_checksum'][:12]}...; forward(t, u) -> du_dt)")
    return 0
