"""Parity against AutoTimm itself (FP32): the exports of checkpoints that real AutoTimm wrote reproduce
AutoTimm's own forward (raw outputs), its decode (fused boxes/scores) and its ``predict()`` (the runtime's
detections with AutoTimm's post-processing as the default), and the runtime's preprocessing reproduces
AutoTimm's eval transforms."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from autotimm_deploy.demo.shapes import SPLIT_SEEDS, render_classification_sample, render_detection_sample
from autotimm_deploy.engines import load
from autotimm_deploy.engines.predictor import letterbox_images
from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

pytestmark = pytest.mark.slow

INDEX = json.loads((Path(__file__).resolve().parents[1] / "fixtures/autotimm/fixtures.json").read_text())["fixtures"]
DETECTORS = sorted(k for k, v in INDEX.items() if v["task"] == "detector")
CLASSIFIERS = sorted(k for k, v in INDEX.items() if v["task"] != "detector")
RAW_TOL = dict(atol=1e-4, rtol=1e-3)  # the FP32 tensor tolerances of autotimm-parity (parity/check.py)


@pytest.fixture(scope="module")
def export(tmp_path_factory, fixture_path):
    made = {}

    def get(name: str, decode: str = "boxes") -> Path:
        if (name, decode) not in made:
            out = tmp_path_factory.mktemp(f"{name}-{decode}")
            options = ExportOptions(decode=decode if INDEX[name]["task"] == "detector" else "raw", engine="none",
                                    check=False)
            export_model(fixture_path(name), out, options, progress=None)
            made[name, decode] = out
        return made[name, decode]

    return get


def _det_images(n: int = 8):
    return [render_detection_sample(SPLIT_SEEDS["test"] + k, size=128)[0] for k in range(n)]


def _run(path: Path, batch: np.ndarray):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": batch})))


def _match(theirs, ours, box_tol: float, score_tol: float) -> int:
    """Greedy one-to-one match of AutoTimm's detections to ours (same label, every box coordinate within
    ``box_tol`` px, score within ``score_tol``): asserts everything matches both ways, returns the count."""
    assert len(ours["scores"]) == len(theirs["scores"])
    used = np.zeros(len(ours["scores"]), bool)
    for b, s, lb in zip(theirs["boxes"], theirs["scores"], theirs["labels"]):
        ok = (~used & (ours["labels"] == lb) & (np.abs(ours["boxes"] - b).max(axis=1) <= box_tol)
              & (np.abs(ours["scores"] - s) <= score_tol))
        assert ok.any(), f"AutoTimm detection {b.tolist()} {float(s):.5f} label {int(lb)} has no counterpart"
        used[np.flatnonzero(ok)[0]] = True
    return len(used)


@pytest.mark.parametrize("name", DETECTORS)
def test_raw_outputs_match_autotimm_forward(name, export, autotimm_model):
    model = autotimm_model(name)
    batch, _ = letterbox_images(_det_images(), (128, 128), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = _run(export(name, "raw") / "model.onnx", batch)
    with torch.no_grad():
        cls, reg, ctr = model(torch.from_numpy(batch))
    expected = {**{f"cls_p{i + 3}": t for i, t in enumerate(cls)}, **{f"bbox_p{i + 3}": t for i, t in enumerate(reg)}}
    if ctr is not None:
        expected.update({f"ctr_p{i + 3}": t for i, t in enumerate(ctr)})
    assert sorted(out) == sorted(expected)  # YOLOX: no ctr_p* outputs at all
    for key, ref in expected.items():
        np.testing.assert_allclose(out[key], ref.numpy(), err_msg=key, **RAW_TOL)
    assert float(reg[0].abs().max()) > 1.0  # pixel distances, not log-distances


@pytest.mark.parametrize("name", DETECTORS)
def test_fused_boxes_and_scores_match_autotimm_decode(name, export, autotimm_model):
    """Every candidate of the fused graph against AutoTimm's own decode with nothing thresholded or suppressed
    (score_thresh -1, NMS IoU 1.0): the argmax class, its score and the box of every location."""
    from autotimm.tasks._fcos_targets import decode_fcos_detections

    model = autotimm_model(name)
    batch, _ = letterbox_images(_det_images(4), (128, 128), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = _run(export(name, "boxes") / "model.onnx", batch)
    n = out["boxes"].shape[1]
    assert n == sum((128 // s) ** 2 for s in (8, 16, 32, 64)) + 1
    with torch.no_grad():
        cls, reg, ctr = model(torch.from_numpy(batch))
        theirs = decode_fcos_detections(cls, reg, ctr, model.strides, model.num_classes, (128, 128), -1.0, 1.0, n)
    for b, t in enumerate(theirs):
        ours = {"boxes": out["boxes"][b], "scores": out["scores"][b].max(axis=1), "labels": out["scores"][b].argmax(axis=1)}
        assert _match({k: v.numpy() for k, v in t.items()}, ours, box_tol=1e-3, score_tol=1e-5) == n


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("score_thresh", [None, 0.01])
def test_runtime_detections_match_autotimm_predict(name, score_thresh, export, autotimm_model):
    """``engines.load(export).predict(images)`` with its defaults (AutoTimm's argmax rule, its thresholds from
    the checkpoint) against ``ObjectDetector.predict`` on the same preprocessed images; at the checkpoint's
    score threshold and at 0.01 (many candidates through NMS)."""
    model = autotimm_model(name)
    images = _det_images()
    predictor = load(export(name), backend="onnxruntime")
    batch, _ = predictor.preprocess(images, (128, 128))
    if score_thresh is not None:
        model.score_thresh = score_thresh
    with torch.no_grad():
        theirs = model.predict(torch.from_numpy(batch))
    ours = predictor.predict(images, score_thresh=score_thresh)
    matched = 0
    for t, o in zip(theirs, ours):
        t = {k: v.numpy() for k, v in t.items()}
        # AutoTimm's YOLOX can return boxes inside out (l + r < 0); ours are the same boxes with ordered corners
        # (issue 23), after the same NMS on the same unordered boxes
        t["boxes"] = np.concatenate([np.minimum(t["boxes"][:, :2], t["boxes"][:, 2:]),
                                     np.maximum(t["boxes"][:, :2], t["boxes"][:, 2:])], axis=1)
        assert (o.boxes[:, :2] <= o.boxes[:, 2:]).all()
        matched += _match(t, {"boxes": o.boxes, "scores": o.scores, "labels": o.labels}, box_tol=1e-2, score_tol=1e-4)
    assert matched >= (8 if score_thresh is None else 100)  # real detections were compared
    assert predictor.info.family.postprocess.iou_thresh == model.nms_thresh


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_logits_and_probabilities_match_autotimm(name, export, autotimm_model):
    """Logits of the ONNX vs AutoTimm's forward; the runtime's preprocessing vs AutoTimm's eval transform
    (Resize(int(s * 256 / 224)) + CenterCrop(s) on PIL images); probabilities vs AutoTimm's predict_step
    (softmax, or sigmoid for multi-label)."""
    from autotimm.data.transforms import default_eval_transforms
    from PIL import Image

    model = autotimm_model(name)
    images = [render_classification_sample(SPLIT_SEEDS["test"] + k, size=64)[0] for k in range(8)]
    images += [np.asarray(Image.fromarray(images[0]).resize((96, 50)))]  # not square: the crop geometry matters
    predictor = load(export(name), backend="onnxruntime")
    ours_in, _ = predictor.preprocess(images, (64, 64))
    tf = default_eval_transforms(64)
    theirs_in = torch.stack([tf(Image.fromarray(im)) for im in images]).numpy()
    np.testing.assert_allclose(ours_in, theirs_in, atol=1e-5)
    with torch.no_grad():
        logits = model(torch.from_numpy(theirs_in))
        probs = model.predict_step(torch.from_numpy(theirs_in), 0)
    np.testing.assert_allclose(predictor.infer({"images": theirs_in})["logits"], logits.numpy(), **RAW_TOL)
    got = np.stack([r.probs for r in predictor.predict(images)])
    np.testing.assert_allclose(got, probs.numpy(), atol=1e-5)


@pytest.mark.parametrize("size", [(128, 128), (200, 100), (77, 128), (50, 300)])
def test_detection_preprocessing_matches_autotimm_eval_transform(size, fixture_path):
    """Letterbox placement, padding colour and normalisation of AutoTimm's detection eval transform
    (LongestMaxSize + centred PadIfNeeded with 114, ImageNet mean/std), on solid images (whose pixels no
    interpolation changes, so albumentations' OpenCV and the runtime's PIL resize agree exactly)."""
    from autotimm.data.detection_transforms import detection_eval_transforms

    from autotimm_deploy.models.readers import load_model_file

    family = load_model_file(fixture_path(DETECTORS[0])).family
    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = (200, 30, 90)
    theirs = detection_eval_transforms(128)(image=image, bboxes=[], labels=[])["image"].numpy()
    ours, lb = letterbox_images([image], (128, 128), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), family.preprocess)
    np.testing.assert_allclose(ours[0], theirs, atol=1e-5)
    corner = lb[0].to_image(np.array([[lb[0].pad_x, lb[0].pad_y, 128 - lb[0].pad_x, 128 - lb[0].pad_y]], np.float32))
    np.testing.assert_allclose(corner[0], [0, 0, w, h], atol=0.6 / lb[0].scale)  # the image's own corners
