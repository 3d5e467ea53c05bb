"""Which documents are held out for validation: one share, two rules, one hash.

Both rules hold out ``VALIDATION_SHARE`` of the documents, chosen by ``stable_hash`` (an
8-byte BLAKE2 digest), so the split is the same on every machine and in every run, and
train and validation never overlap. They differ because they see different things:

- ``is_held_out`` (local data files without a ``validation/`` folder, ``documents.py``):
  the files are streamed, so each document is classified on its own, from its text,
  when it is read. A document is held out when its text hash falls in bucket 0 of
  ``HELD_OUT_BUCKETS``: the share is exact only on average, and a dataset of a few dozen
  documents may get an empty validation split.
- ``held_out_names`` (the embedded corpus, ``embedded.py``): every document's name is
  known before any is read, so exactly the ceil(share * n) names with the smallest hash
  are held out, per set: the validation split is never empty and holds every set.

The bucket rule cannot be exact without reading a whole dataset first; the embedded
corpus keeps the exact rule because changing it would change its split, and with it
every run's validation numbers.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable

from slimtrack.data.readers import Document

VALIDATION_SHARE = 0.02
HELD_OUT_BUCKETS = round(1 / VALIDATION_SHARE)  # 50 buckets: bucket 0 is 2% of the hashes


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def is_held_out(document: Document) -> bool:
    """Whether a streamed document belongs to the carved validation share (by its text)."""
    return stable_hash(document.text) % HELD_OUT_BUCKETS == 0


def held_out_names(names: Iterable[str], share: float = VALIDATION_SHARE) -> set[str]:
    """The ceil(share * n) names with the smallest stable hash (at least one of a non-empty set)."""
    names = list(names)
    count = math.ceil(share * len(names))
    return set(sorted(names, key=stable_hash)[:count])
