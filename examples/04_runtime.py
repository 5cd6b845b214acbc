"""Example 4: the runtime API on an export directory (what `autotimm-infer` uses).

    python examples/04_runtime.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
export_model(demo_model_path("detector"), out / "det", ExportOptions(fp16=True), progress=None)

predictor = load(out / "det")  # the engine where it can run, else ONNX Runtime; says why
print(predictor.describe())
images = [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(3)]
for k, det in enumerate(predictor.predict(images, score_thresh=0.3)):
    found = ", ".join(f"{n} {s:.2f}" for n, s in zip(det.class_names, det.scores))
    print(f"image {k}: {found}")

reference = load(demo_model_path("detector")).predict(images, score_thresh=0.3)  # PyTorch, same contract
same = all(a.labels.tolist() == b.labels.tolist() for a, b in zip(reference, predictor.predict(images, score_thresh=0.3)))
print("outputs: agree with the PyTorch reference:", same)
assert same
