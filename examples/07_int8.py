"""Example 7: INT8 Q/DQ graphs from one calibration, gated on a held-out split, step by step.

    python examples/07_int8.py [OUT_DIR]

What `autotimm-export --int8 --calib DIR --int8-eval DIR` chains for you: calibrate on images read with the
runtime's preprocessing, quantize in the TensorRT form and the ONNX Runtime CPU form from the same tensor ranges,
and gate each on held-out annotated images with the INT8 rules of autotimm-parity.
"""

import sys
import tempfile
from pathlib import Path

import onnx

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import write_classification_split
from autotimm_deploy.exporters.int8 import INT8_FORMS, calibration_set, protected_nodes, quantize_int8
from autotimm_deploy.exporters.int8_repair import gate
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
from autotimm_deploy.exporters.options import DEFAULT_ISLANDS
from autotimm_deploy.exporters.surgery import fold_graph
from autotimm_deploy.models.readers import load_model_file

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
out.mkdir(parents=True, exist_ok=True)
model_path = demo_model_path("classifier")
loaded = load_model_file(model_path)
md = loaded.metadata

# 1. the FP32 ONNX (what the INT8 graphs are quantized from)
fp32 = fold_graph(export_onnx(loaded, ExportConfig(input_size=(64, 64), batch_size=1, dynamic_batch=True)))
onnx.save(fp32, out / "model.onnx")

# 2. calibration images (the synthetic train split) and a held-out split for the gate
calib_dir = write_classification_split(out / "calib", "train", 64)
eval_dir = write_classification_split(out / "heldout", "test", 64)
calib = calibration_set(calib_dir, "classification", md["class_names"], (64, 64), md["mean"], md["std"],
                        loaded.family.preprocess, count=64)

# 3. two forms from one calibration: the ranges are computed once and kept in calib.json
keep = protected_nodes(fp32, ["logits"], DEFAULT_ISLANDS)  # the layer writing the logits stays FP32
for form in INT8_FORMS:
    q = quantize_int8(out / "model.onnx", form, calib, "minmax", out / "calib.json", keep)
    onnx.save(q, out / form.file)
    print(f"{form.file}: {sum(n.op_type == 'QuantizeLinear' for n in q.graph.node)} QuantizeLinear, for {form.runtime}")

# 4. the accuracy gate on the held-out split (top-1 may drop by at most 1 point)
cache = {}
results = [gate(model_path, loaded, out / form.file, eval_dir, 1.0, cache) for form in INT8_FORMS]
for form, g in zip(INT8_FORMS, results):
    print(f"{form.name}: {g.summary()}")
print("parity passed:", all(g.passed for g in results))
assert all(g.passed for g in results)
