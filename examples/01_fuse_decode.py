"""Example 1: export a detector, fuse the FCOS decode into the graph, run it in ONNX Runtime.

    python examples/01_fuse_decode.py

Prints the graph outputs and the first detection, and checks them against the PyTorch reference.
"""

import numpy as np
import onnxruntime as ort
import torch

from autotimm_deploy import load_model_file
from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.demo.shapes import CLASSES, render_detection_sample
from autotimm_deploy.demo.train import to_tensor
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
from autotimm_deploy.exporters.pipeline import level_sizes
from autotimm_deploy.exporters.surgery import apply_decode
from autotimm_deploy.models.decode import batched_nms_postprocess

loaded = load_model_file(demo_model_path("detector"))
model = loaded.model
raw = export_onnx(loaded, ExportConfig(input_size=(128, 128)))             # 15 raw outputs cls/bbox/ctr_p3..p7
fused = apply_decode(raw, "boxes", model.strides, model.num_classes,       # + anchors, exp, sigmoid, clip
                     static_hw=level_sizes((128, 128), model.strides))
print("outputs:", [o.name for o in fused.graph.output])

image, gt_boxes, gt_labels = render_detection_sample(1_000_000)
x = to_tensor([image]).numpy()
sess = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
boxes, scores = sess.run(None, {"images": x})
dets = batched_nms_postprocess(torch.from_numpy(boxes), torch.from_numpy(scores), score_thresh=0.3)[0]
ref = model.predict(torch.from_numpy(x), score_thresh=0.3)[0]
print(f"{len(dets['boxes'])} detections; first: {CLASSES[int(dets['labels'][0])]} "
      f"{dets['boxes'][0].round().tolist()} score {float(dets['scores'][0]):.3f}")
print("ground truth:", [(CLASSES[l], b.tolist()) for b, l in zip(gt_boxes, gt_labels)])
assert torch.equal(dets["labels"], ref["labels"])
assert np.allclose(dets["boxes"].numpy(), ref["boxes"].numpy(), atol=1e-2)
