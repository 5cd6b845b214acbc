"""scripts/device_check.sh and scripts/device_bench.py on this CPU-only machine: no GPU, said in one line,
recorded in summary.json (gpu null, every step skipped with the reason), exit 0, quickly; the bench helper
refuses with exit 3.  (Their GPU path runs only where a GPU is lent: issue 14, item 4.)"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "device_check.sh"
BENCH = ROOT / "scripts" / "device_bench.py"


def test_device_check_says_no_gpu_and_exits_0(tmp_path):
    out = tmp_path / "device_check"
    env = {**os.environ, "PYTHON": sys.executable}
    t = time.monotonic()
    res = subprocess.run([str(SCRIPT), str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - t
    assert res.returncode == 0, res.stdout + res.stderr
    assert elapsed < 60
    lines = [line for line in res.stdout.splitlines() if "no GPU" in line]
    assert len(lines) == 1 and lines[0].startswith("device_check: no GPU (")
    assert "torch.cuda.is_available() is False" in lines[0] and str(out / "summary.json") in lines[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gpu"] is None and summary["exit_code"] == 0 and summary["failed_steps"] == []
    assert "torch.cuda.is_available() is False" in summary["no_gpu_reason"]
    assert summary["torch_probe"]["cuda_available"] is False
    steps = {s["name"]: s for s in summary["steps"]}
    assert set(steps) == {"gpu-tests", "bench"}
    for s in steps.values():
        assert s["status"] == "skipped" and s["reason"] == "no GPU" and s["exit_code"] is None
    assert steps["gpu-tests"]["timeout_s"] + steps["bench"]["timeout_s"] <= 540  # the 10-minute budget
    assert "-m gpu" in steps["gpu-tests"]["command"] and "device_bench.py" in steps["bench"]["command"]
    assert "No GPU (" in (out / "device_check.md").read_text()
    assert not (out / "bench.json").exists() and not (out / "gpu-tests.xml").exists()


def test_device_check_default_folder_is_relative_to_the_caller(tmp_path):
    """A relative OUT_DIR is taken from the caller's directory, not the repository root."""
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run([str(SCRIPT), "rel/dc"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads((tmp_path / "rel" / "dc" / "summary.json").read_text())["gpu"] is None


def test_device_bench_refuses_without_gpu(tmp_path):
    res = subprocess.run([sys.executable, str(BENCH), "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.strip().splitlines() == [
        "device_bench: no GPU (torch.cuda.is_available() is False): nothing to measure"]
    assert not (tmp_path / "x").exists()


def test_scripts_are_executable_and_parse():
    assert os.access(SCRIPT, os.X_OK) and os.access(BENCH, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
