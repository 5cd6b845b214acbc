import math

import pytest
import torch

from autotimm_deploy import ImageClassifier, ObjectDetector
from autotimm_deploy.models.decode import BBOX_LOG_CLAMP, anchor_points, decode


def test_object_detector_defaults_resnet50_shapes():
    model = ObjectDetector().eval()
    assert model.strides == (8, 16, 32, 64, 128)
    assert model.fpn.in_channels == [512, 1024, 2048] and model.fpn.out_channels == 256
    assert model.head.num_classes == 80 and len(model.head.cls_subnet) == 4 * 3 + 1
    with torch.no_grad():
        cls, box, ctr = model(torch.randn(1, 3, 640, 640))
    assert [t.shape[-1] for t in cls] == [80, 40, 20, 10, 5]
    assert cls[0].shape == (1, 80, 80, 80) and box[4].shape == (1, 4, 5, 5) and ctr[2].shape == (1, 1, 20, 20)


@pytest.mark.parametrize("bad, exc, match", [
    (torch.randn(3, 64, 64), ValueError, r"\(B, 3, H, W\)"),
    (torch.randn(1, 1, 64, 64), ValueError, r"\(B, 3, H, W\)"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating point"),
])
def test_detector_rejects_bad_inputs(small_detector, bad, exc, match):
    with pytest.raises(exc, match=match):
        small_detector(bad)


def test_detector_constructor_errors():
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ObjectDetector("test_resnet", num_classes=0)
    with pytest.raises(ValueError, match="unknown timm backbone"):
        ObjectDetector("not_a_backbone", num_classes=2)


def test_anchor_points_convention():
    pts = anchor_points(2, 3, 16)
    assert pts.tolist() == [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]


def test_decode_convention_by_hand():
    # one level 2x2 at stride 8, one class; cell (i=1, j=0) has anchor (4, 12)
    cls = torch.full((1, 1, 2, 2), -10.0)
    cls[0, 0, 1, 0] = 2.0
    ctr = torch.zeros(1, 1, 2, 2)
    box = torch.zeros(1, 4, 2, 2)
    box[0, :, 1, 0] = torch.log(torch.tensor([3.0, 2.0, 5.0, 1.0]))
    boxes, scores = decode([cls], [box], [ctr], [8], (16, 16))
    assert boxes.shape == (1, 4, 4) and scores.shape == (1, 4, 1)
    # candidate index i * W + j = 2
    assert torch.allclose(boxes[0, 2], torch.tensor([4 - 3.0, 12 - 2.0, 4 + 5.0, 12 + 1.0]))
    assert math.isclose(scores[0, 2, 0].item(), 1 / (1 + math.exp(-2.0)) * 0.5, rel_tol=1e-6)
    # clipping to the image
    box[0, :, 1, 0] = torch.log(torch.tensor([100.0, 100.0, 100.0, 100.0]))
    boxes, _ = decode([cls], [box], [ctr], [8], (16, 20))
    assert boxes[0, 2].tolist() == [0.0, 0.0, 20.0, 16.0]


def test_decode_clamp_keeps_fp16_finite():
    box = torch.full((1, 4, 1, 1), 80.0)  # exp(80) overflows float32 and float16
    boxes, _ = decode([torch.zeros(1, 1, 1, 1)], [box], [torch.zeros(1, 1, 1, 1)], [8], (64, 64))
    assert torch.isfinite(boxes).all() and boxes[0, 0].tolist() == [0.0, 0.0, 64.0, 64.0]
    assert math.exp(BBOX_LOG_CLAMP) < 65504 / 2


def test_predict_returns_class_aware_nms(small_detector):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in small_detector.head.cls_subnet[-1].parameters():
            p.normal_(0, 1)
    out = small_detector.predict(torch.randn(2, 3, 64, 64), score_thresh=0.0, max_detections=7)
    assert len(out) == 2
    for det in out:
        assert det["boxes"].shape == (7, 4) and det["scores"].shape == (7,) and det["labels"].shape == (7,)
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all() and det["boxes"].max() <= 64


def test_image_classifier():
    model = ImageClassifier("test_resnet", num_classes=3, dropout=0.2).eval()
    assert model.head.dropout.p == 0.2 and model.head.fc.out_features == 3
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ImageClassifier("test_resnet", num_classes=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 64, 64))


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "ghostnet_050", "hgnetv2_b0", "fasternet_t0"])
def test_image_classifier_sizes_its_head_from_timms_pre_logits_width(name):
    """Models with a pre-logits head (conv_head / head_hidden_size != num_features) failed on the first forward."""
    model = ImageClassifier(name, num_classes=5).eval()
    feats = model.backbone(torch.randn(2, 3, 64, 64))
    assert model.head.fc.in_features == feats.shape[1] == model.backbone.head_hidden_size
    assert model.backbone.head_hidden_size != model.backbone.num_features  # the case that failed
    with torch.no_grad():
        pooled = model.backbone.forward_head(model.backbone.forward_features(torch.randn(1, 3, 64, 64)), pre_logits=True)
    assert pooled.shape[1] == model.head.fc.in_features
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
