"""``closure.pt``: a trained closure with everything needed to rebuild and trust it.

Contents: the model ``spec`` (architecture), its ``state_dict`` (weights and normalisation buffers),
the dtype, the case TOML it was trained on, free-form training metadata, a SHA-256 checksum of
the weights that rollouts record in their NetCDF ``source`` attribute, and a second one over what
rebuilds and places the model -- spec, dtype, case (``description_checksum``; the weights' checksum
alone let an edited activation or case load without a word). Files written before it have none and
are read as before.
"""
from __future__ import annotations

import errno
import hashlib
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .io import DataError, atomic_path
from .models import model_from_spec

__all__ = ["FORMAT", "save_closure", "load_closure", "weights_checksum", "description_checksum"]

FORMAT = "hybridnde-closure/1"


def weights_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every tensor, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")  # 0-dim too
    return digest.hexdigest()


def description_checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 over the ``spec``, ``dtype`` and ``case_toml`` of a closure file's payload (JSON, keys
    sorted; a value JSON lacks enters by its ``repr``). A file without this checksum -- older, or with
    it removed -- is read without the check: it guards against accidents, not against forgery."""
    description = json.dumps({"spec": payload["spec"], "dtype": str(payload["dtype"]),
                              "case_toml": payload.get("case_toml", "")}, sort_keys=True, default=repr)
    return hashlib.sha256(description.encode()).hexdigest()


def save_closure(path: str | Path, model: nn.Module, *, case_toml: str = "",
                 metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` to ``path`` atomically; returns the weights checksum. ``model`` is one of the
    package's closures (``hybridnde.models``: its ``spec`` rebuilds it); save any other module with
    ``torch.save`` or export it with ``torch.jit.script``."""
    if not isinstance(getattr(model, "spec", None), Mapping):
        raise TypeError(f"save_closure writes the package's closures (MLPClosure, PeriodicCNNClosure: their spec "
                        f"rebuilds them), not a {type(model).__name__}; save it with torch.save(model.state_dict(), "
                        "...) and rebuild it yourself")
    state_dict = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    checksum = weights_checksum(state_dict)
    dtype = next(iter(state_dict.values())).dtype
    payload = {"format": FORMAT, "spec": dict(model.spec), "state_dict": state_dict, "dtype": str(dtype),
               "case_toml": case_toml, "metadata": dict(metadata or {}), "checksum": checksum}
    payload["description_checksum"] = description_checksum(payload)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return checksum


def load_closure(path: str | Path, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved closure on ``device`` (in ``dtype``, default: as saved), weights verified.

    Returns ``(model, payload)``; the model is in eval mode. ``DataError`` names the problem.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder; give the closure.pt in it" if path.is_dir() else "does not exist; create it with " \
            "`hybridnde train`"
        raise DataError(f"closure file {str(path)!r} {what}")
    if _is_torchscript(path):
        raise DataError(f"{path}: an exported TorchScript closure (`hybridnde export`), for libtorch/FTorch time "
                        "loops; give the closure.pt it was exported from (written by `hybridnde train`)")
    try:
        with warnings.catch_warnings():  # torch's own warning about TorchScript-like zips: answered above
            warnings.filterwarnings("ignore", message=".*TorchScript.*")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EPERM, errno.EISDIR):  # there, but not ours to read
            raise DataError(f"{path}: cannot be read ({error.strerror or error}); check its permissions") from None
        # torch reports a truncated archive as EINVAL: the file is damaged, not locked
        raise DataError(f"{path}: damaged or truncated ({error.strerror or error}); train it again or give "
                        "another closure.pt") from None
    except Exception as error:  # pickle, zip or version errors all mean: not our file
        # torch's own text suggests weights_only=False, which is not the fix: the file is not a closure
        raise DataError(f"{path}: not a closure file ({type(error).__name__}); give a closure.pt written by "
                        "`hybridnde train`") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise DataError(f"{path}: not a {FORMAT} file (format {found!r}); give a closure.pt written by "
                        "`hybridnde train`")
    missing = [key for key in ("state_dict", "checksum", "dtype", "spec") if key not in payload]
    if missing:
        raise DataError(f"{path}: a {FORMAT} file without {', '.join(missing)}; give a closure.pt written by "
                        "`hybridnde train`")
    if weights_checksum(payload["state_dict"]) != payload["checksum"]:
        raise DataError(f"{path}: weights do not match their checksum; the file is corrupt")
    if "description_checksum" in payload and description_checksum(payload) != payload["description_checksum"]:
        raise DataError(f"{path}: its model description (spec, dtype or case) does not match its checksum; the file "
                        "was edited or is corrupt -- give the closure.pt `hybridnde train` wrote")
    weights_dtypes = {str(tensor.dtype) for tensor in payload["state_dict"].values() if tensor.is_floating_point()}
    if weights_dtypes and weights_dtypes != {str(payload["dtype"])}:
        raise DataError(f"{path}: says dtype {payload['dtype']} but holds {', '.join(sorted(weights_dtypes))} weights; "
                        "the file is corrupt")
    try:
        saved_dtype = getattr(torch, str(payload["dtype"]).replace("torch.", ""))
        # in the saved dtype first: loading float64 weights into a default float32 module would round them
        model = model_from_spec(payload["spec"]).to(dtype=saved_dtype)
        model.load_state_dict(payload["state_dict"])
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        # weights intact, description not: edited by hand, or written by another version
        raise DataError(f"{path}: its model description cannot be rebuilt ({type(error).__name__}: {error}); give a "
                        "closure.pt written by `hybridnde train` of this version") from None
    try:
        model = model.to(device=device, dtype=dtype or saved_dtype).eval()
    except (AssertionError, RuntimeError) as error:  # torch says "not compiled with CUDA" by an assertion
        raise DataError(f"{path}: cannot be placed on device {str(device)!r} ({error}); choose a device this "
                        "machine has (e.g. 'cpu')") from None
    return model, payload


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a ``torch.jit.save`` archive (a zip with the scripted ``code/``), not a pickle."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())
    except Exception:  # noqa: BLE001 -- a damaged zip raises many kinds; torch.load then judges the file
        return False
