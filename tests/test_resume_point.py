"""Which run a folder belongs to and where it continues (train/resume.py), on real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimtrack.errors import UserError
from slimtrack.train.checkpoint import save_checkpoint
from slimtrack.train.resume import (FolderLock, auto_resume_point, find_resume_point, refuse_foreign_checkpoints,
                                    write_run_file)

CONFIG = {"preset": "test"}


def checkpoint(folder: Path, step: int, run_id: str | None) -> Path:
    state = {"step": step, "run_id": run_id, "config": {**CONFIG, "step": step}, "w": torch.zeros(3)}
    return save_checkpoint(folder / "checkpoints", step, state, keep=10)


def test_resume_takes_the_newest_checkpoint_of_the_folders_run(tmp_path):
    write_run_file(tmp_path, "run-a", CONFIG)
    checkpoint(tmp_path, 10, "run-a")
    checkpoint(tmp_path, 20, "run-a")
    point = find_resume_point(str(tmp_path))
    assert point.run_id == "run-a" and point.step == 20 and point.checkpoint.name == "step_000020.pt"


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys):
    write_run_file(tmp_path, "run-a", CONFIG)
    checkpoint(tmp_path, 10, "run-a")
    newest = checkpoint(tmp_path, 20, "run-a")
    newest.write_bytes(newest.read_bytes()[:100])  # a copy cut short, a disk that filled up
    point = find_resume_point(str(tmp_path))
    assert point.step == 10
    err = capsys.readouterr().err
    assert "step_000020.pt cannot be read" in err and err.count("\n") == 1


def test_another_runs_checkpoint_is_passed_over(tmp_path):
    write_run_file(tmp_path, "run-b", CONFIG)
    checkpoint(tmp_path, 20, "run-a")  # an older folder reused without the guard
    checkpoint(tmp_path, 11, "run-b")
    assert find_resume_point(str(tmp_path)).step == 11


def test_a_run_without_checkpoint_continues_from_step_0(tmp_path):
    write_run_file(tmp_path, "run-a", CONFIG)
    point = find_resume_point(str(tmp_path))
    assert point.run_id == "run-a" and point.step == 0 and point.state is None and point.config == CONFIG


def test_a_folder_with_nothing_to_resume_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        find_resume_point(str(tmp_path))


def test_auto_starts_fresh_in_an_empty_folder_and_needs_a_folder(tmp_path):
    assert auto_resume_point(str(tmp_path / "new")) is None
    write_run_file(tmp_path, "run-a", CONFIG)
    assert auto_resume_point(str(tmp_path)).run_id == "run-a"
    with pytest.raises(UserError, match="--output-dir"):
        auto_resume_point("")


def test_a_new_run_refuses_a_folder_with_checkpoints(tmp_path):
    refuse_foreign_checkpoints(tmp_path)  # empty: fine
    write_run_file(tmp_path, "run-a", CONFIG)
    checkpoint(tmp_path, 20, "run-a")
    with pytest.raises(UserError, match="run-a .*--resume"):
        refuse_foreign_checkpoints(tmp_path)


HOLD = """
import sys, time
from pathlib import Path
from slimtrack.train.resume import FolderLock
lock = FolderLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_process_cannot_take_a_folder_in_use(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by slimtrack process {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = FolderLock(tmp_path)
    lock.acquire()  # the holder is gone: its lock went with it
    assert (tmp_path / ".slimtrack.lock").read_text() == str(os.getpid())
    lock.release()
