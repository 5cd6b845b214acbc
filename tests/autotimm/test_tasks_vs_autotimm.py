"""AutoTimm's YOLOXDetector, SemanticSegmentor (both heads) and InstanceSegmentor through the whole chain, against
AutoTimm itself: checkpoints real AutoTimm wrote (tests/autotimm/builders.py) export with parity (FP32 and FP16,
the TensorRT-RTX engines built), the exported networks reproduce AutoTimm's forward, and the runtime's ``predict()``
equals AutoTimm's ``predict()``."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model
from autotimm_deploy.images import letterbox_images

pytestmark = pytest.mark.slow
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, autotimm_checkpoint):
    made = {}

    def get(kind: str, decode=None, **kw) -> Path:
        key = (kind, decode, tuple(sorted(kw.items())))
        if key not in made:
            out = tmp_path_factory.mktemp(f"{kind}-{decode}")
            options = ExportOptions(decode=decode, **{"engine": "none", **kw})
            made[key] = (out, export_model(autotimm_checkpoint(kind), out, options, progress=None))
        return made[key]

    return get


def _images(n=4):
    return [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(n)]


def _batch(n=4):
    return letterbox_images(_images(n), (128, 128), MEAN, STD)[0]  # 128 px images: the stretch is the identity


def _run(path: Path, feed):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


@pytest.mark.parametrize("kind", ["yolox_detector", "semantic_deeplab", "semantic_fcn", "instance"])
def test_export_fp16_and_engine_pass_parity(kind, exported):
    out, manifest = exported(kind, fp16=True, engine="tensorrt-rtx")
    assert manifest["parity"]["passed"], json.dumps(manifest["parity"]["reports"])[:2000]
    files = {a["file"] for a in manifest["artifacts"]}
    assert {"model.onnx", "model.fp16.onnx", "model.fp16.engine"} <= files
    if kind == "instance":  # the mask head is its own network, and builds with TensorRT-RTX (no RoiAlign plugin)
        assert {"mask.onnx", "mask.fp16.onnx", "mask.fp16.engine"} <= files
        mask = [r for r in manifest["parity"]["reports"] if r["artifact"] == "mask.onnx"][0]
        assert mask["passed"] and {o["name"] for o in mask["outputs"]} == {"masks"}
        assert mask["outputs"][0]["max_abs"] < 1e-4
    family = {"yolox_detector": "autotimm-yolox-detector", "instance": "autotimm-instance"}.get(kind,
                                                                                                  "autotimm-segmentor")
    assert manifest["family"]["name"] == family
    reports = {r["artifact"]: r for r in manifest["parity"]["reports"]}
    agreement = reports["model.onnx"]["agreement"]
    assert agreement["status"] == "pass" and agreement["level"] == ("pixels" if "semantic" in kind else "detection")


@pytest.mark.parametrize("kind", ["yolox_detector", "semantic_deeplab", "semantic_fcn", "instance"])
def test_raw_outputs_match_autotimm_forward(kind, exported, autotimm_checkpoint, autotimm_rebuild):
    model = autotimm_rebuild(autotimm_checkpoint(kind))
    out, _ = exported(kind, "raw")
    x = _batch()
    got = _run(out / "model.onnx", {"images": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x))
    if "semantic" in kind:
        np.testing.assert_allclose(got["logits"], ref.numpy(), atol=1e-4, rtol=1e-3)
        return
    keys = ["cls", "bbox"] + (["ctr"] if kind == "instance" else [])
    for key, levels in zip(keys, ref[:len(keys)]):
        scale = max(1.0, max(float(t.abs().max()) for t in levels))  # pixel distances reach 100 px: 1e-6 relative
        for lv, t in zip(("p3", "p4", "p5", "p6", "p7"), levels):
            np.testing.assert_allclose(got[f"{key}_{lv}"], t.numpy(), atol=1e-5 * scale, rtol=1e-3,
                                       err_msg=f"{key}_{lv}")
    assert sorted(k for k in got if k.startswith("cls_")) == [f"cls_p{i}" for i in
                                                              range(3, 6 if kind == "yolox_detector" else 8)]
    if kind == "instance":
        with torch.no_grad():
            p3 = model.fpn(model.backbone(torch.from_numpy(x)))[0]
        np.testing.assert_allclose(got["mask_features"], p3.numpy(), atol=1e-4, rtol=1e-3)


def _match(theirs, ours, thresh: float, box_tol=1e-2, score_tol=1e-4):
    """Every AutoTimm detection has ours (same label, box within box_tol px, score within score_tol) and every one of
    ours is matched, except detections scoring within score_tol of the threshold (FP32 summation order decides on
    which side of it they fall); returns AutoTimm's index -> ours."""
    used, pairs = np.zeros(len(ours.scores), bool), {}
    for i, (b, s, lb) in enumerate(zip(theirs["boxes"].numpy(), theirs["scores"].numpy(), theirs["labels"].numpy())):
        ok = (~used & (ours.labels == lb) & (np.abs(ours.boxes - b).max(axis=1) <= box_tol)
              & (np.abs(ours.scores - s) <= score_tol))
        assert ok.any() or s <= thresh + score_tol, f"AutoTimm detection {b.tolist()} {float(s):.5f} label {int(lb)}"
        if ok.any():
            pairs[i] = int(np.flatnonzero(ok)[0])
            used[pairs[i]] = True
    assert (used | (ours.scores <= thresh + score_tol)).all()
    return pairs


@pytest.mark.parametrize("kind", ["yolox_detector", "instance"])
def test_runtime_predict_equals_autotimm_predict(kind, exported, autotimm_checkpoint, autotimm_rebuild):
    model = autotimm_rebuild(autotimm_checkpoint(kind))
    out, _ = exported(kind)
    with torch.no_grad():
        theirs = model.predict(torch.from_numpy(_batch()))
    ours = load(out).predict(_images())
    assert sum(len(t["scores"]) for t in theirs) >= 8
    for t, o in zip(theirs, ours):
        pairs = _match(t, o, model.score_thresh)
        if kind == "instance":  # AutoTimm pastes in the network's frame: the image's here (128 px, identity)
            for i, j in pairs.items():
                agree = float((t["masks"][i].numpy() == o.masks[j]).mean())
                assert agree >= 0.9999, f"mask {i}: {agree:.6f} of the pixels agree"
            assert any(m.any() for m in o.masks)


@pytest.mark.parametrize("kind", ["semantic_deeplab", "semantic_fcn"])
def test_segmentation_labels_equal_autotimm_predict(kind, exported, autotimm_checkpoint, autotimm_rebuild):
    model = autotimm_rebuild(autotimm_checkpoint(kind))
    x = _batch()
    with torch.no_grad():
        theirs = model.predict(torch.from_numpy(x)).numpy()
    out, manifest = exported(kind)  # --decode labels (the default): AutoTimm's predict() in the graph
    assert manifest["artifacts"][1]["outputs"][0]["name"] == "labels"
    got = _run(out / "model.onnx", {"images": x})["labels"]
    np.testing.assert_array_equal(got, theirs)
    ours = load(out).predict(_images())
    for t, o in zip(theirs, ours):
        np.testing.assert_array_equal(o.network_labels, t)
        assert o.labels.shape == (128, 128) and len(o.areas()) >= 2
    full, _ = exported(kind, "labels-full")  # resized to the input, then argmax, in the graph
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(torch.from_numpy(x)), size=(128, 128), mode="bilinear",
                                                 align_corners=False)
    agree = float((_run(full / "model.onnx", {"images": x})["labels"] == logits.argmax(1).numpy()).mean())
    assert agree >= 0.999
