"""The embedded corpus: text every Python installation carries, as SlimPajama records.

Two sets, named like SlimPajama's ``meta.redpajama_set_name``:

- ``PythonStdlibSource``: the standard library's non-empty ``*.py`` files (below
  ``sysconfig.get_paths()["stdlib"]``, without site-packages and without
  ``pydoc_data/topics.py``, which is the other set in Python syntax). The few files
  that are not UTF-8 (deliberately, in the test suite) are skipped and counted.
- ``PythonDocs``: the documentation topics of ``pydoc_data.topics.topics``.

Order: each set sorted by name, shuffled with a fixed seed, then the two interleaved
evenly (each document gets a fixed-seed position in [0, 1) spread over its set), so
both sets appear from the first few dozen documents on. Nothing depends on directory
listing order or on what is installed in site-packages: the same Python version gives
the same corpus on every machine (distributions that split the stdlib into packages,
e.g. Debian without ``python3-tk``/tests, have fewer files).

Validation: in each set, the ceil(2%) documents with the smallest stable hash of their
name (``set:relative/path``) are held out (``holdout.held_out_names``). Train and
validation are disjoint by construction and both contain both sets.
"""

from __future__ import annotations

import os
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from slimtrack.data.holdout import held_out_names
from slimtrack.data.readers import Document, Shard, SkipStats, document_from_record
from slimtrack.errors import UserError

STDLIB_SET = "PythonStdlibSource"
DOCS_SET = "PythonDocs"
SHUFFLE_SEED = 20240627
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_EXCLUDED_FILES = {"pydoc_data/topics.py"}


@dataclass(frozen=True)
class Entry:
    """One document of the corpus, not read yet: reading happens lazily while iterating."""

    set_name: str
    key: str  # relative POSIX path (stdlib) or topic name (docs)

    @property
    def name(self) -> str:
        """``set:key``: what the held-out rule hashes, and the file name in skip counts."""
        return f"{self.set_name}:{self.key}"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_entries(root: Path) -> list[Entry]:
    keys = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in _EXCLUDED_DIRS]  # never walk site-packages
        for name in files:
            path = Path(folder, name)
            key = path.relative_to(root).as_posix()
            # empty __init__.py files are not documents, nor bad records
            if name.endswith(".py") and key not in _EXCLUDED_FILES and path.stat().st_size > 0:
                keys.append(key)
    return [Entry(STDLIB_SET, key) for key in sorted(keys)]


def docs_entries() -> list[Entry]:
    from pydoc_data.topics import topics

    return [Entry(DOCS_SET, key) for key in sorted(topics)]


def interleave(sets: list[list[Entry]], seed: int = SHUFFLE_SEED) -> list[Entry]:
    """Shuffle each set, then merge them so every set is spread evenly over the whole order."""
    rng = random.Random(seed)
    positioned = []
    for entries in sets:
        shuffled = list(entries)
        rng.shuffle(shuffled)
        positioned.extend(((i + rng.random()) / len(shuffled), entry) for i, entry in enumerate(shuffled))
    return [entry for _, entry in sorted(positioned, key=lambda pair: (pair[0], pair[1].set_name, pair[1].key))]


def check_split(split: str) -> None:
    """UserError unless ``split`` is "train" or "validation", the corpus's two splits."""
    if split not in ("train", "validation"):
        raise UserError(f"the embedded corpus has splits 'train' and 'validation', not {split!r}")


def embedded_entries(split: str) -> list[Entry]:
    """The ordered entries of the "train" or "validation" split."""
    check_split(split)
    sets = [stdlib_entries(stdlib_root()), docs_entries()]
    chosen = []
    for entries in sets:
        validation = held_out_names(entry.name for entry in entries)
        chosen.append([e for e in entries if (e.name in validation) == (split == "validation")])
    return interleave(chosen)


def iter_embedded(split: str, skips: SkipStats, shard: Shard) -> Iterator[Document]:
    """Documents of the embedded corpus in its fixed order; files that fail to decode are counted."""
    from pydoc_data.topics import topics

    root = stdlib_root()
    for entry in embedded_entries(split):
        if not shard.take():
            continue
        label = entry.name
        try:
            text = topics[entry.key] if entry.set_name == DOCS_SET else (root / entry.key).read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # a few test files are deliberately not UTF-8
            skips.add("bad_utf8", label)
            continue
        except OSError:
            skips.add("corrupt_file", label)
            continue
        document = document_from_record({"text": text, "meta": {"redpajama_set_name": entry.set_name}})
        if isinstance(document, str):
            skips.add(document, label)
        else:
            yield document
