"""Tokenizers: the offline byte tokenizer, a real tokenizer.json, and the offline hub error."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from slimtrack.errors import UserError
from slimtrack.data.tokenizer import EOS_MARKER, ByteTokenizer, HuggingFaceTokenizer, Tokenizer, load_tokenizer, pad_vocab_size

UNICODE_TEXT = "naïve café — 東京 🚀 ✓\n\tend"


def test_byte_round_trip_on_unicode():
    tokenizer = load_tokenizer("byte")
    ids = tokenizer.encode(UNICODE_TEXT)
    assert ids == list(UNICODE_TEXT.encode("utf-8"))
    assert tokenizer.decode(ids) == UNICODE_TEXT
    assert tokenizer.encode_array(UNICODE_TEXT).tolist() == ids


def test_byte_vocab_and_eos():
    tokenizer = load_tokenizer()
    assert isinstance(tokenizer, Tokenizer)
    assert (tokenizer.name, tokenizer.eos_id, tokenizer.vocab_size) == ("byte", 256, 320)


def test_byte_decode_never_raises():
    tokenizer = ByteTokenizer()
    ids = list(range(-3, tokenizer.vocab_size))  # bytes, EOS, padding, and a few negatives
    text = tokenizer.decode(ids)
    assert text.count(EOS_MARKER) == 1
    assert tokenizer.decode([0xE6, 0x9D]) == "\ufffd"  # a cut multi-byte character is replaced
    assert tokenizer.decode(torch.tensor([104, 105, 256, 104])) == f"hi{EOS_MARKER}h"
    assert tokenizer.decode(np.array([], dtype=np.int64)) == ""


def test_byte_encode_survives_lone_surrogates():
    assert ByteTokenizer().encode("a\ud800b") == [97, 63, 98]


@pytest.mark.parametrize("size, padded", [(1, 64), (64, 64), (65, 128), (257, 320), (50257, 50304)])
def test_vocab_padding(size, padded):
    assert pad_vocab_size(size) == padded


def _train_bpe(tmp_path, special_tokens):
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    rust = RustTokenizer(models.BPE(unk_token="[UNK]"))
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", *special_tokens],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world", "the the the", UNICODE_TEXT] * 5
    rust.train_from_iterator(corpus, trainer)
    from tokenizers import decoders

    rust.decoder = decoders.ByteLevel()
    path = tmp_path / "tokenizer.json"
    rust.save(str(path))
    return path


def test_tokenizer_json_with_known_eos(tmp_path):
    path = _train_bpe(tmp_path, ["<|endoftext|>"])
    tokenizer = load_tokenizer(str(path))
    assert isinstance(tokenizer, HuggingFaceTokenizer)
    assert tokenizer.name == str(path)
    assert tokenizer.eos_id == 1  # the trained special token, not a new one
    assert tokenizer.vocab_size % 64 == 0 and tokenizer.vocab_size > tokenizer.eos_id
    ids = tokenizer.encode("the quick brown fox")
    assert len(ids) < len("the quick brown fox")  # merges were learned
    assert tokenizer.decode(ids) == "the quick brown fox"
    assert tokenizer.decode(tokenizer.encode(UNICODE_TEXT)) == UNICODE_TEXT
    assert tokenizer.encode_array("hello world").tolist() == tokenizer.encode("hello world")
    assert isinstance(tokenizer.decode(list(range(tokenizer.vocab_size))), str)  # padding ids ignored


def test_tokenizer_json_without_eos_gets_one_added(tmp_path):
    path = _train_bpe(tmp_path, [])
    tokenizer = load_tokenizer(str(tmp_path))  # the folder holding tokenizer.json works too
    assert tokenizer.decode([tokenizer.eos_id]) == EOS_MARKER
    assert tokenizer.eos_id < tokenizer.vocab_size
    assert path.exists()


def test_unreadable_tokenizer_json_is_a_user_error(tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(UserError, match="not a readable tokenizer.json"):
        load_tokenizer(str(broken))
    with pytest.raises(UserError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing.json"))


def test_unknown_hub_name_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        load_tokenizer("made-up-owner/made-up-tokenizer-xyz")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "\n" not in message and "byte" in message and "tokenizer.json" in message


def test_hub_name_with_offline_variable_is_immediate(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        load_tokenizer("gpt2")
    assert time.monotonic() - started < 5
