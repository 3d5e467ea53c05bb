import random

import numpy as np
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
