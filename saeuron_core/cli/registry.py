"""The `saeuron` parser: the library's own commands, then every command registered under the
``saeuron.commands`` entry-point group.

An entry point names a ``register(subparsers)`` function. It adds its commands with
``subparsers.add_parser(...)`` (setting ``func``), and may extend a library command through
the extension points that command documents (``extend(subparsers, "locate")``). The benchmark
and the baselines register this way (pyproject.toml), so this package never imports them; a
third-party package adds commands the same way in its own pyproject.toml::

    [project.entry-points."saeuron.commands"]
    mine = "my_package.commands:register"
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "saeuron.commands"


def registered():
    """The entry points of the ``saeuron.commands`` group, in name order (a stable help listing)."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def extend(subparsers, command: str) -> argparse.ArgumentParser:
    """The parser of an already registered ``command``, for an entry point that adds options or
    sets an extension point on it."""
    parser = subparsers.choices.get(command)
    if parser is None:
        raise LookupError(f"no `saeuron {command}` command to extend (registered: {', '.join(subparsers.choices)})")
    return parser


def build_parser() -> argparse.ArgumentParser:
    from . import features, images

    p = argparse.ArgumentParser(
        prog="saeuron",
        description="The `saeuron` command line. Every subcommand prints bad input as one line and exits 2.",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: OMP_NUM_THREADS when set, else min(4, cores))",
    )
    sub = p.add_subparsers(dest="command", required=True)
    for general in (images, features):
        general.register(sub)
    eps = registered()
    for ep in eps:
        ep.load()(sub)
    if not eps:
        p.epilog = (
            f"No commands are registered under the {ENTRY_POINT_GROUP!r} entry points: the benchmark's and "
            "the baselines' commands (evaluate, tune, erase, ...) appear once the package metadata is "
            "installed (pip install -e .)."
        )
    return p


def main(argv: list[str] | None = None) -> int:
    from ..errors import SaeuronError
    from .options import set_threads

    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        return args.func(args)
    except SaeuronError as e:
        print(f"saeuron {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saeuron {args.command}: interrupted", file=sys.stderr)
        return 130
