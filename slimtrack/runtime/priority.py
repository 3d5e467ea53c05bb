"""Background work at a lower CPU priority than the training threads.

On a CPU run the training step keeps every core busy: torch's OpenMP team (and numba's
kernels on it) spins between parallel regions. A background thread that wakes up at the
default priority (a dashboard render, an MLflow delivery) preempts one of the team's
threads, and the whole team waits for it at the next barrier. A higher nice value lets
the step run first while the background work still gets a share of a contended core;
at the highest nice values it can starve until the run ends.

Linux only (a thread is a task with its own nice value there); elsewhere, or with an
increment of 0 (``--background-nice 0``), a no-op.
"""

from __future__ import annotations

import os
import sys
import threading

MAX_NICE = 19


def lower_this_thread_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by ``increment``.

    Returns the thread's new nice value, or None where nothing changed (not Linux,
    increment 0, or the system refused). Raising a nice value needs no privilege; only
    this thread changes, never the process or the training threads."""
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


def run_this_thread_when_idle() -> bool:
    """Put the calling thread in Linux's SCHED_IDLE class: it runs only on CPU time no other
    thread wants, so work that can wait (exporting the model ahead of the run's end) never
    takes a core from the training threads, whatever its nice value would allow. Elsewhere,
    or when refused, the thread gets the highest nice value instead. Returns whether
    SCHED_IDLE took."""
    thread = threading.get_native_id()
    try:
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        return True
    except (AttributeError, OSError):
        lower_this_thread_priority(MAX_NICE)
        return False


def leave_idle_priority(pid: int, nice: int) -> None:
    """Move every thread of the process ``pid`` (one of this user's) out of SCHED_IDLE, to the
    normal class at ``nice``: work that waited for idle CPU time is now awaited, and must not
    starve behind a busy machine. Where that is refused, or not Linux, nothing changes."""
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for thread in threads:
        try:
            os.sched_setscheduler(thread, os.SCHED_OTHER, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICE, max(0, nice)))
        except (AttributeError, OSError):
            continue
