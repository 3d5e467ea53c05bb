"""Where a run continues, and which run an output folder belongs to.

An output folder belongs to one run. ``run.json`` names it (its MLflow run id, its config)
from the moment the run is open, before the first checkpoint exists, and says at the end
whether the final model was logged. ``--resume`` takes a folder or a run id and continues
from that run's newest checkpoint that loads; a truncated or foreign checkpoint (another
run's, in a reused folder) is passed over with a line that says so. A run that stopped
before its first checkpoint continues from step 0 in the same MLflow run.

A running process holds ``.slimtrack.lock`` in its folder, so a second process cannot
train into the same folder (resume the same run) at the same time.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtrack.config import Config, config_from_dict
from slimtrack.errors import UserError
from slimtrack.runtime.files import atomic_write_bytes
from slimtrack.train.checkpoint import list_checkpoints, load_checkpoint

RUN_FILE = "run.json"
LOCK_FILE = ".slimtrack.lock"
CHECKPOINTS = "checkpoints"


@dataclass
class ResumePoint:
    """A run to continue: its folder, its run id, the config it trains with, and the
    checkpoint to start from (None: from step 0)."""

    output_dir: Path
    run_id: str | None
    config: dict[str, Any]
    checkpoint: Path | None = None
    state: dict[str, Any] | None = None
    model_logged: bool = False  # the run's final model is in the store already

    @property
    def step(self) -> int:
        return int(self.state["step"]) if self.state else 0


def write_run_file(output_dir: Path, run_id: str | None, config: dict[str, Any], *,
                   model_logged: bool = False) -> None:
    record = {"run_id": run_id, "config": config, "model_logged": model_logged}
    atomic_write_bytes(output_dir / RUN_FILE, json.dumps(record, indent=1).encode())


def read_run_file(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def find_resume_point(target: str) -> ResumePoint:
    """``target``: an output folder, or a run id whose ``slimtrack.output_dir`` tag names one."""
    folder = Path(target).expanduser()
    wanted_run = None
    if not folder.is_dir():
        folder, wanted_run = _folder_of_run(target), target
    owner = read_run_file(folder) or {}
    run_id = wanted_run or owner.get("run_id")
    if wanted_run and owner.get("run_id") not in (None, wanted_run):
        owner = {}  # the folder was reused by another run since: only the checkpoints can tell
    checkpoint, state = newest_checkpoint(folder / CHECKPOINTS, run_id)
    logged = bool(owner.get("model_logged"))
    if state is not None:
        return ResumePoint(folder, state.get("run_id") or run_id, state["config"], checkpoint, state, logged)
    if owner.get("config"):
        return ResumePoint(folder, run_id, owner["config"], model_logged=logged)
    raise UserError(f"--resume {target}: no checkpoint of this run in {folder / CHECKPOINTS}")


def config_to_resume(point: ResumePoint, max_chunks: int | None = None) -> Config:
    """The config a resumed run trains with: the run's own, ``max_chunks`` extended if given.
    A ``max_chunks`` below the step already reached is refused (it would train nothing and
    leave the run's schedule unlike its record)."""
    if max_chunks is not None and max_chunks < point.step:
        raise UserError(f"--max-chunks {max_chunks} is below step {point.step}, where the run's checkpoint is; "
                        f"pass {point.step} or more")
    return config_from_dict(point.config, max_chunks=max_chunks)


def auto_resume_point(output_dir: str) -> ResumePoint | None:
    """``--resume auto``: the run in ``output_dir`` if it has one, else None (a fresh start)."""
    if not output_dir:
        raise UserError("--resume auto needs --output-dir (the folder a restarted run continues in)")
    folder = Path(output_dir).expanduser()
    if read_run_file(folder) is None and not list_checkpoints(folder / CHECKPOINTS):
        return None
    return find_resume_point(str(folder))


def newest_checkpoint(directory: Path, run_id: str | None) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint in ``directory`` that loads and belongs to ``run_id`` (any
    run when None), and its state."""
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 — truncated, corrupt, or from an incompatible torch
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            print(f"slimtrack: checkpoint {path} cannot be read ({first}); trying an older one", file=sys.stderr)
            continue
        if run_id is not None and state.get("run_id") not in (None, run_id):
            continue  # another run's checkpoint in a reused folder
        return path, state
    return None, None


def refuse_foreign_checkpoints(output_dir: Path) -> None:
    """A new run never trains into a folder that holds another run's checkpoints: their
    steps would mix, and a later ``--resume`` could not tell the runs apart."""
    found = list_checkpoints(output_dir / CHECKPOINTS)
    if found:
        owner = (read_run_file(output_dir) or {}).get("run_id") or "an earlier run"
        raise UserError(f"--output-dir {output_dir} already holds checkpoints of {owner} ({found[-1].name}); "
                        f"continue it with --resume {output_dir}, or choose another --output-dir")


class FolderLock:
    """An exclusive ``flock`` on the folder's lock file, held while the process trains there."""

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / LOCK_FILE
        self._handle: Any = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.path.parent} is in use by slimtrack process {holder}: "
                            "one process trains in a folder at a time") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the lock
            self._handle = None


def _folder_of_run(run_id: str) -> Path:
    from slimtrack.analysis import get_run  # a run id: ask the tracking store where its files are

    tags = get_run(run_id).data.tags
    if "slimtrack.output_dir" not in tags:
        raise UserError(f"run {run_id} has no slimtrack.output_dir tag; pass its output folder instead")
    return Path(tags["slimtrack.output_dir"])
