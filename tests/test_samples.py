"""Generated text samples during training, and val_bpb: the fixed validation prompts, the
rows' five fields, an untouched training RNG, and bits per byte of the validation text."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from slimtrack import analysis
from slimtrack.config import build_config
from slimtrack.data.tokenizer import ByteTokenizer, load_tokenizer
from slimtrack.train.job import validation_chunks
from slimtrack.train.loop import SlimPajamaTrainer
from slimtrack.train.model import GPT
from slimtrack.train.samples import TextSampler, make_sampler, token_byte_lengths, validation_prompts
from slimtrack.train.session import run_training

COLUMNS = ["step", "prompt", "generated", "true_continuation", "accuracy"]
EOS = ByteTokenizer.eos_id


def train(folder: Path, **overrides) -> Path:
    """A tiny untracked CPU run (20 steps, samples every 5, evaluation every 10); its viz folder."""
    config = build_config("test", **{"tracking.enabled": False, "train.output_dir": str(folder),
                                     "train.viz_interval": 5, "train.device": "cpu", **overrides})
    assert run_training(config).status == "FINISHED"
    return folder / "training_viz"


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("sampled"), **{"model.dropout": 0.1})


def chunk(rows: list[list[int]]) -> SimpleNamespace:
    return SimpleNamespace(tokens=torch.tensor(rows, dtype=torch.long))


# ---- the prompts ------------------------------------------------------------------------------
def test_prompts_start_at_documents_and_plain_windows_fill_in():
    text = [1, 2, 3, 4, 5, 6, EOS, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # two documents
    prompts = validation_prompts([chunk([text[:9], text[9:]])], count=3, new_tokens=3, block_size=4, eos_id=EOS)
    # block_size 4: prompts of 2 tokens, continuations of 2. Documents start at 0 and 7; the
    # third prompt is the first window of 4 that overlaps neither (at 12).
    assert [(p.ids, p.continuation) for p in prompts] == [([1, 2], [3, 4]), ([10, 11], [12, 13]),
                                                           ([15, 16], [17, 18])]
    assert validation_prompts([], 4, 64, 256, EOS) == [] and validation_prompts([chunk([text])], 0, 8, 8, EOS) == []


def test_the_same_prompts_at_every_interval_with_five_fields(sampled_run):
    table = json.loads((sampled_run / "text_samples.json").read_text())
    assert table["columns"] == COLUMNS
    rows = [dict(zip(COLUMNS, row)) for row in table["data"]]
    steps = sorted({row["step"] for row in rows})
    assert steps == [5, 10, 15, 20]
    by_step = {step: [(r["prompt"], r["true_continuation"]) for r in rows if r["step"] == step] for step in steps}
    assert len(by_step[5]) == 4  # train.sample_prompts
    assert all(pairs == by_step[5] for pairs in by_step.values())
    for row in rows:
        assert row["prompt"] and isinstance(row["generated"], str) and row["true_continuation"]
        assert 0.0 <= row["accuracy"] <= 1.0


def test_samples_load_with_load_exported(sampled_run):
    history, samples = analysis.load_exported(sampled_run.parent)
    assert list(samples.columns) == COLUMNS and len(samples) == 16
    assert samples.step.tolist()[:4] == [5] * 4 and samples.prompt[0] == samples.prompt[4]
    assert {"val_loss", "val_bpb"} <= set(history.columns)


def test_sampling_leaves_the_training_rng_untouched(sampled_run, tmp_path):
    """Dropout draws from the global RNG at every step: any draw by sampling would change the loss curve."""
    unsampled = train(tmp_path / "unsampled", **{"model.dropout": 0.1, "train.sample_prompts": 0})
    assert json.loads((unsampled / "text_samples.json").read_text())["data"] == []
    curve = [row["loss"] for row in json.loads((sampled_run / "metrics_history.json").read_text())]
    assert curve == [row["loss"] for row in json.loads((unsampled / "metrics_history.json").read_text())]


def test_seeded_samples_repeat_for_the_same_weights_and_greedy_needs_no_seed():
    config = build_config("test")
    config.model.vocab_size = ByteTokenizer.vocab_size
    torch.manual_seed(0)
    model = GPT(config.model)
    tokenizer = ByteTokenizer()
    val = [chunk([list(b"hello world, this is the validation text. " * 3) + [EOS] + list(b"second document! " * 8)])]
    sampler = make_sampler(config, model, tokenizer, torch.device("cpu"), val)
    state = torch.get_rng_state()
    first, second = sampler.sample(5), sampler.sample(10)
    assert torch.equal(state, torch.get_rng_state())  # the global generator was not drawn from
    assert [r["generated"] for r in first] == [r["generated"] for r in second] and model.training
    greedy = TextSampler(model, tokenizer, torch.device("cpu"), sampler.prompts, 8, temperature=0.0, seed=1)
    assert [r["generated"] for r in greedy.sample(1)] == [r["generated"] for r in greedy.sample(2)]


def test_a_sampler_that_fails_returns_no_rows():
    config = build_config("test")
    config.model.vocab_size = ByteTokenizer.vocab_size
    model = GPT(config.model)
    with torch.no_grad():
        model.wte.weight.fill_(math.nan)
    val = [chunk([list(range(40, 120))])]  # one window: prompt 32 + continuation 32 tokens
    sampler = make_sampler(config, model, ByteTokenizer(), torch.device("cpu"), val)
    assert sampler.sample(3) == []


# ---- bits per byte ------------------------------------------------------------------------------
def test_val_bpb_is_logged_at_eval_steps_and_is_val_loss_in_bits_per_byte(sampled_run):
    rows = json.loads((sampled_run / "metrics_history.json").read_text())
    evaluated = [row for row in rows if row["val_loss"] is not None]
    assert [row["step"] for row in evaluated] == [10, 20]
    assert all(row["val_bpb"] is None for row in rows if row["val_loss"] is None)
    # The byte tokenizer: a token is a byte, and EOS counts no bytes (its loss counts).
    config = build_config("test")
    targets = torch.cat([c.tokens[:, 1:].reshape(-1) for c in validation_chunks(config, ByteTokenizer())])
    per_byte = targets.numel() / int((targets != EOS).sum())
    for row in evaluated:
        assert row["val_bpb"] == pytest.approx(row["val_loss"] / math.log(2) * per_byte, rel=1e-6)


def test_evaluate_divides_the_loss_in_bits_by_the_bytes_of_the_targets():
    config = build_config("test")
    config.model.vocab_size = ByteTokenizer.vocab_size
    model = GPT(config.model)
    trainer = SlimPajamaTrainer(config, model, ByteTokenizer(), torch.device("cpu"), lambda: [])
    tokens = [[65 + (i % 26) for i in range(33)], [EOS] * 3 + [97] * 30]  # two EOS targets
    loss, _, bpb = trainer.evaluate([chunk(tokens)])
    targets = torch.tensor(tokens)[:, 1:]
    assert bpb == pytest.approx(loss / math.log(2) * targets.numel() / int((targets != EOS).sum()), rel=1e-6)
    assert all(math.isnan(v) for v in trainer.evaluate([]))


def test_byte_lengths_of_a_byte_level_bpe_add_up_to_the_text(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    text = "Grüße aus Köln — naïve café, 東京 and plain ASCII words. " * 20
    bpe.train_from_iterator([text], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(str(tmp_path / "tokenizer.json"))
    lengths = token_byte_lengths(tokenizer)
    ids = tokenizer.encode(text) + [tokenizer.eos_id]
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert int(lengths[tokenizer.eos_id]) == 0
    byte_lengths = token_byte_lengths(ByteTokenizer())
    assert byte_lengths[:256].tolist() == [1] * 256 and int(byte_lengths[256:].sum()) == 0
