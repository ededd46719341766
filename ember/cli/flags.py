"""Flags generated from the config dataclasses: one flag per field, its help the field's docstring.

A field's flag is `--field-name` unless its metadata (`ember.config.flag`) names another, restricts its
values, or makes it a `--no-...` switch; fields marked `ember.config.INTERNAL` have none. The default of
every flag is the field's own default, so a parse with no flags builds exactly the dataclass defaults.
Docstrings are read from the module source with `ast`: they stay where a reader of config.py looks for
them, and no help text is written twice.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
import sys
import types
import typing
from functools import cache
from typing import Any

from ember.config import StoreConfig


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass: the string literal right under each field."""
    tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs: dict[str, str] = {}
    for stmt, nxt in zip(node.body, node.body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _help(doc: str) -> str:
    first = re.split(r"(?<=\.)\s", doc, maxsplit=1)[0] if doc else ""
    return first.replace("%", "%%")


def flag_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of `cls` that have a flag."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def flag_name(f: dataclasses.Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flag_dest(f: dataclasses.Field[Any]) -> str:
    return flag_name(f).removeprefix("--").replace("-", "_")


def _base_type(tp: Any) -> Any:
    """int for `int | None`; the type itself otherwise."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        (arg,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return arg
    return tp


def add_config_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type) -> None:
    """One flag per flag field of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in flag_fields(cls):
        tp, name, hlp = _base_type(hints[f.name]), flag_name(f), _help(docs.get(f.name, ""))
        if f.metadata.get("negate"):
            p.add_argument(name, action="store_true", help=f"turn off (on by default): {hlp}")
        elif tp is bool:
            p.add_argument(name, action="store_true", help=hlp)
        elif typing.get_origin(tp) is tuple:
            p.add_argument(name, action="append", type=typing.get_args(tp)[0], help=hlp)
        else:
            shown = "" if f.default is None else " (default: %(default)s)"
            p.add_argument(name, type=tp, default=f.default, choices=f.metadata.get("choices"), help=hlp + shown)


def config_from_args(cls: type, a: argparse.Namespace) -> Any:
    """An instance of `cls` from the parsed flags; fields whose flags the parser did not have keep their
    defaults (`ember complete` has no server flags)."""
    given = vars(a)
    kwargs: dict[str, Any] = {}
    for f in flag_fields(cls):
        dest = flag_dest(f)
        if dest not in given:
            continue
        value = given[dest]
        if f.metadata.get("negate"):
            value = not value
        elif isinstance(f.default, tuple):
            value = tuple(value or ())
        kwargs[f.name] = value
    return cls(**kwargs)


def add_store_flags(p: argparse.ArgumentParser) -> None:
    add_config_flags(p, StoreConfig)


def store_config(a: argparse.Namespace) -> StoreConfig:
    return config_from_args(StoreConfig, a)
