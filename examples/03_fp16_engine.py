"""Example 3: FP16 ONNX with FP32 islands, then a TensorRT-RTX engine built ahead of time (no GPU needed).

    python examples/03_fp16_engine.py [OUT_DIR]

Step by step with the stage APIs (what `autotimm-export --fp16` chains for you).
"""

import sys
import tempfile
from pathlib import Path

import onnx

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.engines import BuildConfig, check_engine, engine_from_onnx, engine_runnable, select_library
from autotimm_deploy.exporters.fp16 import convert_to_fp16_guarded, probe_inputs
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
from autotimm_deploy.models.readers import load_model_file
from autotimm_deploy.parity.check import FP16_TOLERANCES, run_parity

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
out.mkdir(parents=True, exist_ok=True)
loaded = load_model_file(demo_model_path("classifier"))
mean, std = loaded.metadata["mean"], loaded.metadata["std"]

# 1. FP32 ONNX with a dynamic batch
fp32 = export_onnx(loaded, ExportConfig(input_size=(64, 64), batch_size=2, dynamic_batch=True))

# 2. FP16 with the default FP32 islands; the guard probes extreme inputs for FP16 overflow
probes = [(label, {"images": x}) for label, x in probe_inputs((1, 3, 64, 64), mean, std)]
fp16, plan = convert_to_fp16_guarded(fp32, probes)
onnx.save(fp16, out / "model.fp16.onnx")
print(f"FP16 nodes: {plan.fp16_nodes}, FP32 nodes: {len(plan.fp32_nodes)}, casts: {plan.casts}, "
      f"kept FP32 for overflow: {[str(o) for o in plan.overflow]}")

# 3. parity of the FP16 ONNX against PyTorch FP32 (Polygraphy, ONNX Runtime CPU), FP16 tolerances
report = run_parity(loaded.model, out / "model.fp16.onnx", probes, tolerances=FP16_TOLERANCES)
print(report.to_markdown())

# 4. an engine: auto picks full TensorRT with a GPU, else TensorRT-RTX (ahead of time)
lib, why = select_library("auto")
print(why)
profile = {"images": ((1, 3, 64, 64), (2, 3, 64, 64), (8, 3, 64, 64))}
sidecar = engine_from_onnx(out / "model.fp16.onnx", out / "model.fp16.engine", lib,
                           BuildConfig(profiles=[profile], precision="fp16", targets=("SM86", "SM89")), cache=None)
print("outputs:", [(t["name"], t["dtype"], t["shape"]) for t in sidecar["io"]["outputs"]])

# 5. what a runtime checks before it deserialises, and whether this machine can run it
check_engine(out / "model.fp16.engine")
print("runnable here:", engine_runnable(sidecar))
print("parity passed:", report.passed)
assert report.passed
