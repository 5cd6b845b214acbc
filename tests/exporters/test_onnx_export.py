import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from autotimm_deploy import ExportError
from autotimm_deploy.exporters.onnx_export import (ExportConfig, check_input_size, detector_output_names,
                                                   export_onnx, get_metadata)
from autotimm_deploy.models.loaded import LoadedModel

META = {"class_names": ["a", "b", "c", "d"], "mean": [0.5] * 3, "std": [0.25] * 3}


def _loaded(model, task):
    return LoadedModel(model, task, model.config, dict(META), "ab" * 32, None)


def _session(m):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def _dims(vi):
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_output_name_contract():
    assert detector_output_names() == [f"{p}_p{i}" for p in ("cls", "bbox", "ctr") for i in range(3, 8)]


def test_static_hw_detector_export(small_detector):
    m = export_onnx(_loaded(small_detector, "detection"), ExportConfig((64, 96)))
    outs = {o.name: _dims(o) for o in m.graph.output}
    assert list(outs) == detector_output_names()
    assert outs["cls_p3"] == ["batch", 4, 8, 12] and outs["bbox_p7"] == ["batch", 4, 1, 1]
    assert outs["ctr_p5"] == ["batch", 1, 2, 3]
    assert _dims(m.graph.input[0]) == ["batch", 3, 64, 96]
    assert m.opset_import[0].version == 17
    onnx.checker.check_model(m, full_check=True)
    # every intermediate tensor has a fully inferred shape
    assert len(m.graph.value_info) > 50
    assert all(v.type.tensor_type.HasField("shape") for v in m.graph.value_info)
    assert all(d.dim_value > 0 or d.dim_param for v in m.graph.value_info for d in v.type.tensor_type.shape.dim)
    meta = get_metadata(m)
    assert meta["task"] == "detection" and json.loads(meta["strides"]) == [8, 16, 32, 64, 128]
    assert json.loads(meta["class_names"]) == META["class_names"] and meta["source_sha256"] == "ab" * 32
    assert json.loads(meta["input_size"]) == [64, 96] and "exp(min(bbox, 10.0))" in meta["decoding_convention"]
    assert json.loads(meta["family"])["name"] == "seed-fcos"
    assert meta["autotimm_deploy.version"]


@pytest.mark.parametrize("dynamic_hw, shapes", [(False, [(1, 64, 96), (3, 64, 96)]),
                                                (True, [(1, 64, 96), (2, 128, 64)])])
def test_export_matches_pytorch_on_two_shapes(small_detector, dynamic_hw, shapes):
    m = export_onnx(_loaded(small_detector, "detection"), ExportConfig((64, 96), dynamic_hw=dynamic_hw))
    sess = _session(m)
    for b, h, w in shapes:
        x = torch.randn(b, 3, h, w)
        got = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = [t for g in small_detector(x) for t in g]
        for g, r in zip(got, ref):
            assert g.shape == tuple(r.shape)
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=1e-3)
    assert not small_detector.training  # export must not flip the user's model into training mode


def test_dynamic_hw_dims_are_named(small_detector):
    m = export_onnx(_loaded(small_detector, "detection"), ExportConfig((64, 64), dynamic_hw=True))
    assert _dims(m.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(m.graph.output[0]) == ["batch", 4, "height_p3", "width_p3"]


def test_static_batch(small_detector):
    m = export_onnx(_loaded(small_detector, "detection"), ExportConfig((64, 64), batch_size=2, dynamic_batch=False))
    assert _dims(m.graph.input[0]) == [2, 3, 64, 64]


def test_classifier_export(small_classifier):
    m = export_onnx(_loaded(small_classifier, "classification"), ExportConfig((64, 64), dynamic_hw=True))
    assert [o.name for o in m.graph.output] == ["logits"] and _dims(m.graph.output[0]) == ["batch", 4]
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        ref = small_classifier(x).numpy()
    np.testing.assert_allclose(_session(m).run(None, {"images": x.numpy()})[0], ref, atol=1e-4, rtol=1e-3)


def test_opset_selectable(small_classifier):
    m = export_onnx(_loaded(small_classifier, "classification"), ExportConfig((32, 32), opset=18))
    assert m.opset_import[0].version == 18


@pytest.mark.parametrize("size, message", [((100, 128), "height 100 .* nearest valid height: 96 or 128"),
                                           ((64, 16), "width 16 .* nearest valid width: 32")])
def test_bad_sizes_name_nearest_valid(size, message):
    with pytest.raises(ExportError, match=message):
        check_input_size(size, 32)


def test_classifier_size_need_not_be_a_stride_multiple(small_detector):
    """levit_128s is fixed at 224 and its last stride is 64: a pooled classifier was refused at its own size.
    Detectors keep the stride-multiple rule (their FPN levels must line up)."""
    from autotimm_deploy import ImageClassifier
    from autotimm_deploy.exporters.onnx_export import max_stride

    torch.manual_seed(0)
    model = ImageClassifier("levit_128s", num_classes=3).eval()
    assert model.backbone.feature_info[-1]["reduction"] == 64 and max_stride(model) == 1
    m = export_onnx(_loaded(model, "classification"), ExportConfig((224, 224)))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(_session(m).run(None, {"images": x.numpy()})[0], ref, atol=1e-4, rtol=1e-3)
    assert max_stride(small_detector) == 32
    with pytest.raises(ExportError, match="not a multiple of the backbone's largest stride 32"):
        export_onnx(_loaded(small_detector, "detection"), ExportConfig((100, 96)))


def test_dynamo_fallback_when_torchscript_needs_static_sizes(capfd):
    """bat_resnext26ts's adaptive_max_pool2d cannot be exported by the TorchScript exporter with a dynamic
    batch ("input size not accessible"): the export falls back to the dynamo exporter, says so in the
    metadata, keeps the batch dynamic and matches PyTorch on two batch sizes, without the exporter's graph dump."""
    from autotimm_deploy import ImageClassifier

    torch.manual_seed(0)
    model = ImageClassifier("bat_resnext26ts", num_classes=3).eval()
    m = export_onnx(_loaded(model, "classification"), ExportConfig((256, 256)))
    exporter = get_metadata(m)["exporter"]
    assert exporter.startswith("dynamo exporter (the TorchScript exporter failed: ") and "adaptive_max_pool2d" in exporter
    assert m.opset_import[0].version == 18 and _dims(m.graph.input[0])[0] == "batch"
    sess = _session(m)
    for b in (1, 2):
        x = torch.randn(b, 3, 256, 256)
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"images": x.numpy()})[0], ref, atol=1e-4, rtol=1e-3)
    out = capfd.readouterr().out
    assert "Torch IR graph" not in out and len(out) < 2000
    with pytest.raises(ExportError, match="height must be a positive number of pixels, got 0"):  # a plain refusal does not reach the fallback
        export_onnx(_loaded(model, "classification"), ExportConfig((0, 256)))


def test_export_returns_its_forward_pass_for_the_parity_reference(small_detector):
    """The export runs the model once on its example; that output is the parity reference for the same input
    (the pipeline runs PyTorch one time fewer), so it must be exactly the model's output on that input."""
    from autotimm_deploy.exporters.onnx_export import export_onnx_with_forward
    from autotimm_deploy.parity.runners import reference_from_forward, reference_outputs

    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 3, 64, 96), dtype=np.float32))
    m, forward = export_onnx_with_forward(_loaded(small_detector, "detection"), ExportConfig((64, 96)), x)
    ref = reference_outputs(small_detector, x, "boxes")
    shared = reference_from_forward(small_detector, forward, (64, 96), "boxes")
    assert list(shared) == ["boxes", "scores"]
    for k in ref:
        np.testing.assert_array_equal(shared[k], ref[k])
    got = _session(m).run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got[0], forward[0][0].numpy(), atol=1e-4, rtol=1e-3)  # cls_p3
    with pytest.raises(ExportError, match="export example of shape"):
        export_onnx_with_forward(_loaded(small_detector, "detection"), ExportConfig((64, 96)), x[:, :, :32])
