"""The final model of a run as an MLflow model.

``log_pt2_model`` logs the model (``runs:/<id>/model``, also ``models:/<model_id>``) as an
exported program (torch.export, the 'pt2' format: loading it runs no pickled code) whose
batch and sequence dimensions are dynamic: any batch, any length from 1 to ``block_size``.

Given the run's tokenizer file, the one MLmodel carries two flavours over the same program:

- ``python_function``: text in, text out (pyfunc_model.py, stored as code in the model, which
  imports no slimtrack): ``mlflow.pyfunc.load_model(uri).predict(["prompt", ...])`` and
  ``mlflow models serve`` give continuations, with params ``max_new_tokens``, ``temperature``,
  ``top_k`` and ``seed``;
- ``pytorch``: ``mlflow.pytorch.load_model(uri)`` gives the raw module, token ids [B, T] ->
  logits [B, T, V].

The model's ``artifacts/`` folder holds ``model.pt2``, the tokenizer (its ``tokenizer.json``,
or the byte tokenizer's definition) and ``text_model.json`` (``block_size``, ``vocab_size``).
Without a tokenizer file the model is logged with the pytorch flavour only.

``--register-model NAME`` makes it a new version of NAME in the model registry, tagged with
the run's final metrics.

A run's model is logged from its final checkpoint (``log_checkpoint_model``) where the
sink runs, in the MLflow process, so the training process imports neither MLflow nor the
exporter; the program comes from the export process, prepared while the run trains
(export.py), and this module only logs the file. The MLflow process imports what logging
needs ahead too (``import_for_logging``).
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from slimtrack.tracking.export import (ExportError, ExportProcess, example_ids, export_program, load_model,
                                       write_program)

VERSION_TAG_METRICS = ("val_loss", "val_accuracy", "val_bpb", "loss", "accuracy")  # tags of a registered version
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the pyfunc's code, copied into the model
PROGRAM_FILE = "model.pt2"  # the name mlflow.pytorch loads from the pytorch flavour's folder
CONFIG_FILE = "text_model.json"
ARTIFACTS_DIR = "artifacts"  # where mlflow.pyfunc stores a model's artifacts


def import_for_logging() -> None:
    """Import what logging a text model needs (MLflow's pyfunc, pandas) and build MLflow's index
    of the installed packages, which it checks a model's requirements against."""
    import pandas  # noqa: F401
    from mlflow import pyfunc  # noqa: F401
    from mlflow.utils.requirements_utils import _init_modules_to_packages_map

    _init_modules_to_packages_map()


def log_checkpoint_model(run_id: str, checkpoint: Path, model_config: dict[str, Any], seq_len: int,
                         tokenizer_file: Path | None = None, register_as: str = "",
                         exporter: ExportProcess | None = None, program: Path | None = None) -> str | None:
    """Log the model whose weights the checkpoint holds: with ``tokenizer_file``, as a text model
    whose program is the file ``program`` when it exists (the training process wrote it,
    program_cache.py), else the one ``exporter`` writes there (else exported in this
    process); without, the module itself (the pytorch flavour). Returns the registered
    version. ExportError when the model cannot be rebuilt or exported."""
    if tokenizer_file is None:
        model = load_model(checkpoint, model_config)
        return log_pt2_model(run_id, model, example_ids(seq_len), register_as)
    with tempfile.TemporaryDirectory(prefix="slimtrack-program-") as tmp:
        program = program or Path(tmp) / PROGRAM_FILE
        if not program.is_file():
            program.parent.mkdir(parents=True, exist_ok=True)
            if exporter is not None:
                exporter.write_program(checkpoint, model_config, seq_len, program)
            else:
                write_program(checkpoint, model_config, seq_len, program)
        return _logged(run_id, register_as, lambda: log_text_model(program, model_config, tokenizer_file, register_as))


def log_pt2_model(run_id: str, model: Any, input_example: Any, register_as: str = "",
                  tokenizer_file: Path | None = None) -> str | None:
    """Log the model into the run (with ``tokenizer_file``, as a text model with both
    flavours, exported here); with ``register_as``, also register it as a new version of that
    model, tagged with the run's final validation metrics. Returns the version."""
    if tokenizer_file is None:
        return _logged(run_id, register_as, lambda: log_tensor_model(model, input_example, register_as))
    import torch

    config = {"block_size": int(model.config.block_size), "vocab_size": int(model.config.vocab_size)}
    with tempfile.TemporaryDirectory(prefix="slimtrack-program-") as tmp:
        program = Path(tmp) / PROGRAM_FILE
        try:
            torch.export.save(export_program(model, input_example), str(program))
        except Exception as exc:  # noqa: BLE001 — a model torch.export cannot trace
            raise ExportError(f"exporting the model failed: {exc}") from exc
        return _logged(run_id, register_as, lambda: log_text_model(program, config, Path(tokenizer_file), register_as))


def _logged(run_id: str, register_as: str, log_model: Any) -> str | None:
    """Run ``log_model`` (which logs into the active run) inside the run ``run_id``; tag the
    registered version, if any, with the run's final metrics. Returns the version."""
    import mlflow

    with mlflow.start_run(run_id=run_id):  # log_model wants an active run: ours
        info = log_model()
    version = getattr(info, "registered_model_version", None)
    if register_as and version is not None:
        client = mlflow.MlflowClient()
        metrics = client.get_run(run_id).data.metrics
        for key in VERSION_TAG_METRICS:
            if key in metrics:
                client.set_model_version_tag(register_as, str(version), key, str(metrics[key]))
        client.set_model_version_tag(register_as, str(version), "run_id", run_id)
    return None if version is None else str(version)


def text_signature() -> Any:
    """Prompts (a string column ``prompt``) in, continuations (strings) out, with the
    decoding params and their defaults (pyfunc_model.PARAM_DEFAULTS)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    params = ParamSchema([ParamSpec("max_new_tokens", DataType.long, 200), ParamSpec("temperature", DataType.double, 0.8),
                          ParamSpec("top_k", DataType.long, 50), ParamSpec("seed", DataType.long, -1)])
    return ModelSignature(inputs=Schema([ColSpec(DataType.string)]),
                          outputs=Schema([ColSpec(DataType.string)]), params=params)


class TextModelFlavor:
    """What ``mlflow.models.Model.log`` calls to write the model folder: the pyfunc (code and
    artifacts), then the pytorch flavour over the same ``artifacts/model.pt2``."""

    @staticmethod
    def save_model(path: str, mlflow_model: Any, artifacts: dict[str, str], signature: Any,
                   input_example: Any, pip_requirements: list[str], validate_serving_input: bool = False) -> None:
        """Write the model into ``path``. ``validate_serving_input`` is Model.log's own (passed
        on to every flavour); the pyfunc is not run while it is logged."""
        import mlflow.pyfunc

        mlflow.pyfunc.save_model(path, python_model=str(PYFUNC_CODE), artifacts=artifacts, mlflow_model=mlflow_model,
                                 signature=signature, input_example=input_example, pip_requirements=pip_requirements)
        program_dir = Path(path, ARTIFACTS_DIR)
        if not (program_dir / PROGRAM_FILE).is_file():
            raise RuntimeError(f"the pyfunc model holds no {ARTIFACTS_DIR}/{PROGRAM_FILE}")
        mlflow_model.add_flavor("pytorch", model_data=ARTIFACTS_DIR, pytorch_version=version("torch"), code=None)
        mlflow_model.save(os.path.join(path, "MLmodel"))


def log_text_model(program: Path, model_config: dict[str, Any], tokenizer_file: Path, register_as: str) -> Any:
    """Log the exported program (a .pt2 file), the tokenizer and the pyfunc code as one model
    (both flavours) into the active run."""
    import pandas as pd
    from mlflow.models import Model

    with tempfile.TemporaryDirectory(prefix="slimtrack-model-") as tmp:
        config = Path(tmp) / CONFIG_FILE
        config.write_text(json.dumps({"block_size": int(model_config["block_size"]),
                                      "vocab_size": int(model_config["vocab_size"])}) + "\n", encoding="utf-8")
        artifacts = {"program": str(program), "tokenizer": str(tokenizer_file), "config": str(config)}
        return Model.log(artifact_path=None, name="model", flavor=TextModelFlavor, flavor_name="python_function",
                         registered_model_name=register_as or None,
                         artifacts=artifacts, signature=text_signature(),
                         input_example=pd.DataFrame({"prompt": ["The "]}),
                         pip_requirements=requirements(needs_tokenizers=not _is_byte_definition(tokenizer_file)),
                         validate_serving_input=False)


def requirements(needs_tokenizers: bool) -> list[str]:
    """The pip requirements of the text model: torch (and tokenizers for a tokenizer.json), at
    the installed versions (read from their metadata: this process need not import them)."""
    reqs = [f"torch=={version('torch').split('+')[0]}"]
    if needs_tokenizers:
        reqs.append(f"tokenizers=={version('tokenizers')}")
    return reqs


def _is_byte_definition(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == "byte"


def log_tensor_model(model: Any, input_example: Any, register_as: str) -> Any:
    """Log the exported program alone, as an MLflow PyTorch model (token ids in, logits out)."""
    import mlflow.pytorch
    import torch

    # The signature comes from one forward pass of the model in memory: MLflow would
    # otherwise infer it, and check the serving example, by saving, loading and running
    # the exported model, which gives the same signature and the same files.
    return mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", input_example=input_example,
                                    signature=model_signature(model, input_example),
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                    registered_model_name=register_as or None, validate_serving_input=False)


def model_signature(model: Any, input_example: Any) -> Any:
    """The MLflow signature of ``model`` on ``input_example`` (token ids in, logits out)."""
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(input_example))
    if isinstance(output, tuple):
        output = output[0]
    return infer_signature(input_example, output.detach().cpu().numpy())
