"""Progress bars that show on a terminal and stay silent in logs, CI and non-zero MPI ranks."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

__all__ = ["progress_bar", "progress_enabled"]


def progress_enabled(enabled: bool | None = None) -> bool:
    """``None`` means: only when stderr is a terminal."""
    return sys.stderr.isatty() if enabled is None else enabled


def progress_bar(iterable: Iterable[T] | None = None, *, total: int | None = None, description: str = "",
                 enabled: bool | None = None, unit: str = "it"):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=description, unit=unit, disable=not progress_enabled(enabled),
                dynamic_ncols=True, leave=False,
                unit_scale=bool(total and total >= 100_000))  # 10.9M/20.0M, 4.44M member-step/s; epochs 3/20
