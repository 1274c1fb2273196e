"""A Ctrl-C or SIGTERM while the main thread queues work for the NetCDF writer thread must not hang the
writer's ``close()`` (what ``rollout_job`` and ``simulation_job`` call on an interrupt).

The signal is sent at the one place where it hung the process (found by a mutation audit's SIGTERM test
hanging for 25 minutes): inside ``threading.Condition.notify``, after the writer's waiter was released
and before it was removed from the waiters. A KeyboardInterrupt raised there left a stale waiter that
the next ``notify`` woke instead of the writer.
"""
from __future__ import annotations

import inspect
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from hybridnde.interrupts import interrupt_on_signal
from hybridnde.netcdf_stream import TrajectoryStreamWriter

RACE_LINE = "waiters.remove(waiter)"  # in Condition.notify, after waiter.release()


def writer(tmp_path) -> TrajectoryStreamWriter:
    return TrajectoryStreamWriter(tmp_path / "r.nc", members=np.arange(2), times=np.arange(3.0),
                                  state_dim="component", state_coords=["x"], state_shape=(1,),
                                  dtype=np.dtype(np.float64), title="t", solver="s", closure_checksum="none",
                                  case_toml="", extra_attrs={}, compression_level=0, time_chunk=2)


@pytest.mark.skipif(RACE_LINE not in inspect.getsource(threading.Condition.notify),
                    reason="this Python's Condition.notify has no such line to send the signal at")
def test_a_sigterm_inside_the_queues_notify_does_not_hang_close(tmp_path):
    previous = signal.signal(signal.SIGTERM, interrupt_on_signal)  # as the hybridnde command installs it
    stream = writer(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not stream._jobs.not_empty._waiters and time.monotonic() < deadline:
            time.sleep(0.01)  # until the writer thread waits for a job
        sent = []

        def tracer(frame, event, arg):
            if frame.f_code is not threading.Condition.notify.__code__:
                return None

            def local(frame, event, arg):
                if event == "line" and not sent and RACE_LINE in inspect.getframeinfo(frame).code_context[0]:
                    sent.append(True)
                    os.kill(os.getpid(), signal.SIGTERM)
                return local
            return local

        sys.settrace(tracer)
        try:
            with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
                stream.write_encoded(object())  # any job: queued, then the signal comes
        finally:
            sys.settrace(None)
        assert sent, "the signal was never sent: the race point was not reached"
        closer = threading.Thread(target=stream.close, daemon=True)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() hangs: the writer thread never saw its stop job"
    finally:
        signal.signal(signal.SIGTERM, previous)
