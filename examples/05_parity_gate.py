"""Example 5: gate on parity from Python (what `autotimm-parity` and scripts/parity_ci.sh do).

    python examples/05_parity_gate.py [OUT_DIR]

Exports the demo detector with FP16, writes 32 images of the synthetic held-out split with COCO
annotations, and checks both ONNX files at the tensor, detection and task (mAP) levels.
"""

import sys
import tempfile
from pathlib import Path

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import write_detection_split
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.parity.reports import write_reports
from autotimm_deploy.parity.suite import check_artifacts

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
model = demo_model_path("detector")
export_model(model, out / "det", ExportOptions(fp16=True, engine="none", check=False), progress=None)
data = write_detection_split(out / "held_out", "test", 32)  # PNGs + annotations.json

result = check_artifacts(model, [out / "det"], data=data, progress=None)
for art in result.artifacts:
    levels = ", ".join(f"{lv.level} {lv.status}" for lv in art.levels)
    print(f"{Path(art.path).name}: {levels}; mAP {100 * art.metrics['map']:.2f} vs PyTorch "
          f"{100 * art.reference_metrics['map']:.2f}")
write_reports(result, report_dir=out / "parity", junit=out / "parity" / "junit.xml")
print("outputs:", sorted(p.name for p in (out / "parity").iterdir()))
print("parity passed:", result.passed)
if not result.passed:
    sys.exit(result.exit_code)  # 1: a parity failure, as the CLI
