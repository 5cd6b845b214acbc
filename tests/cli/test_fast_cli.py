"""The CLIs answer --help and refuse bad arguments before torch, timm, ONNX or TensorRT load (issue 14):
measured in fresh processes, with the heavy modules checked absent."""

import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "timm", "torchvision", "onnx", "onnxruntime", "onnx_graphsurgeon", "polygraphy", "tensorrt_rtx")


def _run(code: str):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("cli", ["export", "infer", "parity", "triton"])
def test_help_is_fast_and_imports_nothing_heavy(cli):
    code = (f"import sys\nfrom autotimm_deploy.cli.{cli} import main\nrc = main(['--help'])\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(rc)")
    proc, seconds = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert "usage: autotimm-" in proc.stdout and "HEAVY []" in proc.stdout
    assert seconds < 1.0, f"--help took {seconds:.2f} s"


@pytest.mark.parametrize("argv, message", [
    (["/nonexistent/model.pt"], "no such file or directory"),
    (["{model}", "--opset", "99"], "--opset must be between 13 and 20"),
    (["{model}", "--batch", "4:2:8"], "--batch MIN:OPT:MAX needs"),
    (["{model}", "--topk", "5", "--decode", "raw"], "--topk needs --decode boxes"),
    (["{model}", "--engine", "onnx"], "invalid choice"),
    (["{model}", "--triton-repo", "repo", "--triton-instances", "0"], "triton instances must be at least 1"),
])
def test_argument_errors_are_fast(tmp_path, argv, message):
    model = tmp_path / "m.pt"
    model.write_bytes(b"not read before the options are checked")
    argv = [a.replace("{model}", str(model)) for a in argv]
    code = (f"import sys\nfrom autotimm_deploy.cli.export import main\nrc = main({argv!r})\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\nsys.exit(rc)")
    proc, seconds = _run(code)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert seconds < 1.0, f"the error took {seconds:.2f} s"


@pytest.mark.parametrize("first", ["autotimm_deploy.engines.library", "autotimm_deploy.engines.load",
                                   "autotimm_deploy.engines.predictor"])
def test_lazy_engines_namespace_resolves_load_to_the_function(first):
    """engines.load is the predictor's load() whichever module loads first (a submodule shares the name)."""
    proc, _ = _run(f"import importlib\nimportlib.import_module({first!r})\nfrom autotimm_deploy.engines import load\n"
                   "from autotimm_deploy.engines.predictor import load as real\nprint(load is real, callable(load))")
    assert proc.returncode == 0 and proc.stdout.split() == ["True", "True"], proc.stderr
