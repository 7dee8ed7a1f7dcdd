"""Command-line flags derived from a dataclass config, and the config built back from them.

One flag per field: its type from the annotation, its help from the field's docstring (the
string literal under the field, read with ``ast`` as simple_parsing does) and the dataclass's
default shown in the help. A field holding a dataclass is flattened into its fields; a field
added to a config later gets its flag without touching the command line. A flag left out keeps
the dataclass's own default (``__post_init__`` then resolves it as in library use)::

    flags = add_config_flags(parser, TrainConfig, aliases={"n_tokens": "--tokens"})
    cfg = flags.build(parser.parse_args())
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass


def field_docs(cls: type) -> dict[str, str]:
    """The docstring of each field of dataclass ``cls`` (and its dataclass bases), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. defined in a REPL): no help text
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unoptional(tp):
    """``X`` for ``X | None`` / ``Optional[X]``; ``tp`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _argparse_kwargs(name: str, tp, default) -> dict:
    """How argparse reads a field of type ``tp``; TypeError for a type with no flag form."""
    tp = _unoptional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str):
        return {"type": tp}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": tp, "choices": list(tp)}
    if origin is typing.Literal:
        values = typing.get_args(tp)
        return {"type": type(values[0]), "choices": values}
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(set(args)) == 1 and args[0] in (int, float, str):
            # repeat the flag or give several values: --concept a --concept b, --channels 32 64
            return {"type": args[0], "nargs": "+", "action": "extend"}
    raise TypeError(f"config field {name!r} has type {tp!r}, which has no command-line form; exclude it")


def _help(doc: str, default) -> str:
    first = doc.split("\n\n")[0].replace("\n", " ").replace("``", "") if doc else ""
    if default is None:
        shown = "none"
    else:
        shown = " ".join(map(str, default)) if isinstance(default, (tuple, list)) else default
    return (f"{first} (default: {shown})" if first else f"default: {shown}").replace("%", "%%")


@dataclass(frozen=True)
class ConfigFlags:
    """The flags one dataclass config added to a parser: ``build`` makes the config from parsed
    arguments, ``given`` says which fields the command line set."""

    cls: type
    dests: dict
    """field name -> argparse dest, for plain fields."""
    nested: dict
    """field name -> ConfigFlags of a field that holds a dataclass."""

    def given(self, args: argparse.Namespace) -> dict:
        """The fields set on the command line, by name (nested configs as dicts of theirs)."""
        values = {name: getattr(args, dest) for name, dest in self.dests.items() if hasattr(args, dest)}
        for name, sub in self.nested.items():
            inner = sub.given(args)
            if inner:
                values[name] = inner
        return values

    def build(self, args: argparse.Namespace, **overrides):
        """The config: the dataclass's defaults, then the flags given, then ``overrides``. A
        nested config starts from its field's default (which may differ from its class's)."""
        return self.cls(**{**self._values(self.given(args), None), **overrides})

    def _values(self, given: dict, current) -> dict:
        """``given`` as field values; ``current``: the instance whose nested configs are updated
        (None: the fields' defaults)."""
        hints, fields = typing.get_type_hints(self.cls), {f.name: f for f in dataclasses.fields(self.cls)}
        values = {}
        for name, value in given.items():
            if name in self.nested:
                base = _default(fields[name]) if current is None else getattr(current, name)
                value = dataclasses.replace(base, **self.nested[name]._values(value, base))
            else:
                value = _convert(value, hints[name])
            values[name] = value
        return values


def _convert(value, tp):
    """argparse's list as the field's own sequence type (a tuple field gets a tuple)."""
    tp = _unoptional(tp)
    return tuple(value) if typing.get_origin(tp) is tuple else value


def add_config_flags(
    parser,
    cls: type,
    *,
    prefix: str = "",
    exclude=(),
    only=None,
    aliases=None,
    conflict_prefix: str | None = None,
    defaults=None,
) -> ConfigFlags:
    """Add a flag for every field of dataclass ``cls`` to ``parser`` (a parser or an argument
    group) and return what builds the config back.

    The flag of field ``batch_size`` is ``--{prefix}batch-size``. ``exclude`` / ``only`` pick
    fields (names of nested fields count too); ``aliases`` maps a field to extra spellings, e.g.
    ``{"n_tokens": "--tokens"}``. A name the parser already has (``--device`` of the model
    options, a nested field named as one of its parent's) is taken as
    ``--{conflict_prefix}-{field}`` instead, ``conflict_prefix`` defaulting to the class name
    without "Config" (``TrainConfig.device`` -> ``--train-device``). ``defaults``: an instance
    whose values the help shows (a nested config's, from its field's default)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    aliases = aliases or {}
    conflict_prefix = conflict_prefix or cls.__name__.removesuffix("Config").lower()
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    dests, nested = {}, {}
    for f in dataclasses.fields(cls):
        picked = only is None or f.name in only or dataclasses.is_dataclass(hints[f.name])
        if not f.init or f.name in exclude or not picked:
            continue
        tp = hints[f.name]
        default = _default(f) if defaults is None else getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            nested[f.name] = add_config_flags(
                parser, tp, prefix=prefix, exclude=exclude, only=only, aliases=aliases, defaults=default
            )
            continue
        kwargs = _argparse_kwargs(f.name, tp, default)
        kwargs.update(default=argparse.SUPPRESS, help=_help(docs.get(f.name, ""), default))
        if default is dataclasses.MISSING:
            kwargs.update(required=True, help=docs.get(f.name, "").split("\n\n")[0].replace("%", "%%") or None)
        extra = aliases.get(f.name, ())
        extra = [extra] if isinstance(extra, str) else list(extra)
        dest = f"{prefix}{f.name}".replace("-", "_")
        flag = f"--{prefix}{f.name.replace('_', '-')}"
        try:
            parser.add_argument(flag, *extra, dest=dest, **kwargs)
        except argparse.ArgumentError:
            dest = f"{conflict_prefix}_{dest}"
            parser.add_argument(f"--{conflict_prefix}-{flag[2:]}", *extra, dest=dest, **kwargs)
        dests[f.name] = dest
    return ConfigFlags(cls, dests, nested)
