"""SIGKILL a subprocess at a chosen moment (the crash tests)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, delay: float, timeout: float) -> bool:
    """Wait until ``ready()`` (or the process ends, or ``timeout`` s pass), then ``delay`` s more,
    then SIGKILL the process. Returns whether it was still running when killed."""
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return alive
