"""The final model's program (tracking/export.py): the export process, prepared ahead for the
run's architecture, writes the program of whatever weights the checkpoint holds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from slimtrack.config import ModelConfig
from slimtrack.tracking.export import ExportError, ExportProcess, write_program
from slimtrack.train.model import GPT

CONFIG = dataclasses.asdict(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=128))
SEQ_LEN = 16


def checkpoint_of(tmp_path, name: str, seed: int):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**CONFIG)).eval()
    path = tmp_path / name
    torch.save({"model": model.state_dict(), "step": seed}, path)
    return path, model


def program_output(path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.export.load(str(path)).module()(ids)


def test_the_prepared_program_carries_each_checkpoints_weights(tmp_path):
    """The export process exported a model of this architecture ahead; each program it writes
    computes what the checkpoint's model computes, at any batch and length up to block_size."""
    export = ExportProcess(CONFIG, SEQ_LEN)
    try:
        for seed in (1, 2):  # a second checkpoint: its weights replace the first's in the program
            checkpoint, model = checkpoint_of(tmp_path, f"step_{seed}.pt", seed)
            out = tmp_path / f"model_{seed}.pt2"
            export.write_program(checkpoint, CONFIG, SEQ_LEN, out)
            ids = torch.randint(0, 128, (3, 27))
            with torch.no_grad():
                expected = model(ids)
            assert torch.allclose(program_output(out, ids), expected, atol=1e-5)
    finally:
        export.close()


def test_a_checkpoint_that_does_not_fit_the_config_is_an_export_error(tmp_path):
    checkpoint, _ = checkpoint_of(tmp_path, "step_1.pt", 1)
    other = {**CONFIG, "n_embd": 64}
    with pytest.raises(ExportError, match="rebuilding the model"):
        write_program(checkpoint, other, SEQ_LEN, tmp_path / "model.pt2")
    export = ExportProcess(other, SEQ_LEN)  # the same error comes back from the export process
    try:
        with pytest.raises(ExportError):
            export.write_program(checkpoint, other, SEQ_LEN, tmp_path / "model.pt2")
    finally:
        export.close()
