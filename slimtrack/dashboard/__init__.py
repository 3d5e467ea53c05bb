"""The dashboard: seven charts of a run's history, drawn off the training thread.

- ``charts.py``: ``Dashboard``, the seven charts (pure matplotlib, no pyplot).
- ``manager.py``: ``VisualizationManager``: the history and samples, a render every
  ``viz_interval`` steps, the files written and logged.
- ``renderer.py``: ``DashboardRenderer``, the child process that draws the PNGs.
- ``compare.py``: the figure that overlays several runs (``slimtrack compare``).
"""
