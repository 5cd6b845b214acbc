"""Ctrl-C anywhere stops an export: exit 130, one line, no output folder it created, no engine cache entry.
TensorRT-RTX's builder used to swallow it (its Python log callback got the KeyboardInterrupt) and the export
finished with exit 0 (issue 13, item 9)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotimm_deploy.demo import demo_model_path

pytestmark = pytest.mark.system


@pytest.mark.parametrize("when", ["[2/", "[4/", "builder:"])
def test_ctrl_c_stops_the_export_anywhere(tmp_path, when):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [str(Path(sys.executable).with_name("autotimm-export")), str(demo_model_path("detector")), "--fp16",
           "--out", str(out), "--cache-dir", str(cache)]
    # default SIGINT in the child even when this test runs in a background job (which ignores SIGINT)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if when in line:
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            break
    _, rest = proc.communicate(timeout=300)
    err = "".join(seen) + rest
    assert when in err, err
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == "autotimm-export: interrupted" and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in cache.rglob("*") if p.is_file()]
