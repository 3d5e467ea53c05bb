"""Tracking: the only folder that writes to MLflow (``analysis.py`` reads).

- ``protocol.py``: ``Tracker``, what the run depends on; ``NullTracker``; ``TrackingCost``.
- ``tracker.py``: ``MlflowTracker``: operations queued by the training thread, batched
  and delivered by one worker thread.
- ``operations.py``: one dataclass per operation, and the ``Sink`` they are applied to.
- ``worker.py``: ``DeliveryWorker``, the thread between the queue and the delivery.
- ``batching.py``: ``Batcher``: when waiting operations go out, merged (pure).
- ``delivery.py``: ``Delivery``: retry -> spool -> replay, against a ``Sink``.
- ``spool.py``: the durable file of operations that wait for the store.
- ``sink.py``: ``MlflowSink``: one method per operation, as MLflow client calls.
- ``process.py``: ``SinkProcess``: the sink's calls in the MLflow child process.
- ``client.py``: ``Client``, the MlflowClient the sink uses.
- ``model_export.py``: the final model as an MLflow model (pytorch and pyfunc flavours).
- ``pyfunc_model.py``: the pyfunc that turns prompts into continuations; imports no slimtrack.
- ``uri.py``: credentials kept out of what is printed or logged.

Importing this package imports no MLflow.
"""

from slimtrack.tracking.protocol import NullTracker, Tracker, TrackingCost

__all__ = ["NullTracker", "Tracker", "TrackingCost"]
