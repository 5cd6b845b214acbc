import math

import pytest
import torch

from autotimm_deploy import ClassificationHead, DetectionHead
from autotimm_deploy.models.heads import group_norm_groups


def test_classification_head_seed_example():
    head = ClassificationHead(in_features=2048, num_classes=10, dropout=0.5)
    assert head(torch.randn(32, 2048)).shape == (32, 10)
    assert isinstance(head.dropout, torch.nn.Dropout) and head.dropout.p == 0.5
    assert head.fc.in_features == 2048 and head.fc.out_features == 10


def test_classification_head_no_dropout_by_default():
    head = ClassificationHead(16, 3)
    assert head.dropout is None
    assert [type(m).__name__ for m in head.children()] == ["Linear"]


@pytest.mark.parametrize("kwargs, match", [
    ({"in_features": 0, "num_classes": 3}, "in_features must be >= 1"),
    ({"in_features": 8, "num_classes": 0}, "num_classes must be >= 1"),
    ({"in_features": 8, "num_classes": 3, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_classification_head_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassificationHead(**kwargs)


def test_classification_head_wrong_input():
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        ClassificationHead(16, 3)(torch.randn(2, 8))


def test_detection_head_seed_example():
    head = DetectionHead(in_channels=256, num_classes=80, num_convs=4)
    feats = [torch.randn(2, 256, 80, 80), torch.randn(2, 256, 40, 40), torch.randn(2, 256, 20, 20)]
    cls, box, ctr = head(feats)
    assert [tuple(t.shape) for t in cls] == [(2, 80, 80, 80), (2, 80, 40, 40), (2, 80, 20, 20)]
    assert [tuple(t.shape) for t in box] == [(2, 4, 80, 80), (2, 4, 40, 40), (2, 4, 20, 20)]
    assert [tuple(t.shape) for t in ctr] == [(2, 1, 80, 80), (2, 1, 40, 40), (2, 1, 20, 20)]


def test_detection_head_structure_and_attribute_names():
    head = DetectionHead(64, 5, num_convs=3)
    for name, out_ch in (("cls_subnet", 5), ("bbox_subnet", 4), ("centerness_subnet", 1)):
        sub = getattr(head, name)
        kinds = [type(m).__name__ for m in sub]
        assert kinds == ["Conv2d", "GroupNorm", "ReLU"] * 3 + ["Conv2d"]
        assert sub[-1].out_channels == out_ch and sub[-1].kernel_size == (3, 3)
        assert all(m.kernel_size == (3, 3) for m in sub if isinstance(m, torch.nn.Conv2d))
        assert sub[1].num_groups == 32


def test_detection_head_init_values():
    torch.manual_seed(0)
    head = DetectionHead(256, 80, prior_prob=0.01)
    w = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.std().item() - 0.01) < 2e-4
    assert abs(w.mean().item()) < 1e-4
    expected = -math.log((1 - 0.01) / 0.01)
    assert torch.allclose(head.cls_subnet[-1].bias, torch.full((80,), expected))
    assert abs(expected - (-4.59512)) < 1e-5
    for sub in (head.bbox_subnet, head.centerness_subnet):
        assert torch.count_nonzero(sub[-1].bias) == 0
    # init_weights is public and restores the init after training changed the weights
    with torch.no_grad():
        head.cls_subnet[-1].bias.fill_(3.0)
    head.init_weights()
    assert torch.allclose(head.cls_subnet[-1].bias, torch.full((80,), expected))


def test_detection_head_shared_across_levels():
    head = DetectionHead(32, 2, num_convs=1)
    x = torch.randn(1, 32, 8, 8)
    a, _, _ = head([x, x])
    assert torch.equal(a[0], a[1])


def test_group_norm_rule():
    assert group_norm_groups(256) == 32
    assert group_norm_groups(48) == 24
    assert group_norm_groups(100) == 25
    assert group_norm_groups(7) == 1
    assert group_norm_groups(32) == 16
    head = DetectionHead(48, 2, num_convs=1)
    assert head.cls_subnet[1].num_groups == 24


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"in_channels": 0, "num_classes": 3}, ValueError, "in_channels must be >= 1"),
    ({"in_channels": 8, "num_classes": 0}, ValueError, "num_classes must be >= 1"),
    ({"in_channels": 8, "num_classes": 2, "num_convs": -1}, ValueError, "num_convs must be >= 0"),
    ({"in_channels": 8, "num_classes": 2, "prior_prob": 1.0}, ValueError, r"prior_prob must be in \(0, 1\)"),
    ({"in_channels": 8.0, "num_classes": 2}, TypeError, "in_channels must be an int"),
])
def test_detection_head_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DetectionHead(**kwargs)


def test_detection_head_wrong_channels():
    with pytest.raises(ValueError, match=r"\(B, 16, H, W\)"):
        DetectionHead(16, 2, num_convs=1)([torch.randn(1, 8, 4, 4)])
