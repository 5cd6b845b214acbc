"""CI lint: no loader in the package, scripts or examples that can run code from a file.

Parsed with ``ast`` (not grep), with import aliases resolved (``import torch as T``, ``from torch import
load``, ``import numpy as np``).  Flagged:

- ``torch.load(...)`` without a literal ``weights_only=True`` (and any ``pickle_module=``);
- ``torch.jit.load`` / ``torch.package.PackageImporter``: TorchScript and torch.package archives hold code;
- ``pickle``/``_pickle``/``cPickle``/``dill``/``cloudpickle``/``joblib`` ``load``/``loads``/``Unpickler``,
  ``pandas.read_pickle``, ``shelve.open``, ``marshal.loads``;
- ``numpy.load(..., allow_pickle=<anything but a literal False>)``.

A call may be exempted, with a reason, by ``# unsafe-load: ok (<reason>)`` on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("autotimm_deploy", "scripts", "examples")
PRAGMA = "# unsafe-load: ok"

_ALWAYS = {
    "torch.jit.load": "TorchScript archives hold code",
    "torch.package.PackageImporter": "torch.package archives hold code",
    "pandas.read_pickle": "unpickles",
    "shelve.open": "unpickles",
    "marshal.loads": "loads code objects",
    "marshal.load": "loads code objects",
}
for _mod in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib"):
    for _fn in ("load", "loads", "Unpickler"):
        _ALWAYS[f"{_mod}.{_fn}"] = "unpickles (can run code)"


def _qualname(node: ast.AST, aliases: Dict[str, str]) -> str:
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is_literal(node: ast.AST, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def find_unsafe_loads(source: str, filename: str = "<string>") -> List[str]:
    """``file:line: call -- why`` for every unsafe load call in ``source``."""
    tree = ast.parse(source, filename=filename)
    lines = source.splitlines()
    aliases: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualname(node.func, aliases)
        if name.startswith("np."):
            name = "numpy." + name[3:]
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        why = None
        if name in ("torch.load", "torch.serialization.load"):
            if "weights_only" not in kw:
                why = "no weights_only=True (the default changed across torch versions: say it)"
            elif not _is_literal(kw["weights_only"], True):
                why = "weights_only is not the literal True"
            elif "pickle_module" in kw:
                why = "a custom pickle_module bypasses the weights-only unpickler"
        elif name in _ALWAYS:
            why = _ALWAYS[name]
        elif name == "numpy.load" and "allow_pickle" in kw and not _is_literal(kw["allow_pickle"], False):
            why = "allow_pickle unpickles object arrays (can run code)"
        if why is None:
            continue
        line = lines[node.lineno - 1] if node.lineno - 1 < len(lines) else ""
        if PRAGMA in line:
            continue
        found.append(f"{filename}:{node.lineno}: {name}(...) -- {why}")
    return found


def _sources():
    for top in SCANNED:
        base = ROOT / top
        if base.is_dir():
            yield from sorted(p for p in base.rglob("*.py") if ".venv" not in p.parts)


def test_no_unsafe_loads_in_package_scripts_examples():
    files = list(_sources())
    assert any(p.name == "io.py" for p in files)  # the scan sees the package
    problems = [msg for p in files for msg in find_unsafe_loads(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert not problems, "unsafe loads (add weights_only=True, or justify with '# unsafe-load: ok (reason)'):\n" + \
        "\n".join(problems)


BAD = '''
import torch
import torch as T
import pickle as pk
import numpy as np
from torch import load as tload
from torch.jit import load as jload

torch.load("a.pt")
T.load("b.pt", weights_only=False)
tload("c.pt", weights_only=flag)
torch.load("d.pt", weights_only=True, pickle_module=pk)
torch.jit.load("e.pt")
jload("f.pt")
pk.loads(b"...")
np.load("g.npy", allow_pickle=True)
torch.load("h.pt")  # unsafe-load: ok (a fixture the test wrote itself)
'''

GOOD = '''
import torch, numpy as np, json
torch.load("a.pt", map_location="cpu", weights_only=True)
np.load("b.npy")
np.load("c.npy", allow_pickle=False)
json.loads("{}")
model.load_state_dict(sd)
'''


def test_checker_positive_control():
    found = find_unsafe_loads(BAD, "bad.py")
    lines = sorted(int(f.split(":")[1]) for f in found)
    assert lines == [9, 10, 11, 12, 13, 14, 15, 16], found
    assert any("torch.jit.load" in f for f in found) and any("pickle.loads" in f for f in found)
    assert any("numpy.load" in f and "allow_pickle" in f for f in found)
    assert find_unsafe_loads(GOOD, "good.py") == []


@pytest.mark.parametrize("call", ["torch.load(f)", "torch.load(f, weights_only=None)", "torch.serialization.load(f)",
                                  "joblib.load(f)", "numpy.load(f, allow_pickle=ok)"])
def test_checker_flags_single_calls(call):
    found = find_unsafe_loads(f"import torch, joblib, numpy\n{call}\n")
    assert len(found) == 1 and ":2:" in found[0], found
