import random

import numpy as np
import pytest
import torch

from slimtrack.train.checkpoint import (latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng_state,
                                  rng_state, save_checkpoint)


def test_save_keeps_newest_k_and_ignores_temporaries(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.ones(3) * step}, keep=2)
    (tmp_path / ".step_000050.pt.tmp-123").write_bytes(b"torn write")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000030.pt", "step_000040.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 40 and torch.equal(state["w"], torch.full((3,), 40.0))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, {"rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_latest_of_empty_or_missing_dir(tmp_path):
    assert latest_checkpoint(tmp_path / "nope") is None
    assert latest_checkpoint(tmp_path) is None


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from slimtrack.runtime.files import atomic_write, atomic_write_bytes

    target = tmp_path / "file.json"
    atomic_write_bytes(target, b"old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file.json"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["file.json"]
