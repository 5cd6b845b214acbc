import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.errors import ExportError
from autotimm_deploy.exporters.fp16 import (DEFAULT_ISLANDS, FP16_MAX, Fp32Islands, convert_to_fp16,
                                            convert_to_fp16_guarded, find_overflows, probe_inputs)
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
from autotimm_deploy.exporters.pipeline import level_sizes
from autotimm_deploy.exporters.surgery import apply_decode
from autotimm_deploy.models.readers import load_model_file
from autotimm_deploy.parity.check import FP16_TOLERANCES, run_parity

F16, F32 = TensorProto.FLOAT16, TensorProto.FLOAT


def _types(model):
    vi = {v.name: v.type.tensor_type.elem_type for v in
          list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    vi.update({i.name: i.data_type for i in model.graph.initializer})
    return vi


def _conv_norm_relu():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.ones(4, np.float32), "scale")
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "bias")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("InstanceNormalization", ["c", "scale", "bias"], ["n"], name="norm"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", F32, [1, 4, 8, 8])], [w, scale, bias])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_islands_get_casts_on_both_sides_and_outputs_stay_fp32():
    m16, plan = convert_to_fp16(_conv_norm_relu())
    assert [n.op_type for n in m16.graph.node] == ["Cast", "Conv", "Cast", "InstanceNormalization", "Cast", "Relu",
                                                   "Cast"]
    t = _types(m16)
    assert t["x"] == F32 and t["y"] == F32  # I/O unchanged by default
    conv, norm, relu = (n for n in m16.graph.node if n.op_type in ("Conv", "InstanceNormalization", "Relu"))
    assert t[conv.input[1]] == F16 and t[conv.output[0]] == F16  # weights and activations FP16
    assert t[norm.input[0]] == F32 and t[norm.input[1]] == F32 and t[norm.output[0]] == F32  # the island
    assert t[relu.output[0]] == F16
    assert plan.fp16_nodes == 2 and plan.fp32_nodes == ["norm"] and plan.casts == 4
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(_conv_norm_relu().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert got.dtype == np.float32 and 0 < np.abs(got - ref).max() < 1e-2  # really FP16, and close


def test_fp16_input_and_fp16_outputs_options():
    m16, plan = convert_to_fp16(_conv_norm_relu(), fp16_input=True, fp32_outputs=False)
    t = _types(m16)
    assert t["x"] == F16 and t["y"] == F16
    assert [n.op_type for n in m16.graph.node] == ["Conv", "Cast", "InstanceNormalization", "Cast", "Relu"]


def test_island_list_is_data_and_overridable():
    m16, plan = convert_to_fp16(_conv_norm_relu(), Fp32Islands(op_types=("Conv",)))
    assert plan.fp32_nodes == ["conv"] and plan.fp16_nodes == 2
    m16, plan = convert_to_fp16(_conv_norm_relu(), Fp32Islands(node_names=("re*",)))
    assert plan.fp32_nodes == ["relu"]
    with pytest.raises(ExportError, match="not found in the graph"):
        convert_to_fp16(_conv_norm_relu(), force_fp32=["no_such_node"])


def test_constant_shared_by_fp16_and_fp32_nodes_is_stored_in_both_precisions():
    c = numpy_helper.from_array(np.full((1, 2), 3.0, np.float32), "c")
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add16"),
             helper.make_node("Mul", ["a", "c"], ["y"], name="mul32")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1, 2])],
                          [helper.make_tensor_value_info("y", F32, [1, 2])], [c])
    m16, _ = convert_to_fp16(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
                             Fp32Islands(node_names=("mul32",)))
    inits = {i.name: i.data_type for i in m16.graph.initializer}
    assert inits == {"c": F32, "c/fp16": F16}


def test_resize_scales_stay_fp32():
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="nearest")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, [1, 1, 2, 2])],
                          [helper.make_tensor_value_info("y", F32, [1, 1, 4, 4])], [scales])
    m16, plan = convert_to_fp16(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    assert {i.name: i.data_type for i in m16.graph.initializer} == {"scales": F32}
    y = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)})[0]
    assert y[0, 0, 3, 3] == 3.0 and plan.fp16_nodes == 1


@pytest.fixture(scope="module")
def demo_fused():
    loaded = load_model_file(demo_model_path("detector"))
    raw = export_onnx(loaded, ExportConfig(input_size=(128, 128), batch_size=1, dynamic_batch=True))
    fused = apply_decode(raw, "boxes", loaded.model.strides, loaded.model.num_classes,
                         level_sizes((128, 128), loaded.model.strides))
    return loaded, fused


def _demo_feeds(loaded, n=8):
    from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
    from autotimm_deploy.demo.train import to_tensor

    imgs = [render_detection_sample(SPLIT_SEEDS["val"] + k, size=128)[0] for k in range(n)]
    return [("demo", {"images": to_tensor(imgs, loaded.metadata["mean"], loaded.metadata["std"]).numpy()})]


def test_demo_detector_fp16_parity_per_output_and_detections(demo_fused, tmp_path):
    loaded, fused = demo_fused
    m16, plan = convert_to_fp16(fused)
    path = tmp_path / "model.fp16.onnx"
    onnx.save(m16, path)
    assert path.stat().st_size < 0.56 * len(fused.SerializeToString())  # weights really halved
    # the decode is an FP32 island: every node that writes boxes/scores is FP32
    assert {n for n in plan.fp32_nodes if n.startswith("decode_p3/")} >= {"decode_p3/dist/exp/Exp", "decode_p3/boxes/Min"}
    rep = run_parity(loaded.model, path, _demo_feeds(loaded, 16), "boxes", tolerances=FP16_TOLERANCES)
    errs = {o.name: o.max_abs for o in rep.outputs}
    assert rep.passed, rep.to_markdown()
    assert 1e-3 < errs["boxes"] < 0.5 and 1e-5 < errs["scores"] < 5e-3  # FP16-sized errors, well inside tolerance
    d = rep.detections
    assert d.reference >= 30 and d.matched_fraction >= 0.99


def test_overflow_guard_keeps_overflowing_layers_fp32(demo_fused):
    loaded = load_model_file(demo_model_path("detector"))
    model = loaded.model
    with torch.no_grad():  # plant an overflow: P3's lateral conv now outputs ~7e4 > 65504
        model.fpn.lateral_conv3.weight.mul_(1e4)
        model.fpn.lateral_conv3.bias.mul_(1e4)
    raw = export_onnx(loaded, ExportConfig(input_size=(128, 128), batch_size=1, dynamic_batch=True))
    fused = apply_decode(raw, "boxes", model.strides, model.num_classes, level_sizes((128, 128), model.strides))
    probes = [(label, {"images": x}) for label, x in
              probe_inputs((1, 3, 128, 128), loaded.metadata["mean"], loaded.metadata["std"])]
    x = probes[-1][1]["images"]
    unguarded, _ = convert_to_fp16(fused)
    outs = ort.InferenceSession(unguarded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    assert not all(np.isfinite(o).all() for o in outs)  # the plant really overflows FP16
    m16, plan = convert_to_fp16_guarded(fused, probes)
    kept = {o.node: o for o in plan.overflow}
    assert "/model/fpn/lateral_conv3/Conv" in kept and kept["/model/fpn/lateral_conv3/Conv"].max_abs > FP16_MAX
    assert "lateral_conv3" in str(kept["/model/fpn/lateral_conv3/Conv"])
    assert not any("layer4" in n for n in kept)  # untouched layers stay FP16
    rep = run_parity(model, _save(m16), [("probe", {"images": x})], "boxes", tolerances=FP16_TOLERANCES)
    assert rep.passed, rep.to_markdown()


def _save(model):
    import tempfile

    path = tempfile.mktemp(suffix=".onnx")
    onnx.save(model, path)
    return path


def test_demo_detector_fp16_finite_on_extreme_inputs(demo_fused):
    loaded, fused = demo_fused
    probes = [(label, {"images": x}) for label, x in
              probe_inputs((2, 3, 128, 128), loaded.metadata["mean"], loaded.metadata["std"], seed=5)]
    assert find_overflows(fused, probes) == []  # the trained demo detector stays far from 65504
    m16, plan = convert_to_fp16_guarded(fused, probes)
    sess = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    extreme = probes + [("gaussian x10", {"images": (rng.standard_normal((2, 3, 128, 128)) * 10).astype(np.float32)})]
    for label, feed in extreme:
        for out in sess.run(None, feed):
            assert np.isfinite(out).all(), label


def test_default_islands_documented_ops():
    assert {"InstanceNormalization", "LayerNormalization", "Exp", "Range"} <= set(DEFAULT_ISLANDS.op_types)
    assert "decode*" in DEFAULT_ISLANDS.node_names


def test_fp16_repair_keeps_the_amplifying_block_in_fp32(tmp_path):
    """mobilenetv2_035 with randomised BatchNorm statistics: its FP16 scores miss the 1e-2 tolerance (issue 14's
    list). The repair measures which block's FP32 precision lowers the output error most and keeps it."""
    from autotimm_deploy import ObjectDetector, save_model
    from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
    from autotimm_deploy.parity.random_init import randomize_norms, spread_head

    torch.manual_seed(0)
    model = spread_head(randomize_norms(ObjectDetector("mobilenetv2_035", num_classes=4, fpn_channels=64, num_convs=1)))
    path = save_model(model, tmp_path / "m.pt", input_size=(224, 224))
    lines = []
    man = export_model(path, tmp_path / "out", ExportOptions(fp16=True, engine="none", batch=(1, 1, 2)),
                       progress=lines.append)
    repair = man["fp16"]["repair"]
    assert not repair[0]["passed"] and "scores err" in repair[0]["summary"]  # FP16 failed as exported
    assert repair[-1]["passed"] and 2 <= len(repair) <= 3 and man["parity"]["passed"]
    kept = [k for step in repair for k in step["kept_fp32"]]
    assert all(k["error_reduction"] > 0.1 and k["block"].startswith("/model/backbone/") for k in kept)
    entry = next(a for a in man["artifacts"] if a["role"] == "onnx-fp16")
    assert entry["parity"] == "pass" and entry["fp16_plan"]["repair_kept_fp32"] == [k["block"] for k in kept]
    assert any("FP16 repair step 1/" in line for line in lines)
    parity = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert parity["fp16_repair"] == repair and "# FP16 repair" in (tmp_path / "out" / "parity.md").read_text()
    # the kept blocks are really FP32 in the written graph
    m16 = onnx.load(tmp_path / "out" / "model.fp16.onnx")
    types = _types(m16)
    block_nodes = [n for n in m16.graph.node if n.name.startswith(kept[0]["block"] + "/") and n.op_type == "Conv"]
    assert block_nodes and all(types[n.output[0]] == F32 for n in block_nodes)
