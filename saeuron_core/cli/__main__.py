"""``python -m saeuron_core.cli`` is the ``saeuron`` command."""

import sys

from .registry import main

sys.exit(main())
