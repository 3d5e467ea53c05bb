"""DashboardRenderer: the dashboard drawn in a child process, so it never holds our GIL.

A render is ~0.5 s of mostly-Python matplotlib work. On a thread of the training process
it holds the GIL for most of that time, and the training thread, which takes the GIL back
after every torch op, waits for it again and again: on 2 cores a render cost the loop
~0.8 s of wall time even at a lower priority (docs/benchmarks.md). A child process has
its own interpreter and GIL, and runs at the background priority (priority.py), so it
takes only CPU the step leaves over, or yields it quickly.

One child per run (``spawn``: never fork a process that runs OpenMP threads). It keeps
one ``plots.Dashboard`` for the run, and warms it up (matplotlib's import, the axes, the
fonts: ~1 s of CPU once) as soon as it starts, while the run sets up. A render sends the
charted columns of the history frame and the samples, and the child writes the PNG.
If the child dies or cannot start, the caller's thread renders instead (``in_process``),
and the run goes on.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import multiprocessing
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

log = logging.getLogger(__name__)

_dashboard: Any = None  # the child's plots.Dashboard (one per process, built once)


class DashboardRenderer:
    """``render(frame, samples, png_path)`` in a child process, or in the caller's thread
    when that process is unavailable. Not thread-safe: one thread (the viz worker) owns it."""

    def __init__(self, use_process: bool = True) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._local: Any = None  # a Dashboard of our own once we render in-process
        if use_process:
            try:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"))
                self._pool.submit(_warm_up)  # starts the child now; the first render queues behind it
            except Exception as exc:  # noqa: BLE001 — no process: render here
                log.warning("dashboard process unavailable (%s); rendering in-process", exc)
                self._pool = None

    @property
    def in_process(self) -> bool:
        return self._pool is None

    def child_pid(self) -> int | None:
        """The child's process id (None in-process). The child runs its tasks in order, so
        the answer comes once it has started and warmed up."""
        if self._pool is None:
            return None
        import os

        return self._pool.submit(os.getpid).result()

    def wait_ready(self) -> None:
        """Block until the child has started and warmed up (no-op in-process)."""
        self.child_pid()

    def render(self, frame: pd.DataFrame, samples: Sequence[dict[str, Any]], png_path: Path) -> None:
        """Draw the dashboard of ``frame`` (TrainingMetrics rows) and ``samples`` into ``png_path``."""
        from slimtrack.plots import charted_columns

        frame = frame[charted_columns(frame)]  # only what the charts read crosses the pipe
        if self._pool is not None:
            try:
                self._pool.submit(_render_png, frame, list(samples), str(png_path)).result()
                return
            except concurrent.futures.process.BrokenProcessPool as exc:
                log.warning("dashboard process died (%s); rendering in-process from now on", exc)
                self.close()
        if self._local is None:
            from slimtrack.plots import Dashboard

            self._local = Dashboard()
        _save(self._local, frame, samples, str(png_path))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---- in the child ------------------------------------------------------------------------------
def _warm_up() -> None:
    """Build the Dashboard and draw it once without data, at normal priority: it overlaps the
    run's set-up, which leaves a core free, and the first real render then costs what later
    ones do. From then on the child runs at the background priority: a niced warm-up
    dragged on into the first ~30 training steps and slowed them."""
    from slimtrack.priority import lower_this_thread_priority

    _save(_child_dashboard(), pd.DataFrame(), [], io.BytesIO())
    lower_this_thread_priority()  # the child's only thread: the whole child runs nicer


def _render_png(frame: pd.DataFrame, samples: list[dict[str, Any]], path: str) -> None:
    _save(_child_dashboard(), frame, samples, path)


def _child_dashboard() -> Any:
    global _dashboard
    if _dashboard is None:
        from slimtrack.plots import Dashboard

        _dashboard = Dashboard()
    return _dashboard


def _save(dashboard: Any, frame: pd.DataFrame, samples: Sequence[dict[str, Any]], target: Any) -> None:
    from slimtrack.plots import save_png

    save_png(dashboard.update(frame, samples), target)
