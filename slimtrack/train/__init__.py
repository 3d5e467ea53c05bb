"""The run: set-up, the training loop, the model, checkpoints and data parallelism.

- ``session.py``: ``run_training(config)``: set up -> loop -> finish, and the run's end
  status whatever ends it; the one place where side effects are ordered (through hooks).
- ``loop.py``: ``SlimPajamaTrainer``: the step (forward, loss, backward, update), the
  evaluation, and ``fit``, the loop that calls the hooks.
- ``model.py``: ``GPT``, the model.
- ``checkpoint.py``: atomic checkpoints, the newest K kept.
- ``distributed.py``: the torchrun world and the per-step reduction across ranks.
"""
