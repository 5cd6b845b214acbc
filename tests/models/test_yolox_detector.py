"""AutotimmYoloxDetector against AutoTimm's own YOLOXDetector (imported here as the reference only):
same state-dict keys, weights load strictly, same raw outputs, and the reference decoder with the family's
post-processing gives AutoTimm's ``predict()`` detections."""

import io

import numpy as np
import pytest
import torch

from autotimm_deploy.models.decode import postprocess_outputs
from autotimm_deploy.models.families.yolox_detector import (
    AUTOTIMM_YOLOX_DETECTOR, YOLOX_VARIANTS, AutotimmYoloxDetector)
from autotimm_deploy.models.family import Family
from autotimm_deploy.parity.random_init import randomize_norms

autotimm = pytest.importorskip("autotimm")
_NOT_NETWORK = ("focal_loss.", "giou_loss.", "val_metrics.", "test_metrics.")
SIZE = 128


def _network(sd):
    return {k: v for k, v in sd.items() if not k.startswith(_NOT_NETWORK)}


@pytest.fixture(scope="module")
def pair():
    """``pair(model_name)``: (AutoTimm's YOLOXDetector with random norms and a spread head, ours loaded from it)."""
    made = {}

    def get(name):
        if name not in made:
            torch.manual_seed(0)
            ref = autotimm.YOLOXDetector(model_name=name, num_classes=3, compile_model=False, seed=None,
                                         deterministic=False)
            randomize_norms(ref, seed=1)
            g = torch.Generator().manual_seed(2)
            with torch.no_grad():
                for m in ref.head.modules():
                    if isinstance(m, torch.nn.GroupNorm):
                        m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                    elif isinstance(m, torch.nn.Conv2d):  # He-normal: outputs depend on the whole network
                        fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                        m.bias.zero_()
                ref.head.cls_pred.bias.fill_(-1.5)  # sigmoid ~0.2 on average: many pass 0.01, scores spread
                ref.head.reg_pred.weight.mul_(2.0)  # distances ~ scale * (1 +- 1.3): boxes of 8-60 px, some inverted
                ref.head.reg_pred.bias.fill_(1.0)
                for i, s in enumerate(ref.head.scales):
                    s.scale.fill_(4.0 * 2 ** i)
            ours = AutotimmYoloxDetector(name, 3)
            ours.load_state_dict(_network(ref.state_dict()), strict=True)
            made[name] = ref.eval(), ours.eval()
        return made[name]

    return get


def _images(batch=2, size=SIZE):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", ["yolox-nano", "yolox-tiny"])
def test_state_dict_keys_and_raw_outputs_equal_autotimm(pair, name):
    ref, ours = pair(name)
    theirs_sd, ours_sd = _network(ref.state_dict()), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == v.shape for k, v in theirs_sd.items())
    assert ours.neck.out_channels == ref.neck.out_channels == YOLOX_VARIANTS[name][2][0]
    x = _images()
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    assert len(oc) == len(ob) == 3
    for lv, stride in enumerate(ours.strides):
        assert oc[lv].shape == (2, 3, SIZE // stride, SIZE // stride) and ob[lv].shape == (2, 4, SIZE // stride,
                                                                                           SIZE // stride)
        torch.testing.assert_close(oc[lv], rc[lv], atol=1e-5, rtol=0)
        torch.testing.assert_close(ob[lv], rb[lv], atol=1e-5, rtol=0)
    assert ob[0].abs().max() > 5 and oc[0].std() > 0.3  # not a constant head


def _match(theirs, ours, box_tol=1e-3, score_tol=1e-5):
    assert len(ours["scores"]) == len(theirs["scores"]) > 0
    used = np.zeros(len(ours["scores"]), bool)
    for b, s, lb in zip(theirs["boxes"], theirs["scores"], theirs["labels"]):
        ok = (~used & (ours["labels"] == lb) & (np.abs(ours["boxes"] - b).max(axis=1) <= box_tol)
              & (np.abs(ours["scores"] - s) <= score_tol))
        assert ok.any(), f"AutoTimm detection {b.tolist()} {float(s):.5f} label {int(lb)} has no counterpart"
        used[np.flatnonzero(ok)[0]] = True
    return len(used)


@pytest.mark.parametrize("name", ["yolox-nano", "yolox-tiny"])
@pytest.mark.parametrize("score_thresh", [None, 0.45])  # the family's default (0.01, 100 kept) and a sparser one
def test_postprocess_reproduces_autotimm_predict(pair, name, score_thresh):
    ref, ours = pair(name)
    assert AUTOTIMM_YOLOX_DETECTOR.postprocess.score_thresh == ref.score_thresh
    assert AUTOTIMM_YOLOX_DETECTOR.postprocess.iou_thresh == ref.nms_thresh
    assert AUTOTIMM_YOLOX_DETECTOR.postprocess.max_detections == ref.max_detections_per_image
    x = _images()
    ref.score_thresh = AUTOTIMM_YOLOX_DETECTOR.postprocess.score_thresh if score_thresh is None else score_thresh
    try:
        with torch.no_grad():
            theirs = [{k: v.numpy() for k, v in d.items()} for d in ref.predict(x)]
            cls, bbox = ours(x)
    finally:
        ref.score_thresh = AUTOTIMM_YOLOX_DETECTOR.postprocess.score_thresh
    raw = {f"{key}_{lv}": t.numpy() for key, levels in (("cls", cls), ("bbox", bbox))
           for lv, t in zip(("p3", "p4", "p5"), levels)}
    dets = postprocess_outputs(raw, decode_mode="raw", strides=(8, 16, 32), image_size=(SIZE, SIZE),
                               score_thresh=score_thresh, family=AUTOTIMM_YOLOX_DETECTOR)
    counts = [_match(t, o) for t, o in zip(theirs, dets)]
    assert (max(counts) == 100) == (score_thresh is None) and min(counts) >= 3, counts
    if score_thresh is None:  # the raw network's inverted boxes (x2 < x1) are detections on both sides
        assert all((d["boxes"][:, 2] < d["boxes"][:, 0]).any() for d in dets)


def test_unknown_model_name_names_the_choices():
    with pytest.raises(ValueError, match="yolox-nano, yolox-tiny, yolox-s, yolox-m, yolox-l, yolox-x"):
        AutotimmYoloxDetector("yolox-xs", 3)
    with pytest.raises(ValueError):
        autotimm.YOLOXDetector(model_name="yolox-xs", num_classes=3, compile_model=False, seed=None,
                               deterministic=False)


def test_family_declaration_round_trips():
    fam = AUTOTIMM_YOLOX_DETECTOR
    assert Family.from_dict(fam.to_dict()) == fam
    assert fam.output_names(3) == ["cls_p3", "cls_p4", "cls_p5", "bbox_p3", "bbox_p4", "bbox_p5"]
    assert fam.convention == "yolox-ltrb-linear-v1" and fam.preprocess.align == "center"
    assert fam.preprocess.fill == (114, 114, 114) and fam.postprocess.candidates == "argmax"


def test_onnx_export_dynamic_batch(pair):
    ort = pytest.importorskip("onnxruntime")
    _, ours = pair("yolox-nano")
    names = AUTOTIMM_YOLOX_DETECTOR.output_names(3)
    buf = io.BytesIO()
    torch.onnx.export(ours, _images(1, SIZE), buf, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=names, dynamic_axes={n: {0: "batch"} for n in ["images", *names]})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = _images(3, SIZE)
    got = dict(zip(names, sess.run(None, {"images": x.numpy()})))
    with torch.no_grad():
        cls, bbox = ours(x)
    for name, t in zip(names, [*cls, *bbox]):
        np.testing.assert_allclose(got[name], t.numpy(), atol=1e-4, rtol=1e-4)
