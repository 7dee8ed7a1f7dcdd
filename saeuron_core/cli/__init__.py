"""The `saeuron` command line, split by layer.

This package holds the general commands (``generate``, ``cache``, ``train-sae``, ``stats``,
``unlearn``, ``prepare``, ``locate``), the option groups every command shares (``options``),
flags derived from dataclass configs (``config_flags``) and the parser with ``main``
(``registry``). The benchmark's commands (``evaluate``, ``tune``, ``build-model``, ``attack``,
the judged parts of ``locate`` and ``prepare``) and the baselines' (``erase``) are registered
from ``saeuron_core.minicanvas`` and ``saeuron_core.baselines`` through the ``saeuron.commands``
entry points, so nothing here imports those layers.
"""

from .registry import build_parser, main

__all__ = ["build_parser", "main"]
