"""``python -m slimtrack ...`` is the ``slimtrack`` command."""

import sys

from slimtrack.cli import main

sys.exit(main())
