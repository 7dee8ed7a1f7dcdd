"""``python -m saeuron_core`` is the ``saeuron`` command (so ``torchrun -m saeuron_core`` works)."""

import sys

from .cli import main

sys.exit(main())
