"""DashboardRenderer: the dashboard drawn in a child process, so it never holds our GIL.

A render is ~0.5 s of mostly-Python matplotlib work. On a thread of the training process
it holds the GIL for most of that time, and the training thread, which takes the GIL back
after every torch op, waits for it again and again: on 2 cores a render cost the loop
~0.7-1 s of wall time, against ~0.5 s from a child process (docs/benchmarks.md). The
child has its own interpreter and GIL, and runs at the background priority
(priority.py).

The child is ``python -m slimtrack.renderer``, talking over its stdin and stdout (pickled
requests and replies), not a ``multiprocessing`` worker: ``spawn`` would import the
parent's ``__main__`` again in the child, and a user's script that calls ``run_training``
without an ``if __name__ == "__main__"`` guard would start a second training there. One
child per run. It keeps one ``plots.Dashboard``, and warms it up (matplotlib's import, the
axes, the fonts: ~1 s of CPU once) as soon as it starts, at normal priority, while the run
sets up; then it lowers its priority. If the child cannot start or dies, the caller's
thread renders instead (``in_process``), and the run goes on.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import pandas as pd

from slimtrack.metrics import dashboard_columns

log = logging.getLogger(__name__)


class DashboardRenderer:
    """``render(frame, samples, png_path)`` in a child process, or in the caller's thread
    when that process is unavailable. One request at a time: the viz worker renders, and
    ``wait_ready`` may be called from another thread."""

    def __init__(self, use_process: bool = True) -> None:
        self._lock = threading.Lock()  # one request/reply exchange on the pipes at a time
        self._child: subprocess.Popen | None = None
        self._local: Any = None  # a Dashboard of our own once we render in-process
        if use_process:
            try:
                self._child = subprocess.Popen([sys.executable, "-m", "slimtrack.renderer"],
                                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            except OSError as exc:
                log.warning("dashboard process unavailable (%s); rendering in-process", exc)

    @property
    def in_process(self) -> bool:
        return self._child is None

    def child_pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def wait_ready(self) -> None:
        """Block until the child has started and warmed up (no-op in-process)."""
        self._ask(("ping",))

    def render(self, frame: pd.DataFrame, samples: Sequence[dict[str, Any]], png_path: Path) -> None:
        """Draw the dashboard of ``frame`` (TrainingMetrics rows) and ``samples`` into ``png_path``."""
        # Only what the charts read crosses the pipe. Never import plots.py here: matplotlib's
        # import (~0.5 s of CPU, holding the GIL) would stall the training thread at the run's
        # first dashboard; the child has it imported already.
        frame = frame[dashboard_columns(frame)]
        if self._ask(("render", frame, list(samples), str(png_path))):
            return
        if self._local is None:
            from slimtrack.plots import Dashboard

            self._local = Dashboard()
        _save(self._local, frame, samples, str(png_path))

    def _ask(self, request: tuple) -> bool:
        """Send ``request`` to the child and wait for its reply: True when it was done there,
        False when there is no child (any more). An error inside the child is raised here."""
        with self._lock:
            child = self._child
            if child is None:
                return False
            try:
                pickle.dump(request, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                child.stdin.flush()
                status, detail = pickle.load(child.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                log.warning("dashboard process died (%s: %s); rendering in-process from now on",
                            type(exc).__name__, exc)
                self._stop_child()
                return False
        if status == "error":
            raise RuntimeError(f"dashboard process: {detail}")
        return True

    def close(self) -> None:
        """Let the child finish and exit (it stops at the end of its input)."""
        with self._lock:
            self._stop_child()

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
            child.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        finally:
            child.stdout.close()


# ---- in the child ------------------------------------------------------------------------------
def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Warm up, then answer requests until the input ends: ("render", frame, samples, path)
    draws a PNG, ("ping",) only answers. Each reply is ("ok", None) or ("error", text)."""
    from slimtrack.plots import Dashboard
    from slimtrack.priority import lower_this_thread_priority

    dashboard = Dashboard()
    _save(dashboard, pd.DataFrame(), [], io.BytesIO())  # the first real render then costs what later ones do
    lower_this_thread_priority()  # after the warm-up: niced, it dragged on into the first ~30 steps
    while True:
        try:
            request = pickle.load(requests)
        except EOFError:
            return
        try:
            if request[0] == "render":
                _save(dashboard, *request[1:])
            reply = ("ok", None)
        except Exception as exc:  # noqa: BLE001 — the parent logs it; this process keeps serving
            reply = ("error", f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
        replies.flush()


def _save(dashboard: Any, frame: pd.DataFrame, samples: Sequence[dict[str, Any]], target: Any) -> None:
    from slimtrack.plots import save_png

    save_png(dashboard.update(frame, samples), target)


def main() -> None:
    # Replies go over the real stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
