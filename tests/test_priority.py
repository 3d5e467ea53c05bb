"""Background threads run at a lower CPU priority than the training threads (priority.py)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from slimtrack.config import RuntimeConfig, build_config
from slimtrack.errors import UserError
from slimtrack.runtime.priority import lower_this_thread_priority

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _nice_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def _in_a_thread(increment: int | None) -> tuple[int | None, int, int]:
    """(what lower_this_thread_priority returned, the thread's nice before, after) in a new thread."""
    out: dict[str, int | None] = {}

    def body() -> None:
        me = threading.get_native_id()
        out["before"] = _nice_of(me)
        out["returned"] = lower_this_thread_priority(increment)
        out["after"] = _nice_of(me)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return out["returned"], out["before"], out["after"]


@linux_only
def test_only_the_calling_thread_gets_nicer() -> None:
    main_before = _nice_of(threading.get_native_id())
    returned, before, after = _in_a_thread(5)
    assert after == min(19, before + 5) == returned
    assert _nice_of(threading.get_native_id()) == main_before  # the training thread is untouched


@linux_only
def test_increment_zero_changes_nothing() -> None:
    returned, before, after = _in_a_thread(0)
    assert returned is None and after == before


def test_the_setting_is_a_config_field_logged_with_the_run() -> None:
    assert build_config("test", background_nice=3).as_params()["runtime.background_nice"] == "3"
    with pytest.raises(UserError, match="background-nice"):  # never raise a priority
        RuntimeConfig(background_nice=-4)
    with pytest.raises(UserError, match="background-nice"):
        RuntimeConfig(background_nice=20)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_a_process_at_idle_priority_is_moved_to_the_normal_class_with_every_thread():
    """The export process waits at SCHED_IDLE; once the run awaits it, all its threads leave it."""
    import subprocess

    from slimtrack.runtime.priority import leave_idle_priority

    code = ("import os, threading, time; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); "
            "threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); print('ready', flush=True); "
            "time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        threads = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(threads) == 2 and all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in threads)
        leave_idle_priority(child.pid, 7)
        assert all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in threads)
        assert all(os.getpriority(os.PRIO_PROCESS, t) == 7 for t in threads)
    finally:
        child.kill()
        child.wait()
