"""Interruptions: SIGTERM stops the work as Ctrl-C does, and both are held while the NetCDF library runs.

The library swallows a ``KeyboardInterrupt`` raised inside a read (20 of 20 Ctrl-C lost reading a 50 MB
file: the command went on as if nothing had happened, and a scheduler's SIGTERM ended in its SIGKILL),
and one raised inside a write left xarray's lock taken (the process hung at close). So around the
library's work the signals are only recorded, and raised once it is done.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["interrupt_on_signal", "interrupts_deferred"]


def interrupt_on_signal(signum: int, frame) -> None:
    """A signal handler that raises ``KeyboardInterrupt`` named for the signal (``hybridnde`` installs it
    for SIGTERM, a scheduler's time limit: the checkpoint and partial file stay consistent)."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then raise the ``KeyboardInterrupt`` the first one
    received would have raised. Only signals that raise it are held: one ignored, or handled by a host
    application, is theirs to decide; outside the main thread no handler runs anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {number: handler for number in (signal.SIGINT, signal.SIGTERM)
            if (handler := signal.getsignal(number)) in (signal.default_int_handler, interrupt_on_signal)}
    received: list[int] = []
    for number in held:
        signal.signal(number, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for number, handler in held.items():
            signal.signal(number, handler)
        if received:
            held[received[0]](received[0], None)
