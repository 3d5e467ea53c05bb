"""Tokenizers: a byte-level default that needs nothing, and Hugging Face tokenizers.

``load_tokenizer(spec)`` understands three kinds of spec:

- ``"byte"`` (the default): UTF-8 bytes are the tokens 0-255, EOS is 256. Works offline.
- a path to a ``tokenizer.json`` (or a folder holding one): loaded with ``tokenizers``.
- anything else: a Hugging Face hub model name whose ``tokenizer.json`` is fetched
  (or taken from the local hub cache). When the hub is unreachable and the file is not
  cached this fails at once with a ``UserError`` naming the offline options.

Every tokenizer reports ``vocab_size`` padded up to a multiple of 64, so the model's
embedding table is a friendly shape; ids in the padding are never produced by ``encode``
and are ignored by ``decode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from slimtrack.errors import UserError
from slimtrack.data.hub import hub_offline_reason

VOCAB_MULTIPLE = 64
EOS_MARKER = "<|endoftext|>"
# Special tokens that mean "end of document" in common tokenizers, most specific first.
KNOWN_EOS_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]", "<|im_end|>")
OFFLINE_HINT = "use 'byte' (the default, offline) or a path to a local tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    name: str  # "byte", the tokenizer.json path, or the hub name
    vocab_size: int  # padded up to a multiple of 64
    eos_id: int
    # True when encoding a text in consecutive pieces, cut anywhere, gives exactly the ids
    # of encoding it whole (the data pipeline then cuts long documents anywhere).
    cuts_anywhere: bool

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...  # same ids as encode, as a 1-D integer array

    def decode(self, ids: Sequence[int]) -> str: ...  # never raises on ids < vocab_size


def pad_vocab_size(size: int, multiple: int = VOCAB_MULTIPLE) -> int:
    return -(-size // multiple) * multiple


def _as_int_list(ids: Any) -> list[int]:
    """Plain ints from a list, a numpy array or a (CPU or GPU) torch tensor."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255 and EOS = 256; vocabulary 257 padded to 320.

    ``decode`` turns each EOS into the visible marker ``<|endoftext|>`` (so document
    boundaries show in text samples), drops ids that are not bytes (negative or in the
    padding), and replaces invalid UTF-8 with U+FFFD instead of raising.
    """

    name = "byte"
    eos_id = 256
    vocab_size = pad_vocab_size(257)
    cuts_anywhere = True  # a character's UTF-8 bytes do not depend on its neighbours

    def encode(self, text: str) -> list[int]:
        return list(self._utf8(text))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(self._utf8(text), dtype=np.uint8)

    @staticmethod
    def _utf8(text: str) -> bytes:
        # "replace" only matters for lone surrogates, which JSON escapes can produce.
        return text.encode("utf-8", errors="replace")

    def decode(self, ids: Sequence[int]) -> str:
        pieces: list[str] = []
        run = bytearray()
        for token in _as_int_list(ids):
            if 0 <= token < 256:
                run.append(token)
            elif token == self.eos_id:
                pieces.append(run.decode("utf-8", errors="replace") + EOS_MARKER)
                run.clear()
        pieces.append(run.decode("utf-8", errors="replace"))
        return "".join(pieces)


class HuggingFaceTokenizer:
    """A ``tokenizers.Tokenizer`` with an EOS token (found among its specials, or added)."""

    cuts_anywhere = False  # merges and pre-tokenization look across neighbouring characters

    def __init__(self, tokenizer: Any, name: str):
        tokenizer.no_truncation()  # documents are cut into chunks later, never truncated here
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.name = name
        self.eos_id = self._find_or_add_eos(tokenizer)
        self._real_size = max(max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1, self.eos_id + 1)
        self.vocab_size = pad_vocab_size(self._real_size)

    @staticmethod
    def _find_or_add_eos(tokenizer: Any) -> int:
        for token in KNOWN_EOS_TOKENS:
            token_id = tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        tokenizer.add_special_tokens([EOS_MARKER])
        return int(tokenizer.token_to_id(EOS_MARKER))

    def encode(self, text: str) -> list[int]:
        # No BOS/EOS templates: the data pipeline appends EOS after each document itself.
        try:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        except Exception:  # lone surrogates cannot cross into Rust; replace them and retry
            clean = text.encode("utf-8", errors="replace").decode("utf-8")
            return self._tokenizer.encode(clean, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Sequence[int]) -> str:
        known = [i for i in _as_int_list(ids) if 0 <= i < self._real_size]
        try:
            return self._tokenizer.decode(known, skip_special_tokens=False)
        except Exception:  # a decoder that chokes on some id sequence must not stop training
            return ""


def load_tokenizer(spec: str = "byte") -> Tokenizer:
    """The tokenizer named by ``spec``: "byte", a tokenizer.json path, or a hub model name."""
    if spec == "byte":
        return ByteTokenizer()
    path = local_tokenizer_file(spec)
    if path is not None:
        return _from_file(path, name=spec)
    if _looks_like_path(spec):
        raise UserError(f"tokenizer {spec!r}: no such file; {OFFLINE_HINT}")
    return _from_hub(spec)


def local_tokenizer_file(spec: str) -> Path | None:
    """The local ``tokenizer.json`` that ``spec`` names (the file, or a folder holding one);
    None for "byte" and for names that are no local file (hub names)."""
    if spec == "byte":
        return None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "tokenizer.json").is_file():
        path = path / "tokenizer.json"
    return path if path.is_file() else None


def tokenizer_file(spec: str) -> Path | None:
    """The ``tokenizer.json`` a run with ``--tokenizer spec`` reads: the local file, or a hub
    name's file in the local hub cache; None for "byte" and for what is neither."""
    path = local_tokenizer_file(spec)
    if path is not None or spec == "byte" or _looks_like_path(spec):
        return path
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(spec, "tokenizer.json", local_files_only=True))
    except Exception:  # not cached, not a repo id, or huggingface_hub missing
        return None


def byte_tokenizer_definition() -> dict[str, Any]:
    """The byte tokenizer described as JSON data (logged beside runs that use it)."""
    tokenizer = ByteTokenizer()
    return {"kind": "byte", "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
            "eos_token": EOS_MARKER, "encoding": "utf-8",
            "description": "token i < 256 is the byte i of the UTF-8 text; 256 ends a document; "
                           "ids above 256 are padding and never produced"}


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".json") or spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def _from_file(path: Path, name: str) -> HuggingFaceTokenizer:
    from tokenizers import Tokenizer as RustTokenizer

    try:
        return HuggingFaceTokenizer(RustTokenizer.from_file(str(path)), name=name)
    except Exception as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"tokenizer {str(path)!r} is not a readable tokenizer.json: {first_line}") from None


def _from_hub(name: str) -> HuggingFaceTokenizer:
    """Fetch ``tokenizer.json`` of a hub model, from the local cache first so offline use works."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise UserError(f"tokenizer {name!r}: huggingface_hub is not installed; {OFFLINE_HINT}") from None
    try:
        return _from_file(Path(hf_hub_download(name, "tokenizer.json", local_files_only=True)), name=name)
    except UserError:
        raise
    except Exception:
        pass  # not cached (or not a valid repo id): ask the hub below
    reason = hub_offline_reason()
    if reason is not None:
        raise UserError(f"tokenizer {name!r} is not cached and the Hugging Face hub is unavailable ({reason}); "
                        f"{OFFLINE_HINT}")
    try:
        return _from_file(Path(hf_hub_download(name, "tokenizer.json")), name=name)
    except UserError:
        raise
    except Exception as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"tokenizer {name!r}: no tokenizer.json on the hub ({first_line}); {OFFLINE_HINT}") from None
