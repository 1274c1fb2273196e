"""How much memory a new allocation can get: what the checks before any work compare a job's needs
with. Linux overcommits, so an allocation past it does not fail: the OOM killer ends the process later,
without a message and with its files left behind."""
from __future__ import annotations

__all__ = ["available_memory"]


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (``MemAvailable``, Linux); ``None`` elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
