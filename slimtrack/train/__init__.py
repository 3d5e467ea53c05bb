"""The run: set-up, the training loop, the model, checkpoints, resuming and stopping.

- ``session.py``: ``run_training(config)``: set up -> loop -> finish, and the run's end
  status whatever ends it; the one place where side effects are ordered.
- ``job.py``: ``setup``: threads, data, model, the run's tracker and folder, in order.
- ``loop.py``: ``SlimPajamaTrainer``: the step (forward, loss, backward, update), the
  evaluation, and ``fit``, the loop that calls the hooks.
- ``hooks.py``: what the loop calls after each step (tracking, dashboard, console).
- ``signals.py``: signals and a lost console become a stop at the next step boundary.
- ``resume.py``: which run a folder belongs to, where it continues, the folder lock.
- ``model.py``: ``GPT``, the model.
- ``checkpoint.py``: atomic checkpoints, the newest K kept.
- ``distributed.py``: the torchrun world and the per-step reduction across ranks.
"""
