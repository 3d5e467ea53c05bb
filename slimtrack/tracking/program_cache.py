"""Exported programs kept between runs of one architecture, and refilled with new weights.

A run's logged model is a ``torch.export`` program (a ``.pt2`` archive, export.py). The
program depends on the architecture alone (the ModelConfig fields, the input length, the
model's source and torch's version); the weights are data inside the archive. So after a
run has exported its model, :class:`ProgramCache` keeps that archive as the template of its
architecture, and the next run of the same architecture writes its model's program with
:func:`write_with_weights`: the template's files, with each weight's raw bytes replaced by
the new tensor's. That takes milliseconds and imports nothing, where an export imports
torch's exporter and traces the model in a process of its own for seconds.

``write_with_weights`` relies on the archive's layout (``data/weights/*`` raw tensor
files described by ``model_weights_config.json``). It checks every weight against that
description first and writes nothing it cannot vouch for: a template of another layout
(a torch upgrade) is refused, and the run exports its model as before.

The cache folder is ``tracking.program_cache`` (default ``$XDG_CACHE_HOME/slimtrack/programs``
or ``~/.cache/slimtrack/programs``; ``off`` turns the cache off).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping

from slimtrack import __version__

CACHE_OFF = "off"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"  # inside the archive's top folder
WEIGHTS_DIR = "data/weights/"
FLOAT_TYPES = {6: "float16", 7: "float32", 8: "float64", 13: "bfloat16"}  # torch.export's ScalarType codes
MODEL_SOURCE = Path(__file__).parents[1] / "train" / "model.py"  # the GPT the program traces


def cache_folder(setting: str) -> Path | None:
    """The folder ``tracking.program_cache`` names: '' is the user's cache folder, 'off' none."""
    if setting == CACHE_OFF:
        return None
    if setting:
        return Path(setting).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "slimtrack" / "programs"


def program_key(model_config: Mapping[str, Any], seq_len: int) -> str:
    """What a program depends on, hashed: the architecture, the example's length, the model's
    source and the versions of torch and slimtrack."""
    described = json.dumps({"model": dict(model_config), "seq_len": seq_len, "torch": version("torch"),
                            "slimtrack": __version__}, sort_keys=True)
    digest = hashlib.sha256(described.encode())
    digest.update(MODEL_SOURCE.read_bytes())
    return digest.hexdigest()[:32]


class ProgramCache:
    """Templates by architecture in ``folder`` (None: no cache; every call is then a no-op)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @classmethod
    def of_run(cls, config: Any) -> tuple["ProgramCache", dict[str, Any], int]:
        """The cache a run's Config names, with the run's architecture (its ModelConfig fields)
        and input length, the arguments of every call below."""
        import dataclasses

        return cls(cache_folder(config.tracking.program_cache)), dataclasses.asdict(config.model), config.data.seq_len

    def template(self, model_config: Mapping[str, Any], seq_len: int) -> Path | None:
        """The kept program of this architecture, when there is one."""
        if self.folder is None:
            return None
        path = self.folder / f"{program_key(model_config, seq_len)}.pt2"
        return path if path.is_file() else None

    def keep(self, program: Path, model_config: Mapping[str, Any], seq_len: int) -> None:
        """Keep ``program`` as its architecture's template (a copy, renamed into place, so a
        reader never sees half a file). A cache that cannot be written is no error."""
        if self.folder is None or not program.is_file():
            return
        part: Path | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=self.folder, suffix=".part")
            os.close(handle)
            part = Path(name)
            shutil.copyfile(program, part)
            os.replace(part, self.folder / f"{program_key(model_config, seq_len)}.pt2")
        except OSError:
            if part is not None:
                part.unlink(missing_ok=True)

    def forget(self, model_config: Mapping[str, Any], seq_len: int) -> None:
        """Drop this architecture's template (one that no longer fits its weights)."""
        if (path := self.template(model_config, seq_len)) is not None:
            path.unlink(missing_ok=True)


def write_with_weights(template: Path, weights: Mapping[str, Any], out: Path) -> bool:
    """Write into ``out`` the program ``template`` with ``weights`` (name -> tensor, the model's
    state dict) in place of its own. False, with nothing written, when the template's weights
    are not exactly these names, shapes and dtypes in raw files, or it is no readable archive."""
    try:
        with zipfile.ZipFile(template) as archive:
            names = archive.namelist()
            root = names[0].split("/", 1)[0] + "/"
            config = json.loads(archive.read(root + WEIGHTS_CONFIG))["config"]
            files = _weight_files(config, weights, {info.filename: info.file_size for info in archive.infolist()},
                                  root)
            if files is None:
                return False
            out.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as written:
                for name in names:
                    written.writestr(name, files[name] if name in files else archive.read(name))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        out.unlink(missing_ok=True)
        return False
    return True


def _weight_files(config: Mapping[str, Any], weights: Mapping[str, Any], sizes: Mapping[str, int],
                  root: str) -> dict[str, bytes] | None:
    """Archive path -> the new raw bytes of the weight stored there; None when any weight of
    the template or of ``weights`` has no exact counterpart (name, shape, dtype, a whole
    contiguous raw file)."""
    if set(config) != set(weights):
        return None
    files: dict[str, bytes] = {}
    for name, meta in config.items():
        tensor = weights[name]
        tensor_meta = meta.get("tensor_meta") or {}
        shape = [size.get("as_int") for size in tensor_meta.get("sizes", [])]
        path = root + WEIGHTS_DIR + meta["path_name"]
        if (meta.get("use_pickle") or shape != list(tensor.shape)
                or FLOAT_TYPES.get(tensor_meta.get("dtype")) != str(tensor.dtype).removeprefix("torch.")
                or (tensor_meta.get("storage_offset") or {}).get("as_int") != 0
                or sizes.get(path) != tensor.numel() * tensor.element_size()):
            return None
        data = _raw_bytes(tensor)
        if files.setdefault(path, data) != data:  # tied weights share one file: they must agree
            return None
    return files


def _raw_bytes(tensor: Any) -> bytes:
    """The tensor's elements as stored (native byte order), any float dtype."""
    import torch  # the caller's tensors are torch's: it is imported already

    return tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()
