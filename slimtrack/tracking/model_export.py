"""The final model of a run as an MLflow model.

``log_pt2_model`` logs an MLflow PyTorch model (``runs:/<id>/model``) in the 'pt2'
(torch.export) format: loading it runs no pickled code. ``--register-model NAME`` makes it
a new version of NAME in the model registry, tagged with the run's final metrics.
"""

from __future__ import annotations

from typing import Any

VERSION_TAG_METRICS = ("val_loss", "val_accuracy", "val_bpb", "loss", "accuracy")  # tags of a registered version


def log_pt2_model(run_id: str, model: Any, input_example: Any, register_as: str = "") -> str | None:
    """Log the model into the run; with ``register_as``, also register it as a new version
    of that model, tagged with the run's final validation metrics. Returns the version."""
    import mlflow
    import mlflow.pytorch
    import torch

    with mlflow.start_run(run_id=run_id):  # log_model wants an active run: ours
        # The signature comes from one forward pass of the model in memory: MLflow would
        # otherwise infer it, and check the serving example, by saving, loading and running
        # the exported model, which gives the same signature and the same files.
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pt2", input_example=input_example,
                                        signature=model_signature(model, input_example),
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                        registered_model_name=register_as or None, validate_serving_input=False)
    version = getattr(info, "registered_model_version", None)
    if register_as and version is not None:
        client = mlflow.MlflowClient()
        metrics = client.get_run(run_id).data.metrics
        for key in VERSION_TAG_METRICS:
            if key in metrics:
                client.set_model_version_tag(register_as, str(version), key, str(metrics[key]))
        client.set_model_version_tag(register_as, str(version), "run_id", run_id)
    return None if version is None else str(version)


def model_signature(model: Any, input_example: Any) -> Any:
    """The MLflow signature of ``model`` on ``input_example`` (token ids in, logits out)."""
    import torch
    from mlflow.models import infer_signature

    with torch.no_grad():
        output = model(torch.from_numpy(input_example))
    if isinstance(output, tuple):
        output = output[0]
    return infer_signature(input_example, output.detach().cpu().numpy())
