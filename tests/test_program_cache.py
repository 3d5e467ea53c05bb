"""The program cache (tracking/program_cache.py): a later run of an architecture writes its
model's program from the kept template with its own weights, and never trusts a template
that does not fit."""

from __future__ import annotations

import dataclasses
import zipfile

import mlflow
import pytest
import torch

from conftest import run_cli
from slimtrack.config import ModelConfig, build_config
from slimtrack.data.tokenizer import load_tokenizer
from slimtrack.tracking.export import example_ids, export_program
from slimtrack.tracking.program_cache import ProgramCache, cache_folder, program_key, write_with_weights
from slimtrack.train.model import GPT

CONFIG = dataclasses.asdict(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=128))
SEQ_LEN = 16


def model_of(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**CONFIG), "torch").eval()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A program exported from a model of seed 1: the template of CONFIG's architecture."""
    path = tmp_path_factory.mktemp("template") / "template.pt2"
    torch.export.save(export_program(model_of(1), example_ids(SEQ_LEN)), str(path))
    return path


def outputs(model_or_program, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_or_program(ids)


def test_the_written_program_computes_with_the_new_weights(template, tmp_path):
    """Seed 2's weights in seed 1's template: the program computes what seed 2's model does, at
    another batch and length (the dynamic dimensions stay), and not what seed 1's does."""
    model = model_of(2)
    out = tmp_path / "model.pt2"
    assert write_with_weights(template, model.state_dict(), out)
    ids = torch.randint(0, 128, (3, 27))
    program = torch.export.load(str(out)).module()
    assert torch.allclose(outputs(program, ids), outputs(model, ids), atol=1e-6)
    assert not torch.allclose(outputs(program, ids), outputs(model_of(1), ids), atol=1e-3)


@pytest.mark.parametrize("change", ["shape", "missing", "extra", "dtype"])
def test_weights_that_do_not_fit_the_template_write_nothing(template, tmp_path, change):
    weights = dict(model_of(2).state_dict())
    if change == "shape":
        weights["wpe.weight"] = torch.zeros(33, 32)
    elif change == "missing":
        del weights["wpe.weight"]
    elif change == "extra":
        weights["head.scale"] = torch.ones(1)
    else:
        weights["wpe.weight"] = weights["wpe.weight"].double()
    out = tmp_path / "model.pt2"
    assert not write_with_weights(template, weights, out)
    assert not out.exists()


def test_a_template_that_is_no_archive_writes_nothing(tmp_path):
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"not a zip")
    out = tmp_path / "model.pt2"
    assert not write_with_weights(broken, model_of(2).state_dict(), out)
    assert not out.exists()


def test_the_key_follows_the_architecture_and_the_input_length():
    assert program_key(CONFIG, SEQ_LEN) == program_key(dict(CONFIG), SEQ_LEN)
    assert program_key({**CONFIG, "n_layer": 3}, SEQ_LEN) != program_key(CONFIG, SEQ_LEN)
    assert program_key(CONFIG, SEQ_LEN + 1) != program_key(CONFIG, SEQ_LEN)


def test_the_cache_keeps_and_forgets_templates(template, tmp_path):
    cache = ProgramCache(tmp_path / "programs")
    assert cache.template(CONFIG, SEQ_LEN) is None
    cache.keep(template, CONFIG, SEQ_LEN)
    kept = cache.template(CONFIG, SEQ_LEN)
    assert kept is not None and kept.read_bytes() == template.read_bytes()
    assert cache.template({**CONFIG, "n_layer": 3}, SEQ_LEN) is None
    assert [p.name for p in (tmp_path / "programs").iterdir()] == [kept.name]  # no partial file left
    cache.forget(CONFIG, SEQ_LEN)
    assert cache.template(CONFIG, SEQ_LEN) is None


def test_a_cache_that_cannot_be_written_or_is_off_is_no_error(template, tmp_path):
    (tmp_path / "file").write_text("x")
    ProgramCache(tmp_path / "file" / "programs").keep(template, CONFIG, SEQ_LEN)  # a file where the folder goes
    off = ProgramCache(cache_folder("off"))
    off.keep(template, CONFIG, SEQ_LEN)
    assert off.template(CONFIG, SEQ_LEN) is None


def test_the_default_folder_is_the_users_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_folder("") == tmp_path / "slimtrack" / "programs"
    assert cache_folder("~/programs") == cache_folder("~/programs").expanduser()
    assert cache_folder("off") is None


@pytest.mark.slow
def test_a_run_of_a_cached_architecture_logs_its_own_weights(tmp_path, mlflow_store):
    """The first run finds a broken template, exports its model and keeps the program in its
    place; the second run (another seed: other weights) writes its program from that template.
    The model each run logs computes what its final checkpoint's weights compute."""
    config = build_config("test")
    config.model.vocab_size = load_tokenizer(config.data.tokenizer).vocab_size
    cache = tmp_path / "programs"
    cache.mkdir()
    template = cache / f"{program_key(dataclasses.asdict(config.model), config.data.seq_len)}.pt2"
    template.write_bytes(b"a template of another layout")
    client = mlflow.MlflowClient(mlflow_store)
    for seed in (1, 2):
        out = tmp_path / f"out{seed}"
        result = run_cli("train", "--test", "--kernels", "torch", "--seed", str(seed), "--program-cache", str(cache),
                         "--output-dir", str(out), "--experiment", "cache", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert zipfile.is_zipfile(template)  # the broken one replaced by the export (seed 1), then used (seed 2)
        experiment = client.get_experiment_by_name("cache").experiment_id
        run = client.search_runs([experiment], order_by=["start_time DESC"])[0]
        logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        checkpoint = sorted((out / "checkpoints").glob("step_*.pt"))[-1]
        model = GPT(config.model, "torch").eval()
        model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
        ids = torch.randint(0, config.model.vocab_size, (2, 40))
        assert torch.allclose(outputs(logged, ids), outputs(model, ids), atol=1e-5)
