"""The package's shape, checked from its source (docs/architecture.md): no import circle between modules or
between subpackages (every import statement counts, also those inside functions), each layer imports only the
layers below it, and no generic stage asks for a task's or a family's name."""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "autotimm_deploy"

#: Each subpackage (or top-level module group) and the ones it may import, lowest first.
LAYERS = {
    "base": set(),  # errors, _json, _atomic, _lazy, _memory, _compat, layout, metrics, datasets, graph, drawing
    "models": {"base"},
    "artifact": {"base", "models"},  # artifact.py, images.py
    "tasks": {"base", "models", "artifact"},
    "engines": {"base", "models", "artifact", "tasks"},
    "parity": {"base", "models", "artifact", "tasks", "engines", "demo"},
    "exporters": {"base", "models", "artifact", "tasks", "engines", "parity", "demo"},
    "serve": {"base", "models", "artifact", "tasks", "engines", "exporters"},
    "cli": {"base", "models", "artifact", "tasks", "engines", "parity", "exporters", "serve"},
    "demo": {"base", "models", "artifact"},
}
_TOP = {"artifact": "artifact", "images": "artifact"}


def _modules():
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        out[name[:-9] if name.endswith(".__init__") else name] = p
    return out


MODULES = _modules()


def _imports(name: str):
    """Every module of the package ``name`` imports, wherever the statement stands."""
    path = MODULES[name]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".")
            if node.level:
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] != "autotimm_deploy":
                continue
            while t not in MODULES and "." in t:
                t = t.rsplit(".", 1)[0]
            if t != name and t in MODULES:
                found.add(t)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head in LAYERS:
        return head
    return _TOP.get(head, "base")


def _cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_modules():
    assert len(MODULES) > 80
    assert _cycles(GRAPH) == []


def test_no_import_circle_between_subpackages():
    packages = {}
    for m, targets in GRAPH.items():
        a = ".".join(m.split(".")[:2])
        packages.setdefault(a, set()).update(".".join(t.split(".")[:2]) for t in targets
                                             if ".".join(t.split(".")[:2]) != a)
    assert _cycles(packages) == []


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below_it(layer):
    wrong = sorted(f"{m} -> {t}" for m, ts in GRAPH.items() if _layer(m) == layer for t in ts
                   if _layer(t) != layer and _layer(t) not in LAYERS[layer])
    assert wrong == []


def test_the_layering_is_real():
    """A planted upward import is caught (the check can fail)."""
    graph = dict(GRAPH)
    graph["autotimm_deploy.engines.backends"] = graph["autotimm_deploy.engines.backends"] | {
        "autotimm_deploy.parity.runners"}
    assert any("autotimm_deploy.parity.runners" in c for c in _cycles({**graph, "autotimm_deploy.parity.runners":
                                                                           {"autotimm_deploy.engines.backends"}}))
    assert "parity" not in LAYERS["engines"] and "exporters" not in LAYERS["demo"]


#: Where a task's name may be spelled: the tasks themselves, the families that declare it, the model readers.
_TASK_HOMES = ("autotimm_deploy/tasks/", "autotimm_deploy/models/")
_TASK_NAME = re.compile(r"""(==|!=|\bin)\s*\(?\s*["'](detection|classification|segmentation|instance_segmentation)["']""")


def test_no_generic_stage_branches_on_a_task_or_family_name():
    """The export, surgery, FP16/INT8, engines, parity, runtimes, Triton and the CLIs ask the model's task
    (``tasks.get_task(...)``) instead of comparing task names; nothing compares a family's name."""
    offenders = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).as_posix()
        text = p.read_text()
        if not rel.startswith(_TASK_HOMES):
            offenders += [f"{rel}: {m.group(0)}" for m in _TASK_NAME.finditer(text)]
        offenders += [f"{rel}: {m.group(0)}" for m in re.finditer(r"family\.name\s*(==|!=|in)\s", text)]
    assert offenders == []


def test_doctests_build_no_engine():
    """The doctests run with every test run, the fast tier included: none builds an engine (each export in a
    doctest says engine="none"; engine builds are tests/engines/)."""
    offenders = []
    for p in PKG.rglob("*.py"):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            code = line.strip()
            if not code.startswith((">>>", "...")):
                continue
            if re.search(r"\b(engine_from_onnx|build_engine)\(", code) or (
                    "export_model(" in code and 'engine="none"' not in code):
                offenders.append(f"{p.relative_to(PKG.parent)}:{n}: {code}")
    assert offenders == []
