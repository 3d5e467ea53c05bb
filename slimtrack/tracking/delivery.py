"""Delivery: operations to a sink, retried, spooled while the store is away, replayed after.

Live, each operation is tried ``retry_attempts`` times (with a doubling pause); when it
still fails, the delivery goes *offline*: that operation and every later one are appended
to the spool, in order, until a replay (every ``replay_interval`` seconds from the
tracker's worker, at the end of the run, or ``slimtrack sync``) delivers the whole spool.

Delivery is idempotent. MLflow keeps every point logged at a step and cannot delete one,
so before a replay (and when a run is resumed) the delivery asks the sink for the last
step the store holds for each key and drops every point at or below it; a created run
is found again by its run key (operations.StartRun). An artifact (or a model's checkpoint)
whose local file is gone (rotated away before the replay) is skipped and counted, never
retried.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from slimtrack.runtime.child import ChildGone
from slimtrack.tracking.operations import (LogArtifact, LogImage, LogMetrics, LogModel, Operation, RunRef, Sink,
                                           StartRun)
from slimtrack.tracking.spool import Spool
from slimtrack.tracking.uri import redact_text

log = logging.getLogger(__name__)


def first_line(exc: BaseException) -> str:
    """An error's first line (MLflow's messages carry whole tracebacks and SQL)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class Delivery:
    def __init__(self, sink: Sink, spool: Spool | None, *, retry_attempts: int = 3, retry_delay: float = 0.5,
                 say: Callable[[str], None] = print, remote: bool = True) -> None:
        self.sink = sink
        self.remote = remote  # a tracking server (away = unreachable), or a local store (away = failing)
        self.store = ""  # the store's URI, for messages
        self.spool = spool
        self.retry_attempts = retry_attempts
        self.retry_delay = retry_delay
        self.say = say  # one line for the user: went offline, came back
        self.run: RunRef | None = None
        self.offline = False
        self.missing_files: list[str] = []  # artifacts skipped because their file was gone
        self.last_steps: dict[str, int] = {}  # key -> the last step the store holds
        self.model_logged = False  # a LogModel was delivered and the sink logged the model

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run else None

    # ---- live --------------------------------------------------------------------------------
    def send(self, ops: list[Operation]) -> None:
        """Deliver ``ops`` in order, or spool them (all, or from the first that failed on)."""
        if self.offline:
            self._spool(ops)
            return
        for index, op in enumerate(ops):
            try:
                self.deliver_with_retry(op)
            except Exception as exc:  # noqa: BLE001 — the store is away: spool from here on
                self.go_offline(exc, ops[index:])
                return

    def go_offline(self, exc: BaseException, unsent: list[Operation]) -> None:
        self.offline = True
        where = self.spool.path if self.spool is not None else "nowhere (no spool)"
        what = "tracking server unreachable" if self.remote else "tracking store failed"
        self.say(f"{what} ({type(exc).__name__}: {redact_text(first_line(exc))[:160]}); "
                 f"training goes on, records are spooled to {where}")
        self._spool(unsent)

    def _spool(self, ops: list[Operation]) -> None:
        if self.spool is None:
            log.error("mlflow: %d operations lost (no spool directory)", len(ops))
            return
        for op in ops:
            if op.run_id is None and not isinstance(op, StartRun):
                op.run_id = self.run_id
        self.spool.append(ops)

    def deliver_with_retry(self, op: Operation) -> None:
        delay = self.retry_delay
        for attempt in range(1, self.retry_attempts + 1):
            try:
                self.deliver(op)
                return
            except Exception as exc:  # noqa: BLE001
                if attempt == self.retry_attempts:
                    raise
                log.warning("mlflow: %s failed (%s); retrying in %.1fs", op.kind, redact_text(str(exc)), delay)
                time.sleep(delay)
                delay *= 2

    # ---- one operation -----------------------------------------------------------------------
    def deliver(self, op: Operation) -> None:
        """Apply one operation to the sink, once: points the store holds are left out."""
        if isinstance(op, StartRun):
            self.run = op.apply(self.sink)
            if op.resume_run_id:
                self.load_logged_steps()
            return
        if op.run_id is None:
            op.run_id = self.run_id
        if isinstance(op, LogMetrics):
            op = LogMetrics(run_id=op.run_id, points=[p for p in op.points if p[3] > self.last_steps.get(p[0], 0)])
            if not op.points:
                return
        if (path := local_file(op)) is not None and not Path(path).exists():
            self.missing_files.append(path)
            log.warning("mlflow: %s is gone; not logged", path)
            return
        if isinstance(op, LogModel):
            self.model_logged = self._log_model(op)
            return
        op.apply(self.sink)
        if isinstance(op, LogMetrics):
            for key, _, _, step in op.points:
                self.last_steps[key] = max(self.last_steps.get(key, 0), step)

    def _log_model(self, op: LogModel) -> bool:
        """The final model, once: a model that cannot be logged (an export error, a store that
        refuses it) is said and left to the checkpoints (a resume logs it), never retried or
        spooled, so it cannot hold up the operations after it (the run's end). Only a dead
        MLflow process is raised, for the retry to make the call from this process."""
        try:
            return bool(op.apply(self.sink))
        except ChildGone:
            raise
        except Exception as exc:  # noqa: BLE001
            self.say(f"could not log the final model ({redact_text(first_line(exc))[:200]}); "
                     f"the checkpoint {op.checkpoint} holds it, and a resume logs it")
            return False

    def load_logged_steps(self, run_id: str | None = None) -> None:
        """Remember the last step the store holds for each key of the run (default: ours)."""
        run_id = run_id or self.run_id
        if run_id is not None:
            for key, step in self.sink.logged_steps(run_id).items():
                self.last_steps[key] = max(self.last_steps.get(key, 0), step)

    # ---- replay ------------------------------------------------------------------------------
    def replay(self) -> int:
        """Deliver the whole spool in order; the number delivered, 0 while still unreachable.

        On a failure the spool is rewritten with what is still undelivered, every
        operation naming its run, so a later replay (or ``slimtrack sync``) goes on from
        there."""
        if self.spool is None:
            return 0
        ops = self.spool.read()
        done = 0
        try:
            self.load_logged_steps(self.run_id or next((op.run_id for op in ops if op.run_id), None))
            for op in ops:
                self.deliver(op)
                done += 1
        except Exception as exc:  # noqa: BLE001 — still unreachable: try again later
            log.info("mlflow: replay failed: %s", redact_text(str(exc)))
            if done:
                self.spool.rewrite(self._named(ops[done:]))
            return 0
        self.spool.clear()
        self.offline = False
        if ops:
            what = "tracking server is back" if self.remote else "tracking store works again"
            self.say(f"{what}: delivered {len(ops)} spooled operations")
        return len(ops)

    def _named(self, ops: list[Operation]) -> list[Operation]:
        for op in ops:
            if op.run_id is None and not isinstance(op, StartRun):
                op.run_id = self.run_id
        return ops


def local_file(op: Operation) -> str | None:
    """The local file an operation uploads or reads (None: it reads none)."""
    if isinstance(op, (LogArtifact, LogImage)):
        return op.path
    if isinstance(op, LogModel):
        return op.checkpoint
    return None
