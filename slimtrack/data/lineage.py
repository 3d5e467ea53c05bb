"""Dataset lineage: what a run trained and validated on, as MLflow dataset inputs.

``describe_split`` names a dataset split without reading its records: a name, the kind
of source (``embedded``, ``local``, ``hub``), the source itself, the record schema, and
a digest. The digest changes when the data changes and costs no pass over the corpus:

- local files: their paths relative to the dataset, their sizes and modification times;
- the embedded corpus: the Python version and the sizes of the files it is built from;
- a hub dataset: its id and the revision asked for (the hub resolves it; offline there
  is nothing more to know).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from slimtrack.data import embedded
from slimtrack.data.documents import EMBEDDED, local_split_files, looks_like_hub_id

# SlimPajama's record schema, in MLflow's column-spec form (the UI shows it under Datasets).
RECORD_SCHEMA = json.dumps({"mlflow_colspec": [
    {"type": "string", "name": "text", "required": True},
    {"type": "string", "name": "meta.redpajama_set_name", "required": False},
]})


@dataclass(frozen=True)
class SplitDescription:
    name: str  # e.g. "embedded/train", "<folder name>/validation"
    source_type: str  # embedded | local | hub
    source: str  # JSON: where the records come from
    digest: str  # short hex; changes when the data does
    schema: str = RECORD_SCHEMA

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def describe_split(dataset: str, split: str) -> SplitDescription:
    """The split as a dataset input; reads file metadata only, never the records."""
    if dataset == EMBEDDED:
        root = embedded.stdlib_root()
        files = [root / entry.key for entry in embedded.stdlib_entries(root)]
        facts = [sys.version.split()[0], *(f"{f.relative_to(root)}:{_size(f)}" for f in files)]
        return SplitDescription(f"embedded/{split}", "embedded",
                                json.dumps({"corpus": "embedded", "python": sys.version.split()[0], "split": split}),
                                _digest([split, *facts]))
    path = Path(dataset).expanduser()
    if path.exists():
        files = local_split_files(path, split)
        facts = [f"{_relative(f, path)}:{_size(f)}:{_mtime(f)}" for f in files]
        return SplitDescription(f"{path.resolve().name}/{split}", "local",
                                json.dumps({"path": str(path.resolve()), "split": split, "files": len(files)}),
                                _digest([split, *facts]))
    if looks_like_hub_id(dataset):
        return SplitDescription(f"{dataset}/{split}", "hub",
                                json.dumps({"hub_id": dataset, "split": split, "revision": "main"}),
                                _digest([dataset, split, "main"]))
    raise ValueError(f"not a dataset name: {dataset!r}")


def _digest(facts: list[str]) -> str:
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name
