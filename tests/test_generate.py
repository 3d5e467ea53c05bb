"""Text generation: GPT.generate with and without its KV cache, and ``slimtrack generate``
on a checkpoint written by a real tiny training run."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from conftest import run_cli
from slimtrack.cli import main
from slimtrack.config import ModelConfig
from slimtrack.train.checkpoint import list_checkpoints
from slimtrack.train.generate import format_samples, load_generator
from slimtrack.train.model import GPT, KVCache

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64)
NEW_TOKENS = 24  # a 3-token prompt outgrows block_size on the way


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY)


def prompt(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- GPT.generate ------------------------------------------------------------------------------
def test_the_cached_forward_gives_the_full_forwards_logits(model):
    idx = prompt(2, 12)
    model.eval()
    with torch.no_grad():
        full = model(idx)  # [2, 12, V]
        cache = KVCache(TINY, 2, idx.device, torch.float32)
        pieces = [model(idx[:, :5], cache)] + [model(idx[:, t:t + 1], cache) for t in range(5, 9)]
        pieces.append(model(idx[:, 9:], cache))  # several new tokens after cached ones
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)


@pytest.mark.parametrize("length", [3, 16, 20], ids=["shorter", "block_size", "longer"])
def test_greedy_tokens_are_the_same_with_and_without_the_cache(model, length):
    idx = prompt(3, length)
    cached = model.generate(idx, NEW_TOKENS, temperature=0)
    plain = model.generate(idx, NEW_TOKENS, temperature=0, use_cache=False)
    assert cached.shape == (3, length + NEW_TOKENS) and cached.dtype == torch.int64
    assert torch.equal(cached[:, :length], idx)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("length", [3, 16, 20], ids=["shorter", "block_size", "longer"])
@pytest.mark.parametrize("top_k", [None, 10])
def test_seeded_samples_are_the_same_with_and_without_the_cache(model, length, top_k):
    idx = prompt(3, length)
    cached = model.generate(idx, NEW_TOKENS, temperature=1.0, top_k=top_k, generator=torch.Generator().manual_seed(7))
    plain = model.generate(idx, NEW_TOKENS, temperature=1.0, top_k=top_k, generator=torch.Generator().manual_seed(7),
                           use_cache=False)
    assert torch.equal(cached, plain)
    other = model.generate(idx, NEW_TOKENS, temperature=1.0, top_k=top_k, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(cached, other)  # the seed matters: a near-uniform model never repeats 72 draws


def test_greedy_is_the_argmax_of_the_full_forward_at_each_step(model):
    idx = prompt(2, 5)
    out = model.generate(idx, NEW_TOKENS, temperature=0)
    with torch.no_grad():
        for t in range(5, 5 + NEW_TOKENS):
            window = out[:, :t][:, -TINY.block_size:]  # what the model sees: at most block_size tokens
            assert torch.equal(out[:, t], model(window)[:, -1].argmax(dim=-1))


def test_top_k_1_is_greedy_and_top_k_keeps_the_k_most_likely(model):
    idx = prompt(2, 4)
    greedy = model.generate(idx, 8, temperature=0)
    assert torch.equal(model.generate(idx, 8, temperature=1.0, top_k=1, generator=torch.Generator()), greedy)
    with torch.no_grad():
        allowed = model(idx)[:, -1].topk(3, dim=-1).indices  # [2, 3]
    for seed in range(20):
        first = model.generate(idx, 1, top_k=3, generator=torch.Generator().manual_seed(seed))[:, -1:]  # [2, 1]
        assert (first == allowed).any(dim=-1).all()


def test_generate_runs_in_eval_mode_and_restores_the_training_flag(model):
    model.train()
    out = model.generate(prompt(1, 4), 3, temperature=0)
    assert model.training and not out.requires_grad
    model.eval()
    model.generate(prompt(1, 4), 3, temperature=0)
    assert not model.training


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=-1), dict(temperature=-0.5), dict(temperature=float("nan")),
                                    dict(top_k=0)])
def test_generate_refuses_bad_arguments(model, kwargs):
    with pytest.raises(ValueError):
        model.generate(prompt(1, 4), **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(ValueError):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 2)


def test_format_separates_several_samples():
    assert format_samples("Hi", [" there"]) == "Hi there\n"
    assert format_samples("Hi", ["a", "b"]) == "--- sample 1/2 ---\nHia\n--- sample 2/2 ---\nHib\n"


# ---- slimtrack generate on a real run ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A real tiny run (sqlite store) with its final checkpoint; its folder, run id and store."""
    root = tmp_path_factory.mktemp("generate")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "run"
    result = run_cli("train", "--test", "--kernels", "torch", "--max-chunks", "3", "--no-log-model",
                     "--output-dir", str(out), cwd=root, env={"MLFLOW_TRACKING_URI": uri}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    return {"root": root, "uri": uri, "out": out, "run_id": run_id,
            "checkpoint": list_checkpoints(out / "checkpoints")[-1]}


@pytest.fixture
def store(trained, monkeypatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    monkeypatch.chdir(trained["root"])
    return trained


def generate(capsys, source: str, *args: str) -> tuple[int, str, str]:
    code = main(["generate", source, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SEEDED = ("--prompt", "The ", "--max-new-tokens", "20", "--seed", "3")


def test_generate_from_the_folder_is_the_prompt_and_its_continuation(store, capsys):
    code, text, err = generate(capsys, str(store["out"]), *SEEDED)
    assert code == 0, err
    assert text.startswith("The ") and text.endswith("\n") and len(text) > len("The \n")
    assert generate(capsys, str(store["out"]), *SEEDED)[1] == text  # seeded: reproducible
    assert generate(capsys, str(store["out"]), *SEEDED[:-1], "4")[1] != text


def test_the_checkpoint_file_and_the_run_id_give_the_folders_text(store, capsys):
    by_folder = generate(capsys, str(store["out"]), *SEEDED)[1]
    code, by_file, err = generate(capsys, str(store["checkpoint"]), *SEEDED)
    assert code == 0 and by_file == by_folder, err
    # By run id, in a process of its own, the way a user runs it.
    result = run_cli("generate", store["run_id"], *SEEDED, cwd=store["root"], env={"MLFLOW_TRACKING_URI": store["uri"]})
    universal_newlines = by_folder.replace("\r\n", "\n").replace("\r", "\n")  # as run_cli's text mode reads it
    assert result.returncode == 0 and result.stdout == universal_newlines, result.stderr[-3000:]


def test_several_samples_are_marked_and_greedy_needs_no_seed(store, capsys):
    code, text, _ = generate(capsys, str(store["out"]), "--prompt", "a", "--num-samples", "3",
                             "--max-new-tokens", "5")
    assert code == 0 and [line for line in text.splitlines() if line.startswith("--- sample")] == [
        "--- sample 1/3 ---", "--- sample 2/3 ---", "--- sample 3/3 ---"]
    greedy = ("--prompt", "a", "--max-new-tokens", "10", "--temperature", "0")
    assert generate(capsys, str(store["out"]), *greedy)[1] == generate(capsys, str(store["out"]), *greedy)[1]


def test_the_api_returns_continuations_only(store):
    generator = load_generator(str(store["out"]), device="cpu")
    texts = generator.continuations("The ", 8, temperature=0, num_samples=2)
    assert len(texts) == 2 and texts[0] == texts[1]
    assert not generator.model.training and generator.checkpoint == store["checkpoint"]


def test_generate_writes_nothing_to_the_store(store, capsys):
    client = MlflowClient(store["uri"])
    experiment = client.get_run(store["run_id"]).info.experiment_id
    runs_before, before = len(client.search_runs([experiment])), client.get_run(store["run_id"]).data
    assert generate(capsys, store["run_id"], *SEEDED)[0] == 0
    after = client.get_run(store["run_id"]).data
    assert (after.params, after.tags, after.metrics) == (before.params, before.tags, before.metrics)
    assert len(client.search_runs([experiment])) == runs_before


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("slimtrack: error:"), lines[0]
    return lines[0]


def test_an_unknown_run_is_one_line_and_exit_2(store, capsys):
    code, out, err = generate(capsys, "0123456789abcdef0123456789abcdef", "--prompt", "x")
    assert code == 2 and out == "" and "no run" in one_error_line(err)


def test_a_run_without_a_checkpoint_is_one_line_and_exit_2(store, capsys, tmp_path):
    client = MlflowClient(store["uri"])
    empty = tmp_path / "empty-run"
    empty.mkdir()
    experiment = client.get_run(store["run_id"]).info.experiment_id
    run = client.create_run(experiment, tags={"slimtrack.output_dir": str(empty)})
    client.set_terminated(run.info.run_id, "FAILED")
    code, out, err = generate(capsys, run.info.run_id, "--prompt", "x")
    assert code == 2 and out == "" and "no checkpoint" in one_error_line(err)


@pytest.mark.parametrize("case", ["empty folder", "missing file", "missing folder", "not a checkpoint"])
def test_a_bad_source_is_one_line_and_exit_2(store, capsys, tmp_path, case):
    source = {"empty folder": tmp_path, "missing file": tmp_path / "step_000009.pt",
              "missing folder": tmp_path / "nowhere" / "run", "not a checkpoint": tmp_path / "notes.pt"}[case]
    if case == "not a checkpoint":
        source.write_text("not a checkpoint")
    code, out, err = generate(capsys, str(source), "--prompt", "x")
    expected = {"empty folder": "no checkpoint", "missing file": "no such", "missing folder": "no such",
                "not a checkpoint": "cannot be read"}[case]
    assert code == 2 and out == "" and expected in one_error_line(err)


@pytest.mark.parametrize("flags", [("--prompt", ""), ("--prompt", "x", "--temperature", "-1"),
                                   ("--prompt", "x", "--top-k", "-3"), ("--prompt", "x", "--num-samples", "0")])
def test_bad_flags_are_one_line_and_exit_2(store, capsys, flags):
    code, out, err = generate(capsys, str(store["out"]), *flags)
    assert code == 2 and out == ""
    one_error_line(err)


def test_an_empty_prompt_is_refused_before_the_source_is_read(capsys, tmp_path):
    code, _, err = generate(capsys, str(tmp_path / "missing.pt"), "--prompt", "")
    assert code == 2 and "--prompt must not be empty" in one_error_line(err)
