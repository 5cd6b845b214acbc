"""Example 6: an AutoTimm checkpoint (here one of the test fixtures, written by real AutoTimm) through the
Python API: export with FP16 and the engine, then the runtime with AutoTimm's own post-processing.

    python examples/06_autotimm_checkpoint.py [OUT_DIR] [CHECKPOINT.ckpt]

Nothing imports autotimm and nothing is downloaded; class names are given because checkpoints do not record
them.
"""

import sys
import tempfile
from pathlib import Path

from autotimm_deploy.demo.shapes import CLASSES, SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
ckpt = Path(sys.argv[2]) if len(sys.argv) > 2 else \
    Path(__file__).resolve().parents[1] / "tests/fixtures/autotimm/yolox_compiled_weights.ckpt"

manifest = export_model(ckpt, out / "yolox", ExportOptions(fp16=True, class_names=tuple(CLASSES)), progress=None)
family = manifest["family"]
print(f"{ckpt.name}: family {family['name']} ({family['convention']}), post-processing {family['postprocess']}")
print("parity passed:", manifest["parity"]["passed"])

predictor = load(out / "yolox")  # the engine where a supported GPU runs it, else ONNX Runtime
images = [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(2)]
for k, det in enumerate(predictor.predict(images)):  # AutoTimm's thresholds, argmax class per location
    print(f"image {k}: " + ", ".join(f"{n} {s:.2f}" for n, s in zip(det.class_names[:4], det.scores[:4])))
assert manifest["parity"]["passed"]
