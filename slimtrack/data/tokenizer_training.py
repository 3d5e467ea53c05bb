"""Train a byte-level BPE tokenizer on a dataset's train split, offline.

``train_tokenizer`` streams the split's documents (``iter_documents``: the embedded corpus,
a local SlimPajama folder or file, or a hub id) into Hugging Face ``tokenizers``' BPE
trainer and writes a ``tokenizer.json`` that ``load_tokenizer(path)`` (``--tokenizer
PATH.json``) reads without the hub.

The tokenizer is byte-level, like GPT-2's: every text encodes (no unknown token) and
decodes back to itself. Its one special token is ``<|endoftext|>``, id 0, which
``HuggingFaceTokenizer`` finds as its EOS. ``vocab_size`` counts it: a vocabulary of N
holds the 256 byte symbols, the special token and up to N - 257 learned merges.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from slimtrack.data.documents import SkipStats, iter_documents
from slimtrack.data.tokenizer import EOS_MARKER
from slimtrack.errors import UserError
from slimtrack.runtime.files import atomic_write_bytes, check_writable

SPECIAL_TOKENS = (EOS_MARKER,)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 1 << 18  # above the largest vocabularies in use (about 256k)


@dataclass
class TokenizerTraining:
    """What ``slimtrack tokenizer train`` is asked for."""

    dataset: str
    vocab_size: int
    out: Path
    max_documents: int | None = None  # None: the whole train split
    min_frequency: int = 2  # a pair seen fewer times is never merged


@dataclass
class TrainedTokenizer:
    path: Path  # where the tokenizer.json went
    vocab_size: int  # its real vocabulary, special token included
    documents: int  # documents read


def train_tokenizer(request: TokenizerTraining) -> TrainedTokenizer:
    """Check the request, train on the dataset's train split and write the file atomically.

    Bad input (vocabulary size, output path, dataset name) raises a ``UserError`` before
    any document is read."""
    check_vocab_size(request.vocab_size)
    path = output_path(request.out)
    documents = iter_documents(request.dataset, "train", SkipStats())  # an unknown dataset fails here
    counter = _Counter()
    texts = counter.count(_texts(documents, request.max_documents))
    tokenizer = _train(texts, request.vocab_size, request.min_frequency, request.max_documents)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, tokenizer.to_str().encode("utf-8"))
    return TrainedTokenizer(path, tokenizer.get_vocab_size(with_added_tokens=True), counter.seen)


def check_vocab_size(vocab_size: int) -> None:
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise UserError(f"--vocab-size must be between {MIN_VOCAB_SIZE} (256 bytes and {len(SPECIAL_TOKENS)} "
                        f"special token) and {MAX_VOCAB_SIZE}, got {vocab_size}")


def output_path(out: Path) -> Path:
    """The file to write: ``out``, or ``out/tokenizer.json`` when ``out`` is a folder.
    Fails fast when it cannot be written; creates nothing."""
    path = Path(out).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    check_writable(path.parent, "--out", out)
    return path


class _Counter:
    """Counts the texts that pass through it."""

    def __init__(self) -> None:
        self.seen = 0

    def count(self, texts: Iterator[str]) -> Iterator[str]:
        for text in texts:
            self.seen += 1
            yield text


def _texts(documents: Iterator[Any], max_documents: int | None) -> Iterator[str]:
    """The documents' texts, the first ``max_documents`` of them, with a progress bar on stderr."""
    from tqdm import tqdm

    texts = (document.text for document in documents)
    if max_documents is not None:
        texts = islice(texts, max_documents)
    yield from tqdm(texts, total=max_documents, desc="tokenizer", unit="doc", file=sys.stderr, dynamic_ncols=True)


def _train(texts: Iterator[str], vocab_size: int, min_frequency: int, length: int | None) -> Any:
    """A byte-level BPE trained on ``texts`` (read once, as a stream)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return tokenizer
