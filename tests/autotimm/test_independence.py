"""autotimm-deploy never imports autotimm and never downloads anything: an AutoTimm checkpoint exports in a
fresh interpreter where ``import autotimm`` fails and every network connection raises."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

PKG = Path(__file__).resolve().parents[2] / "autotimm_deploy"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures/autotimm"

_CHILD = r"""
import socket, sys

class _NoAutotimm:
    def find_spec(self, name, path=None, target=None):
        if name == "autotimm" or name.startswith("autotimm."):
            raise ImportError("autotimm is blocked in this test")

def _no_network(*args, **kwargs):
    raise OSError("network access is blocked in this test")

sys.meta_path.insert(0, _NoAutotimm())
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = _no_network
from autotimm_deploy.cli.export import main
code = main([sys.argv[1], "--out", sys.argv[2], "--engine", "none", "--fp16"])
loaded = sorted(m for m in sys.modules if m == "autotimm" or m.startswith("autotimm."))
print("RESULT", code, loaded)
"""


def test_no_module_of_the_package_imports_autotimm():
    offenders = []
    for f in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []  # not .autotimm
            if any(n == "autotimm" or n.startswith("autotimm.") for n in names):
                offenders.append(f"{f.relative_to(PKG.parent)}:{node.lineno}")
    assert offenders == []


def test_checkpoint_exports_without_autotimm_and_without_network(tmp_path):
    index = json.loads((FIXTURES / "fixtures.json").read_text())["fixtures"]
    for name in ("yolox_compiled_weights", "classifier_compiled_full"):
        out = tmp_path / name
        res = subprocess.run([sys.executable, "-c", _CHILD, str(FIXTURES / index[name]["file"]), str(out)],
                             capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin",
                                                                                "HOME": str(tmp_path)})
        assert "RESULT 0 []" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]
        assert json.loads((out / "manifest.json").read_text())["parity"]["passed"]
