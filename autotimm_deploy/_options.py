"""Options declared once: a dataclass field carries its command-line flag, help and group as metadata
(:func:`option`), and the CLIs build their argument groups from the dataclass (:func:`add_arguments`) and the
dataclass back from the parsed arguments (:func:`from_args`), so no option is spelled in three places.

>>> import argparse
>>> from dataclasses import dataclass
>>> @dataclass
... class Demo:
...     size: int = option(3, "--size", "how big", type=int, metavar="N")
...     fast: bool = option(True, "--slow", "go slowly", invert=True)
>>> p = argparse.ArgumentParser()
>>> add_arguments(p, Demo)
>>> from_args(Demo, p.parse_args(["--size", "5", "--slow"]))
Demo(size=5, fast=False)
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields
from typing import Any, Callable, Dict, Optional

__all__ = ["option", "add_arguments", "from_args"]


def option(default: Any, flag: Optional[str] = None, help: str = "", group: Optional[str] = None,
           invert: bool = False, convert: Optional[Callable[[Any], Any]] = None, **argparse_kw: Any):
    """A dataclass field with its CLI: ``flag`` (None: Python API only), ``help``, the argument ``group``;
    ``invert``: a boolean whose flag turns it off (``--no-check`` for ``check=True``); ``convert``: applied to the
    parsed value (``None`` stays ``None``); the rest goes to ``argparse.add_argument`` (``type``, ``nargs``,
    ``choices``, ``metavar``)."""
    meta = {"flag": flag, "help": help, "group": group, "invert": invert, "convert": convert, "argparse": argparse_kw}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _flag(f, prefix: str) -> str:
    return "--" + prefix + f.metadata["flag"][2:]


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "",
                  groups: Optional[Dict[str, str]] = None, group: Optional[str] = None) -> None:
    """Every field of ``cls`` that has a flag, as an argument of ``parser`` (in its group, else in ``group``;
    ``groups`` gives a group's description), the flag prefixed by ``prefix`` (``triton-``: ``--triton-network``)."""
    made: Dict[Optional[str], Any] = {}
    for f in fields(cls):
        if not f.metadata.get("flag"):
            continue
        g = f.metadata["group"] or group
        if g not in made:
            made[g] = parser if g is None else parser.add_argument_group(g, (groups or {}).get(g))
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        kw = dict(f.metadata["argparse"])
        if isinstance(default, bool) and "type" not in kw:
            kw["action"] = "store_false" if f.metadata["invert"] else "store_true"
        else:
            kw.setdefault("default", default)
        made[g].add_argument(_flag(f, prefix), dest=prefix.replace("-", "_") + f.name, help=f.metadata["help"], **kw)


def from_args(cls, args: argparse.Namespace, prefix: str = "", **given: Any):
    """``cls`` from the arguments :func:`add_arguments` declared (``given`` sets fields that have no flag)."""
    values = dict(given)
    for f in fields(cls):
        if not f.metadata.get("flag") or f.name in values:
            continue
        v = getattr(args, prefix.replace("-", "_") + f.name)
        convert = f.metadata.get("convert")
        values[f.name] = convert(v) if convert is not None and v is not None else v
    return cls(**values)
