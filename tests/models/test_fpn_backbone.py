
import pytest
import torch

from autotimm_deploy import FPN, create_feature_backbone


def test_fpn_seed_example_resnet50_640():
    backbone = create_feature_backbone("resnet50")
    in_channels = backbone.feature_info.channels()
    assert in_channels == [512, 1024, 2048]
    assert backbone.feature_info.reduction() == [8, 16, 32]
    fpn = FPN(in_channels=in_channels, out_channels=256)
    with torch.no_grad():
        pyramid = fpn(backbone(torch.randn(2, 3, 640, 640)))
    assert [tuple(p.shape) for p in pyramid] == [
        (2, 256, 80, 80), (2, 256, 40, 40), (2, 256, 20, 20), (2, 256, 10, 10), (2, 256, 5, 5)]


def test_fpn_attributes_and_pooling():
    fpn = FPN([8, 16, 32], out_channels=16)
    for name in ("lateral_conv3", "lateral_conv4", "lateral_conv5"):
        assert getattr(fpn, name).kernel_size == (1, 1)
    for name in ("fpn_conv3", "fpn_conv4", "fpn_conv5"):
        assert getattr(fpn, name).kernel_size == (3, 3)
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    p3, p4, p5, p6, p7 = fpn(feats)
    assert torch.equal(p6, p5[:, :, ::2, ::2])  # max pool, kernel 1, stride 2
    assert torch.equal(p7, p6[:, :, ::2, ::2])
    # top-down: P5's lateral reaches P3 through nearest upsampling
    lat5 = fpn.lateral_conv5(feats[2])
    lat4 = fpn.lateral_conv4(feats[1]) + torch.nn.functional.interpolate(lat5, size=(8, 8), mode="nearest")
    assert torch.allclose(p4, fpn.fpn_conv4(lat4), atol=1e-6)


@pytest.mark.parametrize("channels, match", [([8, 16], "exactly 3 entries"), ([8, 16, 32, 64], "exactly 3 entries"),
                                             ([8, 0, 32], r"in_channels\[1\] must be >= 1")])
def test_fpn_errors(channels, match):
    with pytest.raises(ValueError, match=match):
        FPN(channels)


def test_fpn_in_channels_type():
    with pytest.raises(TypeError, match="list of 3 ints"):
        FPN(256)


def test_backbone_channels_come_from_feature_info():
    bb = create_feature_backbone("test_resnet")
    assert bb.feature_info.channels() == [48, 192, 96]
    assert bb.feature_info.reduction() == [8, 16, 32]
    outs = bb(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 48, 8, 8), (1, 192, 4, 4), (1, 96, 2, 2)]


def test_backbone_unknown_name():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet5000'"):
        create_feature_backbone("resnet5000")


def test_backbone_without_stride_8_levels():
    with pytest.raises(ValueError, match=r"strides .* needs levels at strides \[8, 16, 32\]"):
        create_feature_backbone("test_vit")


def test_pretrained_fails_clearly_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="could not fetch pretrained weights for 'resnet18'.*pretrained=False"):
        create_feature_backbone("resnet18", pretrained=True)


def test_backbone_finds_levels_beyond_timms_default_out_indices():
    """sedarknet21's features_only default stops at stride 16: its stride-32 stage (index 5) was never seen."""
    import timm

    assert timm.create_model("sedarknet21", features_only=True).feature_info.reduction() == [1, 2, 4, 8, 16]
    bb = create_feature_backbone("sedarknet21")
    assert bb.feature_info.reduction() == [8, 16, 32]
    assert bb.feature_info.out_indices == (3, 4, 5)
    outs = bb(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 8), (4, 4), (2, 2)]


def test_channels_last_backbones_feed_the_fpn_channels_first():
    """timm's features_only swin returns (B, H, W, C) maps (output_fmt NHWC); the detector failed with
    'FPN input C3 must be (B, 192, H, W), got (1, 28, 28, 192)'.  They are permuted to (B, C, H, W)."""
    from autotimm_deploy import ObjectDetector
    from autotimm_deploy.models.backbone import nchw_features

    torch.manual_seed(0)
    model = ObjectDetector("swin_tiny_patch4_window7_224", num_classes=3, fpn_channels=32, num_convs=1).eval()
    assert str(model.backbone.output_fmt).endswith("NHWC")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        raw = model.backbone(x)
        feats = nchw_features(model.backbone, raw)
        cls, box, ctr = model(x)
    assert [tuple(f.shape) for f in raw][0] == (1, 28, 28, 192)
    assert [tuple(f.shape[1:]) for f in feats] == [(192, 28, 28), (384, 14, 14), (768, 7, 7)]
    torch.testing.assert_close(feats[0], raw[0].permute(0, 3, 1, 2))
    assert [tuple(c.shape[2:]) for c in cls] == [(28, 28), (14, 14), (7, 7), (4, 4), (2, 2)]
    assert nchw_features(create_feature_backbone("test_resnet"), raw[:1])[0] is raw[0]  # NCHW left as it is
