"""Whole processes measured in turns: one runs while the others are stopped.

On a shared VM the speed of a process drifts by 5-15 % over a minute, so two runs made
one after the other differ by more than the effect under test (a 1 % tracking overhead,
a 10 % speed-up). ``run_in_turns`` starts every variant's process at once, stops all but
one (SIGSTOP to its whole process group: its threads and its children, e.g. slimtrack's
dashboard process), and hands the cores to each in turn for ``slice_seconds``. A slow
minute then hits every variant alike, as in step_ab.py, but each variant is still a real,
whole process with everything it does in the background. Each process's clock keeps
running while it is stopped, so its own timestamps are mapped back to the time it was
allowed to run: ``Turns.active_seconds``. POSIX only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Turns:
    """The wall-clock intervals (unix seconds) in which one process was allowed to run."""

    intervals: list[tuple[float, float]] = field(default_factory=list)
    returncode: int | None = None  # the process's exit status once it has exited

    def active_seconds(self, start: float, end: float) -> float:
        """How long, between ``start`` and ``end``, the process was running."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.intervals)

    def ran_throughout(self, start: float, end: float) -> bool:
        """True when the process was never stopped between ``start`` and ``end``."""
        return any(a <= start and end <= b for a, b in self.intervals)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:  # it has just exited
        pass


def run_in_turns(launchers: dict[str, Callable[[], subprocess.Popen]], slice_seconds: float = 3.0
                 ) -> dict[str, Turns]:
    """Start every process (each launcher must use ``start_new_session=True``), then let them
    run one at a time, ``slice_seconds`` each, in order, until all have exited."""
    processes = {}
    for name, launch in launchers.items():
        processes[name] = launch()
        _signal_group(processes[name], signal.SIGSTOP)
    turns = {name: Turns() for name in processes}
    try:
        while any(p.poll() is None for p in processes.values()):
            for name, process in processes.items():
                if process.poll() is not None:
                    continue
                started = time.time()
                _signal_group(process, signal.SIGCONT)
                try:
                    process.wait(timeout=slice_seconds)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGSTOP)
                turns[name].intervals.append((started, time.time()))
        for name, process in processes.items():  # all have exited (one may have between turns)
            turns[name].returncode = process.wait()
    finally:  # an error here must not leave stopped processes behind
        for process in processes.values():
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
                _signal_group(process, signal.SIGCONT)
    return turns
