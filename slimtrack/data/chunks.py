"""Token stream -> chunks: one chunk is B rows of T+1 tokens, one optimizer step.

``ChunkStream`` tokenises documents lazily, in order, and cuts the flat token stream
into chunks; ``make_chunks`` builds the stream of one dataset split.

Documents are encoded in pieces of about ``PIECE_CHARS`` characters, each when the
stream reaches it, so the tokens held at any time are bounded by the piece size, not by
the longest document; the document's text itself is kept until its last piece is encoded.
How a document is cut (``piece_bounds``):

- a tokenizer whose ``cuts_anywhere`` is true (the byte tokenizer: each character's
  UTF-8 bytes do not depend on its neighbours) is cut every ``PIECE_CHARS`` characters,
  and the pieces' tokens are exactly those of the whole text;
- any other tokenizer (a ``tokenizer.json`` BPE) is cut only where whitespace follows a
  non-whitespace character, at the first such place at or after ``PIECE_CHARS``
  characters (so a piece holds up to twice that; a run of non-whitespace longer than
  that is cut where the bound falls). Each piece is tokenised on its own, so the ids
  match those of the whole text except possibly at a cut: a GPT-2 style byte-level
  pre-tokenizer (no prefix space) splits before such whitespace anyway and gives the
  same ids; a tokenizer that adds a prefix (``add_prefix_space``, a SentencePiece
  ``Metaspace``) or normalises across the cut may differ there. Documents shorter than
  the piece size are one piece and tokenise exactly as whole.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from slimtrack.data.documents import iter_documents
from slimtrack.data.readers import Document, SkipStats
from slimtrack.data.tokenizer import Tokenizer

if TYPE_CHECKING:  # torch is imported where chunks are built, so the CLI's early checks stay fast
    import torch

PIECE_CHARS = 1 << 16  # characters of a document encoded at a time
_WORD_END = re.compile(r"\S\s")  # a non-whitespace character followed by whitespace


@dataclass
class Chunk:
    index: int  # 0-based position in the stream (one chunk = one optimizer step)
    tokens: torch.Tensor  # [B, T+1] int64; inputs tokens[:, :-1], targets tokens[:, 1:]
    sources: torch.Tensor  # [B, T+1] int64 index into ChunkStream.source_names


class ChunkStream:
    """Documents -> tokens (EOS after each document) -> chunks of B rows of T+1 tokens.

    The flat token stream is cut into consecutive, non-overlapping rows of T+1 tokens:
    row b+1 continues where row b ends, and row 0 of chunk k+1 where row B-1 of chunk k
    ends. Each token carries its document's source id (EOS the id of the document it
    ends). Documents are tokenised lazily, in order, a piece at a time (see the module
    docstring); the tokens that do not fill a last complete chunk are dropped.

    The stream is consumed once: iterating again continues where it stopped, and
    ``skip(n)`` drops the next n chunks (resume). ``max_chunks`` ends the stream once
    chunk index ``max_chunks - 1`` has been produced or skipped.
    """

    def __init__(self, documents: Iterable[Document], tokenizer: Tokenizer, batch_size: int, seq_len: int,
                 *, max_chunks: int | None = None, piece_chars: int = PIECE_CHARS):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be positive")
        if piece_chars < 1:
            raise ValueError(f"piece_chars ({piece_chars}) must be positive")
        self.batch_size, self.seq_len, self.max_chunks = batch_size, seq_len, max_chunks
        self.source_names: list[str] = []  # source id -> SlimPajama set name, in order of first appearance
        self._encode = tokenizer.encode_array
        self._eos = np.array([tokenizer.eos_id], dtype=np.int64)
        self._source_ids: dict[str, int] = {}
        self._pieces = self._token_pieces(iter(documents), piece_chars, tokenizer.cuts_anywhere)
        self._pending: deque[tuple[np.ndarray, int]] = deque()  # (tokens, source id) pieces in order
        self._pending_tokens = 0
        self._next_index = 0

    @property
    def tokens_per_chunk(self) -> int:
        return self.batch_size * (self.seq_len + 1)

    def __iter__(self) -> Iterator[Chunk]:
        import torch

        while self._has_next():
            tokens, sources = self._take(self.tokens_per_chunk)
            shape = (self.batch_size, self.seq_len + 1)
            chunk = Chunk(self._next_index, torch.from_numpy(tokens).view(shape), torch.from_numpy(sources).view(shape))
            self._next_index += 1
            yield chunk

    def skip(self, n: int) -> None:
        """Advance past the next n chunks exactly as iterating would, without building them."""
        for _ in range(n):
            if not self._has_next():
                return
            self._take(self.tokens_per_chunk, build=False)
            self._next_index += 1

    def _has_next(self) -> bool:
        if self.max_chunks is not None and self._next_index >= self.max_chunks:
            return False
        while self._pending_tokens < self.tokens_per_chunk:
            piece = next(self._pieces, None)
            if piece is None:
                return False
            self._pending.append(piece)
            self._pending_tokens += len(piece[0])
        return True

    def _token_pieces(self, documents: Iterator[Document], piece_chars: int,
                      cuts_anywhere: bool) -> Iterator[tuple[np.ndarray, int]]:
        """(tokens, source id) of each document piece in order, then (EOS, source id).

        Only the current document's text is held here, and only until its last piece is
        encoded, so the next document is read without it."""
        for document in documents:
            source_id = self._source_id(document.source)
            text = document.text
            del document
            for start, end in piece_bounds(text, piece_chars, cuts_anywhere):
                yield self._encode(text[start:end]), source_id
            del text
            yield self._eos, source_id

    def _source_id(self, source: str) -> int:
        source_id = self._source_ids.get(source)
        if source_id is None:
            source_id = self._source_ids[source] = len(self.source_names)
            self.source_names.append(source)
        return source_id

    def _take(self, count: int, build: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Remove the next ``count`` tokens from the front of the pending pieces."""
        token_parts, source_ids, lengths = [], [], []
        needed = count
        while needed:
            tokens, source_id = self._pending[0]
            if len(tokens) <= needed:
                self._pending.popleft()
            else:  # a view, so a long document is never copied more than once
                self._pending[0] = (tokens[needed:], source_id)
                tokens = tokens[:needed]
            token_parts.append(tokens)
            source_ids.append(source_id)
            lengths.append(len(tokens))
            needed -= len(tokens)
        self._pending_tokens -= count
        if not build:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        tokens = np.concatenate(token_parts).astype(np.int64, copy=False)
        sources = np.repeat(np.asarray(source_ids, dtype=np.int64), lengths)
        return tokens, sources


def piece_bounds(text: str, piece_chars: int, cuts_anywhere: bool) -> Iterator[tuple[int, int]]:
    """(start, end) of the consecutive pieces that cover ``text``; one piece when it is short.

    With ``cuts_anywhere`` every piece but the last holds ``piece_chars`` characters;
    otherwise a piece ends where whitespace follows a non-whitespace character, at the
    first such place at or after ``piece_chars`` characters, and after ``2 * piece_chars``
    characters when there is none before (see the module docstring)."""
    start = 0
    while len(text) - start > piece_chars:
        end = start + piece_chars
        if not cuts_anywhere:
            limit = min(len(text), end + piece_chars)
            word_end = _WORD_END.search(text, end - 1, limit)
            end = word_end.start() + 1 if word_end else limit
            if end == len(text):
                break
        yield start, end
        start = end
    yield start, len(text)


def make_chunks(dataset: str, split: str, tokenizer: Tokenizer, batch_size: int, seq_len: int, *,
                max_chunks: int | None = None, rank: int = 0, world_size: int = 1,
                piece_chars: int = PIECE_CHARS) -> tuple[ChunkStream, SkipStats]:
    """The chunk stream of a dataset split (with DDP, rank's share) and the SkipStats it
    fills while being read. A bad dataset name fails here, before any chunk is built."""
    skips = SkipStats()
    documents = iter_documents(dataset, split, skips, rank=rank, world_size=world_size)
    stream = ChunkStream(documents, tokenizer, batch_size, seq_len, max_chunks=max_chunks, piece_chars=piece_chars)
    return stream, skips

