"""Config dataclasses as command lines, for both CLIs: one --flag per field, its help the field's comment (unit,
the paper's value) and its default, choices from ``Literal`` types, --x / --no-x for booleans, list and
GROUP=PATH fields, and --config FILE.json to start from a saved config (flags given beside it override); and
the quiet end of both CLIs when their reader closes the pipe."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path


def field_comments(cls) -> dict[str, str]:
    """Each field's comment in the dataclass source: the ``#`` lines right above it and the one after it
    (base classes too)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# "))
            elif m := re.match(r"(\w+): [^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", text):
                out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
                above = []
            else:
                above = []
    return out


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _pair(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key or not val:
        raise argparse.ArgumentTypeError(f"expected GROUP=PATH, got {value!r}")
    return key.strip(), val


def _default(f):
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _shown(value) -> str:
    if value in ("", None, [], {}):
        return "none"
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def add_dataclass_args(p: argparse.ArgumentParser, cls, aliases: dict[str, list[str]] | None = None) -> None:
    """One --flag per field of ``cls`` (its own fields first, then its bases'); ``aliases``: older flag names
    that still work. A flag not given leaves no attribute (defaults are applied by :func:`config_from_args`,
    under a --config file's values), so required fields may come from a --config."""
    notes, hints, aliases = field_comments(cls), typing.get_type_hints(cls), aliases or {}
    own = set(cls.__dict__.get("__annotations__", {}))
    p.add_argument("--config", metavar="FILE.json",
                   help="start from this config (e.g. a run's config.json): its values replace the defaults, "
                        "flags given beside it override them")
    for f in sorted(fields(cls), key=lambda f: f.name not in own):
        flag, note, t, default = "--" + f.name.replace("_", "-"), notes.get(f.name, ""), hints[f.name], _default(f)
        note = note.replace("%", "%%")  # argparse formats help with %: a comment's "12%" is text
        names = [flag, *("--" + a.replace("_", "-") for a in aliases.get(f.name, []))]
        kw: dict = {"dest": f.name, "default": argparse.SUPPRESS}
        if t is bool:
            when = f"default on; --no-{flag[2:]} turns it off" if default else "default off"
            p.add_argument(*names, action="store_true", help=f"{note} ({when})".lstrip(), **kw)
            p.add_argument(f"--no-{flag[2:]}", action="store_false", help=argparse.SUPPRESS, **kw)
            continue
        args = typing.get_args(t)
        if typing.get_origin(t) is typing.Literal:
            kw["choices"] = list(args)
        elif typing.get_origin(t) is dict:
            kw.update(type=_pair, action="append", metavar="GROUP=PATH")
        elif list in (typing.get_origin(t), *map(typing.get_origin, args)):
            kw["type"] = _csv
        else:
            kw["type"] = next((a for a in (t, *args) if a in (int, float, str)), str)
        when = "required" if default is MISSING else f"default {_shown(default)}"
        said = "(default" in note or "default:" in note  # the comment says what the default means
        p.add_argument(*names, help=note if said and default is not MISSING else f"{note} ({when})".lstrip(), **kw)


def config_from_args(cls, args: argparse.Namespace, parser: argparse.ArgumentParser, renamed: dict | None = None,
                     recipes: dict[str, dict] | None = None, require: bool = True):
    """``cls`` from the field defaults, under a --config file's values, under a --recipe's values (``recipes``:
    name -> field values), under the other flags given. ``renamed``: old key -> field name, for files written by
    older versions; keys that are no field are ignored. Without ``require``, missing required fields are None."""
    names, renamed = {f.name for f in fields(cls)}, renamed or {}
    values: dict = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            parser.error(f"--config {path}: no such file")
        raw = json.loads(path.read_text())
        values = {renamed.get(k, k): v for k, v in raw.items() if renamed.get(k, k) in names}
    given = {k: v for k, v in vars(args).items() if k in names}
    if recipes and "recipe" in given:  # a recipe given as a flag replaces a --config file's values of its fields
        values.update(recipes[given["recipe"]])
    for k, v in given.items():  # GROUP=PATH pairs, repeated, extend the file's
        values[k] = {**values.get(k, {}), **dict(v)} if typing.get_origin(typing.get_type_hints(cls)[k]) is dict else v
    missing = [f.name for f in fields(cls) if _default(f) is MISSING and f.name not in values]
    if missing and not require:
        values.update(dict.fromkeys(missing))
    elif missing:
        parser.error("the following arguments are required: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    return cls(**values)


def quiet_broken_pipe() -> int:
    """`pipeline status | head`: the reader has what it wanted; no traceback (stdout goes to devnull so that
    Python's final flush does not raise again)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
