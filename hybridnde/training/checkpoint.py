"""Training checkpoints: everything a resumed run needs to continue bit for bit.

A checkpoint sits beside the closure file (``closure.pt`` -> ``closure.checkpoint.pt``) and the
JSON-lines log of the run (``closure.log.jsonl.partial`` until the closure is saved, then
``closure.log.jsonl``); it is written atomically and tagged with a fingerprint of the
configuration and data, so a run never resumes from a different set-up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..io import DataError, ResumeRefused, atomic_path, load_error_text

__all__ = ["FORMAT", "checkpoint_path", "log_path", "partial_log_path", "save_checkpoint", "load_checkpoint",
           "checkpoint_epoch"]

FORMAT = "hybridnde-checkpoint/1"


def checkpoint_path(closure_path: str | Path) -> Path:
    """``runs/closure.pt`` -> ``runs/closure.checkpoint.pt``."""
    closure_path = Path(closure_path)
    return closure_path.with_name(f"{closure_path.stem}.checkpoint.pt")


def log_path(closure_path: str | Path) -> Path:
    """``runs/closure.pt`` -> ``runs/closure.log.jsonl`` (DESIGN.md)."""
    closure_path = Path(closure_path)
    return closure_path.with_name(f"{closure_path.stem}.log.jsonl")


def partial_log_path(closure_path: str | Path) -> Path:
    """``runs/closure.pt`` -> ``runs/closure.log.jsonl.partial``: the log while training runs, renamed to
    ``log_path`` once the closure is saved, so that a finished closure's log is never replaced by an
    unfinished run's."""
    log = log_path(closure_path)
    return log.with_name(f"{log.name}.partial")


def save_checkpoint(path: str | Path, state: dict[str, Any], *, fingerprint: str) -> None:
    """Write ``state`` (tensors, state dicts, plain Python values) atomically."""
    with atomic_path(path) as temporary:
        torch.save({"format": FORMAT, "fingerprint": fingerprint, **state}, temporary)


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epochs a readable checkpoint holds (for messages); ``None`` when it cannot be read."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])  # (no tensor read)
    except Exception:  # (a message is not the place to diagnose it: a resume does)
        return None


def load_checkpoint(path: str | Path, *, fingerprint: str,
                    describe_change: Callable[[Mapping[str, str]], list[str]] | None = None,
                    also_accepted: Sequence[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written for the same configuration and data (``fingerprint``, or one of
    ``also_accepted``: how earlier versions fingerprinted the same set-up).

    ``DataError`` when the file is unreadable, ``ResumeRefused`` (a ``ConfigError`` too) when it belongs to
    another set-up; ``describe_change(identity)`` (the checkpoint's ``identity``, ``{}`` in an older
    one) names what changed, for the message.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle or version errors: not a usable checkpoint
        raise DataError(f"{path}: not a readable training checkpoint ({load_error_text(error)})",
                        "delete it to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} file", "delete it to start afresh")
    if state["fingerprint"] != fingerprint and state["fingerprint"] not in also_accepted:
        changed = describe_change(state.get("identity") or {}) if describe_change is not None else []
        if changed:
            raise ResumeRefused(f"{path}: cannot resume, changed since the checkpoint: {', '.join(changed)}",
                                "rerun with the same case, --set values and data, or without --resume")
        raise ResumeRefused(f"{path} was written for another configuration or data file",
                            "--resume needs the same case, overrides and data (or delete the checkpoint to start "
                            "afresh)")
    return state
