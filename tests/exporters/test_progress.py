"""Long steps are never silent: the overflow guard announces each probe and parity each input of each runner
(the resnet50-FCOS 640 export was silent for 25-45 s in FP16 and 35-75 s in parity)."""

import re

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model


def test_fp16_and_parity_steps_announce_every_probe_and_input(tmp_path):
    lines = []
    manifest = export_model(demo_model_path("detector"), tmp_path / "out", ExportOptions(fp16=True, engine="none"),
                            progress=lines.append)
    text = "\n".join(lines)
    for k, probe in enumerate(["black", "white", "checkerboard", "uniform noise"], 1):
        assert f"overflow guard: FP32 probe {k}/4 ({probe})" in text
        assert f"overflow guard: FP16 check {k}/4 ({probe})" in text
    labels = manifest["parity"]["reports"][0]["inputs"]
    n = len(labels)
    for artifact in ("model.onnx", "model.fp16.onnx"):
        for i, label in enumerate(labels, 1):
            assert f"{artifact}: onnxruntime: input {i}/{n} ({label})" in text
            assert re.search(rf"{re.escape(artifact)}: PyTorch reference: input {i}/{n} \({re.escape(label)}\)", text)
    # the first input's reference is the export's own forward pass; every reference is computed once
    assert f"model.onnx: PyTorch reference: input 1/{n} ({labels[0]}): reused" in text
    assert all(f"model.fp16.onnx: PyTorch reference: input {i}/{n} ({label}): reused" in text
               for i, label in enumerate(labels, 1))
    assert sum(": reused" not in ln for ln in lines if "PyTorch reference: input" in ln) == n - 1
