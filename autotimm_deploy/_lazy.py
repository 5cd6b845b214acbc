"""Lazy package namespaces (PEP 562): a public name resolves to its submodule's object on first use, so that
importing a package (for a CLI's ``--help``, or one light submodule) loads neither torch nor ONNX Runtime."""

from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Tuple


def lazy_namespace(package: str, exports: Dict[str, str], namespace: dict) -> Tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name to the submodule
    (relative, without the dot) that defines it; a resolved name is cached in ``namespace``."""

    def __getattr__(name: str):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
