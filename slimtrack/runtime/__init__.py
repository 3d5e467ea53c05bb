"""Process plumbing: child processes, background priority, the allocator.

- ``child.py``: ``ChildProcess`` / ``serve``: pickled requests to a ``python -m`` child.
- ``priority.py``: background threads and processes run nicer than the training threads.
- ``allocator.py``: glibc keeps the step's freed buffers for the next step.
- ``files.py``: atomic file writes (a crash leaves the old file or the new one).
"""
