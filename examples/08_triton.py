"""Example 8: a Triton model repository from an export, served by a real tritonserver, answering what the local
Predictor answers (docs/serving.md).

    python examples/08_triton.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.serve import LocalTriton, TritonOptions, write_repository
from autotimm_deploy.serve.client import TritonModelClient

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
export_model(demo_model_path("detector"), out / "det", ExportOptions(engine="none"), progress=None)
summary = write_repository(out / "det", out / "triton_repo", TritonOptions(network="python"))  # the CPU variant
print("models:", ", ".join(summary["models"]))

images = [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(3)]
local = load(out / "det").predict(images)
with LocalTriton(out / "triton_repo", models=["demo_detector"]) as server:  # loads the ensemble and its steps
    client = TritonModelClient(server.grpc_url, "demo_detector", "grpc")  # class names: the repository's own
    served = client.predict(images)
for k, det in enumerate(served):
    print(f"image {k}: " + ", ".join(f"{n} {s:.2f} {np.round(b, 1).tolist()}"
                                     for n, s, b in zip(det.class_names, det.scores, det.boxes)))
same = all(len(a.scores) == len(b.scores) and np.allclose(a.boxes, b.boxes, atol=1e-3)
           and (a.labels == b.labels).all() and a.class_names == b.class_names for a, b in zip(served, local))
print("outputs: Triton agrees with the local Predictor:", same)
assert same
