import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autotimm_deploy import ExportError
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx
from autotimm_deploy.exporters.pipeline import level_sizes
from autotimm_deploy.exporters.surgery import (add_activations, add_box_decode, add_topk, apply_decode,
                                               export_graph, import_graph)
from autotimm_deploy.models.loaded import LoadedModel
from autotimm_deploy.parity.runners import reference_outputs

META = {"class_names": None, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture
def detector(small_detector):
    # spread the regression outputs so that exp/clip paths are exercised (boxes hit the image border)
    with torch.no_grad():
        small_detector.head.bbox_subnet[-1].bias.fill_(3.0)
        small_detector.head.bbox_subnet[-1].weight.normal_(0, 0.05)
    return small_detector


def _raw(model, dynamic_hw=False, size=(64, 96)):
    return export_onnx(LoadedModel(model, "detection", model.config, META, "0" * 64, None),
                       ExportConfig(size, dynamic_hw=dynamic_hw))


def _run(model_proto, x):
    sess = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": x})))


def _producer_ops(model_proto, output):
    """Op types on the chain that ends in ``output`` (last few nodes, walking producers)."""
    producers = {o: n for n in model_proto.graph.node for o in n.output}
    ops, name = [], output
    while name in producers and len(ops) < 4:
        node = producers[name]
        ops.append(node.op_type)
        name = node.input[0]
    return ops[::-1]


def test_activations_pass_node_sequence_and_values(detector):
    graph = import_graph(_raw(detector))
    add_activations(graph)
    m = export_graph(graph, _raw(detector))
    assert [o.name for o in m.graph.output][:2] == ["cls_p3", "cls_p4"]
    assert _producer_ops(m, "cls_p3")[-2:] == ["Conv", "Sigmoid"]
    assert _producer_ops(m, "ctr_p7")[-2:] == ["Conv", "Sigmoid"]
    assert _producer_ops(m, "bbox_p4")[-3:] == ["Conv", "Min", "Exp"]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96), dtype=np.float32)
    got = _run(m, x)
    ref = reference_outputs(detector, torch.from_numpy(x), "activations")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("dynamic_hw", [False, True])
def test_box_decode_pass(detector, dynamic_hw):
    raw = _raw(detector, dynamic_hw)
    graph = import_graph(raw)
    add_box_decode(graph, detector.strides, 4, None if dynamic_hw else level_sizes((64, 96), detector.strides))
    m = export_graph(graph, raw)
    assert [o.name for o in m.graph.output] == ["boxes", "scores"]
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Exp") == 5 and ops.count("Sigmoid") == 10
    assert ("Range" in ops) == dynamic_hw  # anchors in-graph when dynamic, folded constants when static
    shapes = [(2, 64, 96), (1, 128, 64)] if dynamic_hw else [(3, 64, 96)]
    for b, h, w in shapes:
        x = np.random.default_rng(1).standard_normal((b, 3, h, w), dtype=np.float32)
        got = _run(m, x)
        ref = reference_outputs(detector, torch.from_numpy(x), "boxes")
        n = sum(a * c for a, c in level_sizes((h, w), detector.strides))
        assert got["boxes"].shape == (b, n, 4) and got["scores"].shape == (b, n, 4)
        np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-2, rtol=1e-4)
        np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4, rtol=1e-3)
        assert got["boxes"][..., 2].max() == w and got["boxes"].min() == 0.0  # clipping is exercised


def test_box_decode_order_and_anchor_offsets(detector):
    """Candidate n of level l is offset_l + i * W_l + j with anchor ((j + .5) s, (i + .5) s)."""
    with torch.no_grad():
        detector.head.bbox_subnet[-1].weight.zero_()
        detector.head.bbox_subnet[-1].bias.fill_(0.0)  # every distance exp(0) = 1 px
    m = apply_decode(_raw(detector), "boxes", detector.strides, 4, level_sizes((64, 96), detector.strides))
    boxes = _run(m, np.zeros((1, 3, 64, 96), np.float32))["boxes"][0]
    # P3 (8 x 12) cell (i=1, j=2) -> index 14, centre (20, 12); P4 starts at 96, cell (0, 1) -> (24, 8)
    np.testing.assert_allclose(boxes[1 * 12 + 2], [19, 11, 21, 13])
    np.testing.assert_allclose(boxes[96 + 1], [23, 7, 25, 9])


def test_fp16_safe_clamp_gives_finite_boxes(detector):
    with torch.no_grad():
        detector.head.bbox_subnet[-1].bias.fill_(200.0)  # exp(200) is inf even in float32
    m = apply_decode(_raw(detector), "boxes", detector.strides, 4, level_sizes((64, 96), detector.strides))
    out = _run(m, np.zeros((1, 3, 64, 96), np.float32))
    assert np.isfinite(out["boxes"]).all()
    np.testing.assert_array_equal(out["boxes"][0, 0], [0, 0, 96, 64])


def test_topk_pass(detector):
    raw = _raw(detector, dynamic_hw=True)
    m = apply_decode(raw, "boxes", detector.strides, 4, None, topk=30)
    assert [o.name for o in m.graph.output] == ["boxes", "scores", "indices"]
    assert "TopK" in [n.op_type for n in m.graph.node]
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 96), dtype=np.float32)
    got = _run(m, x)
    ref = reference_outputs(detector, torch.from_numpy(x), "boxes", topk=30)
    assert got["boxes"].shape == (2, 30, 4) and got["scores"].shape == (2, 30, 4)
    np.testing.assert_array_equal(got["indices"], ref["indices"])
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4, rtol=1e-3)
    # K larger than the candidates (tiny input): outputs shrink to N instead of failing
    small = _run(m, np.zeros((1, 3, 32, 32), np.float32))
    assert small["boxes"].shape == (1, 16 + 4 + 1 + 1 + 1, 4)  # 23 < K = 30


def test_pass_errors(detector):
    raw = _raw(detector)
    with pytest.raises(ExportError, match="needs the boxes/scores outputs"):
        add_topk(import_graph(raw), 10)
    with pytest.raises(ExportError, match="decode mode must be one of"):
        apply_decode(raw, "nms", detector.strides, 4)
    with pytest.raises(ExportError, match="--topk needs --decode boxes"):
        apply_decode(raw, "activations", detector.strides, 4, topk=5)


@pytest.mark.parametrize("mode", ["activations", "boxes"])
def test_fused_graph_grows_only_by_the_decode_constants(detector, mode):
    """Folding used to give every use of a shared head weight its own copy (+37 % on resnet18-FCOS): each
    distinct constant is stored once, so the fused graph is the raw one plus the anchor grid."""
    raw = _raw(detector)
    fused = apply_decode(raw, mode, detector.strides, 4, level_sizes((64, 96), detector.strides))
    anchors = sum(a * c for a, c in level_sizes((64, 96), detector.strides)) * 4 * 4 if mode == "boxes" else 0
    assert len(fused.SerializeToString()) <= len(raw.SerializeToString()) + anchors + 4096
    values = [onnx.numpy_helper.to_array(i) for i in fused.graph.initializer]
    distinct = {(v.dtype.str, v.shape, v.tobytes()) for v in values}
    assert len(distinct) == len(values)


def test_constants_are_shared_only_when_dtype_shape_and_value_all_agree():
    """A scalar 2 and a one-element [2] are different constants (Slice needs the 1-D one): sharing them broke
    every dynamic-H/W export."""
    import onnx_graphsurgeon as gs

    from autotimm_deploy.exporters.surgery import share_identical_constants

    x = gs.Variable("x", dtype=np.float32, shape=[4])
    consts = [gs.Constant("a", np.array([2], np.int64)), gs.Constant("b", np.array(2, np.int64)),
              gs.Constant("c", np.array([2], np.int64)), gs.Constant("d", np.array([2], np.int32))]
    outs = [gs.Variable(f"y{i}", dtype=np.float32) for i in range(4)]
    nodes = [gs.Node("Identity", inputs=[x, c], outputs=[o]) for c, o in zip(consts, outs)]
    graph = share_identical_constants(gs.Graph(nodes=nodes, inputs=[x], outputs=outs))
    used = [n.inputs[1] for n in graph.nodes]
    assert used[0] is used[2] and len({id(c) for c in used}) == 3
    assert [np.asarray(c.values).shape for c in used] == [(1,), (), (1,), (1,)]


def test_box_decode_uses_the_networks_level_sizes_not_input_over_stride():
    """pit_ti_224's maps at 224 are 27/14/7 (not 28/14/7): the decode takes each level's size from the
    exported graph; the input/stride formula does not even pass shape inference."""
    from autotimm_deploy import ObjectDetector
    from autotimm_deploy.exporters.surgery import static_level_sizes

    torch.manual_seed(0)
    model = ObjectDetector("pit_ti_224", num_classes=4, fpn_channels=32, num_convs=1).eval()
    raw = _raw(model, size=(224, 224))
    sizes = static_level_sizes(raw)
    assert sizes[:3] == [(27, 27), (14, 14), (7, 7)] and sizes != level_sizes((224, 224), model.strides)
    with pytest.raises(Exception):
        apply_decode(raw, "boxes", model.strides, 4, level_sizes((224, 224), model.strides))
    m = apply_decode(raw, "boxes", model.strides, 4, sizes)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224), dtype=np.float32)
    got = _run(m, x)
    ref = reference_outputs(model, torch.from_numpy(x), "boxes")
    assert got["boxes"].shape == (1, sum(h * w for h, w in sizes), 4)
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-2, rtol=1e-4)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4, rtol=1e-3)


def test_classifier_graph_is_constant_folded():
    """NF-Net standardises its conv weights with a training-mode BatchNormalization on constants: TensorRT
    cannot parse it, so the classifier's model.onnx is constant-folded like a detector's."""
    from autotimm_deploy import ImageClassifier
    from autotimm_deploy.exporters.surgery import fold_graph

    torch.manual_seed(0)
    model = ImageClassifier("test_nfnet", num_classes=3).eval()
    raw = export_onnx(LoadedModel(model, "classification", model.config, META, "0" * 64, None), ExportConfig((64, 64)))
    training_bn = lambda m: [n.name for n in m.graph.node if n.op_type == "BatchNormalization"
                             and any(a.name == "training_mode" and a.i == 1 for a in n.attribute)]
    assert len(training_bn(raw)) > 10
    folded = fold_graph(raw)
    assert training_bn(folded) == [] and len(folded.graph.node) < len(raw.graph.node)
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(folded, x)["logits"], ref, atol=1e-4, rtol=1e-3)
