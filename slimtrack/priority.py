"""Background threads at a lower CPU priority than the training threads.

On a CPU run the training step keeps every core busy: torch's OpenMP team (and numba's
kernels on it) spins between parallel regions. A background thread that wakes up at
the default priority (the dashboard render, ~0.6 s of CPU every viz interval; the MLflow
delivery) preempts one of the team's threads, and the whole team waits for it at the
next barrier. Measured on 2 cores (small preset): a render on a thread cost the loop
~1.0-1.2 s of wall time at nice 0 and ~0.7-0.8 s at nice 10 (the dashboard now renders in
a child process, renderer.py, at the same nice). At nice 10 the work still gets ~10 % of
a contended core, so a render finishes within seconds; at nice 19 it starved until the
run ended.

Linux only (a thread is a task with its own nice value there); elsewhere, or with
``SLIMTRACK_BACKGROUND_NICE=0``, a no-op.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

DEFAULT_NICE_INCREMENT = 10
MAX_NICE = 19


def background_nice_increment() -> int:
    """How much nicer than the process the background threads run (SLIMTRACK_BACKGROUND_NICE)."""
    value = os.environ.get("SLIMTRACK_BACKGROUND_NICE", str(DEFAULT_NICE_INCREMENT))
    try:
        return max(0, int(value))
    except ValueError:
        log.warning("SLIMTRACK_BACKGROUND_NICE=%r is not an integer; using %d", value, DEFAULT_NICE_INCREMENT)
        return DEFAULT_NICE_INCREMENT


def lower_this_thread_priority(increment: int | None = None) -> int | None:
    """Raise the calling thread's nice value by ``increment`` (default: the setting above).

    Returns the thread's new nice value, or None where nothing changed (not Linux,
    increment 0, or the system refused). Raising a nice value needs no privilege; only
    this thread changes, never the process or the training threads."""
    increment = background_nice_increment() if increment is None else increment
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        target = min(MAX_NICE, current + increment)
        os.setpriority(os.PRIO_PROCESS, thread, target)
    except OSError:
        return None
    return target
