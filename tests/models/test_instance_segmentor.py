"""AutoTimm's InstanceSegmentor rebuilt without autotimm (models/families/instance.py, models/masks.py), against
AutoTimm's own module (the reference; autotimm_deploy never imports it): the same raw outputs, the same masks
from the mask stage, the same predictions from the split pipeline (main network -> decode + NMS -> mask stage ->
numpy paste), and the mask stage in ONNX Runtime."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torchvision import ops

from autotimm_deploy.models.decode import postprocess_outputs
from autotimm_deploy.models.families.instance import AUTOTIMM_INSTANCE, AutotimmInstanceSegmentor
from autotimm_deploy.models.family import LEVELS, PER_LEVEL_ROLES, Family
from autotimm_deploy.models.masks import paste_masks, resize_bilinear
from autotimm_deploy.parity.random_init import randomize_norms

SIZE, MAX_DET = 128, 12


@pytest.fixture(scope="module")
def pair():
    """AutoTimm's InstanceSegmentor with random BatchNorms and a spread-out FCOS head (varied scores, classes and
    boxes of ~10-40 px), its weights loaded strictly into ours; two 128 px images."""
    import autotimm
    from autotimm import FeatureBackboneConfig

    torch.manual_seed(0)
    ref = autotimm.InstanceSegmentor(
        backbone=FeatureBackboneConfig(model_name="test_efficientnet", pretrained=False, out_indices=(2, 3, 4)),
        num_classes=3, fpn_channels=64, head_num_convs=1, compile_model=False, seed=None, deterministic=False,
        max_detections_per_image=MAX_DET)
    randomize_norms(ref)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in ref.detection_head.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
        ref.detection_head.cls_pred.weight.mul_(3.0)
        ref.detection_head.reg_pred.weight.mul_(8.0)
        ref.detection_head.reg_pred.bias.fill_(12.0)
        images = torch.randn(2, 3, SIZE, SIZE, generator=g)
        p3_logits = ref(images)[0][0]  # every class about as likely on P3, where most detections are
        ref.detection_head.cls_pred.bias.sub_(p3_logits.mean((0, 2, 3)) + 1.0)
    ours = AutotimmInstanceSegmentor("test_efficientnet", 3, fpn_channels=64, head_num_convs=1).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # no loss or metric entries in AutoTimm's state dict
    with torch.no_grad():
        raw = ours(images)
    return ref.eval(), ours, images, raw


def test_declaration_and_raw_outputs_match_autotimm(pair):
    ref, ours, images, (cls, bbox, ctr, p3) = pair
    assert ours.family is AUTOTIMM_INSTANCE and Family.from_dict(AUTOTIMM_INSTANCE.to_dict()) == AUTOTIMM_INSTANCE
    assert AUTOTIMM_INSTANCE.output_names()[-1] == "mask_features" and ours.strides == (8, 16, 32, 64, 128)
    assert ours.mask_stage().mask_head is ours.mask_head  # shared weights
    with torch.no_grad():
        r_cls, r_bbox, r_ctr = ref(images)
        r_p3 = ref.fpn(ref.backbone(images))[0]
    for a, b in zip(cls + bbox + ctr, r_cls + r_bbox + r_ctr):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(p3, r_p3, atol=1e-5, rtol=0)
    assert p3.shape == (2, 64, SIZE // 8, SIZE // 8) and [t.shape[-1] for t in cls] == [16, 8, 4, 2, 1]
    # mask_size changes no layer; the head's output is 2 * roi_pool_size
    seven = AutotimmInstanceSegmentor("test_efficientnet", 3, fpn_channels=64, head_num_convs=1, roi_pool_size=7)
    assert (seven.family.masks.roi_size, seven.family.masks.mask_size) == (7, 14)
    with torch.no_grad():
        assert seven.mask_stage()(p3[:1], torch.tensor([[8.0, 8, 40, 40]]), torch.tensor([1])).shape == (1, 14, 14)


@pytest.mark.parametrize("separable", [False, True])
def test_mask_stage_is_autotimms_mask_path(pair, separable):
    """Per image: its features, its final boxes and labels; RoIAlign as torchvision's or as the exported graph's two
    matrix products (separable bilinear weights)."""
    ref, ours, images, (_, _, _, p3) = pair
    preds = ref.predict(images)
    labels = torch.cat([d["labels"] for d in preds])
    assert len(labels) == 2 * MAX_DET and len(set(labels.tolist())) > 1
    for b, d in enumerate(preds):
        rois = torch.cat([torch.full((len(d["boxes"]), 1), float(b)), d["boxes"]], 1)
        with torch.no_grad():
            logits = ref.mask_head(ops.roi_align(p3, rois, output_size=(14, 14), spatial_scale=1 / 8, aligned=True))
            expected = logits[torch.arange(len(d["labels"])), d["labels"]].sigmoid()
            got = ours.mask_stage(separable=separable)(p3[b:b + 1], d["boxes"], d["labels"])
        assert got.shape == (len(d["boxes"]), 28, 28)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_separable_roi_align_is_torchvisions():
    from autotimm_deploy.models.families.instance import roi_align_separable

    g = torch.Generator().manual_seed(5)
    for h, w in [(16, 16), (80, 60), (7, 9)]:
        feats = torch.randn(1, 8, h, w, generator=g)
        xy = torch.rand(60, 2, generator=g) * torch.tensor([w * 8.0, h * 8.0])
        wh = torch.rand(60, 2, generator=g) * torch.tensor([w * 8.0, h * 8.0])
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w * 8.0, h * 8.0]))], 1)
        boxes[:4] = torch.tensor([[0, 0, w * 8.0, h * 8.0], [3, 3, 3.5, 4], [0, 0, 0, 0], [w * 8.0 - 1, 0, w * 8.0, 1]])
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
        expected = ops.roi_align(feats, rois, (14, 14), 1 / 8, -1, True)
        torch.testing.assert_close(roi_align_separable(feats, boxes, 14, 1 / 8, 0, True), expected, atol=2e-6,
                                   rtol=0)


def test_split_pipeline_reproduces_autotimms_predict(pair):
    """Our raw outputs -> decode + NMS (the family's rule) -> mask stage -> numpy paste == AutoTimm's predict()."""
    ref, ours, images, (cls, bbox, ctr, p3) = pair
    outputs = {f"{k}_{lv}": t.numpy() for k, ts in zip(("cls", "bbox", "ctr"), (cls, bbox, ctr))
               for lv, t in zip(LEVELS, ts)}
    outputs["mask_features"] = p3.numpy()
    # postprocess_outputs reads every declared output per level (mask_features_p3..): give it the detector's outputs
    detector = dataclasses.replace(AUTOTIMM_INSTANCE, task="detection", masks=None,
                                   outputs=tuple(o for o in AUTOTIMM_INSTANCE.outputs if o.role in PER_LEVEL_ROLES))
    dets = postprocess_outputs(outputs, "raw", ours.strides, (SIZE, SIZE), max_detections=MAX_DET, family=detector)
    expected = ref.predict(images)
    agreement = []
    for b, (d, e) in enumerate(zip(dets, expected)):
        n = len(d["boxes"])
        assert n == len(e["boxes"]) == MAX_DET
        np.testing.assert_array_equal(d["labels"], e["labels"].numpy())
        np.testing.assert_allclose(d["boxes"], e["boxes"].numpy(), atol=1e-3, rtol=0)
        np.testing.assert_allclose(d["scores"], e["scores"].numpy(), atol=1e-5, rtol=0)
        with torch.no_grad():
            probs = ours.mask_stage()(p3[b:b + 1], torch.from_numpy(d["boxes"]), torch.from_numpy(d["labels"]))
        masks = paste_masks(probs.numpy(), d["boxes"], SIZE, SIZE, AUTOTIMM_INSTANCE.masks.threshold)
        assert masks.dtype == bool and masks.shape == tuple(e["masks"].shape)
        agreement += [float((m == em.numpy()).mean()) for m, em in zip(masks, e["masks"])]
        assert 0.0 < e["masks"].float().mean() < 0.5  # masks neither empty nor full images
    print(f"mask pixel agreement with AutoTimm's predict(): min {min(agreement):.6%} over {len(agreement)} masks")
    assert min(agreement) >= 0.9999


def _torch_paste(prob, box, height, width):
    """AutoTimm's paste (InstanceSegmentor.predict), one mask."""
    out = torch.zeros((height, width), dtype=torch.bool)
    x1 = int(box[0].floor().clamp(0, width - 1))
    y1 = int(box[1].floor().clamp(0, height - 1))
    x2 = int(box[2].ceil().clamp(x1 + 1, width))
    y2 = int(box[3].ceil().clamp(y1 + 1, height))
    resized = F.interpolate(prob[None, None], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0, 0]
    out[y1:y2, x1:x2] = resized > 0.5
    return out


def test_paste_masks_is_autotimms_paste():
    g = torch.Generator().manual_seed(3)
    height, width = 96, 128
    random = torch.rand(40, 2, generator=g) * torch.tensor([width, height]) - 5
    sizes = torch.rand(40, 2, generator=g) * 80
    boxes = torch.cat([
        torch.cat([random, random + sizes], 1),
        torch.tensor([[0, 0, width, height], [-3.0, -2, 20, 30], [100.2, 70.5, 140, 99], [127.4, 95.5, 128, 96],
                      [130.0, 100, 140, 110], [10.0, 10, 10, 10], [10.2, 20.7, 10.9, 21.3], [33.5, 40.5, 35.5, 42.5],
                      [5.0, 6, 6, 8], [60.0, 0, 61.5, 96], [0.0, 50, 128, 51]])])
    probs = torch.rand(len(boxes), 28, 28, generator=g)
    probs = F.avg_pool2d(probs[:, None], 5, 1, 2)[:, 0] * 1.6 - 0.3  # smooth, crossing 0.5 often
    got = paste_masks(probs.numpy(), boxes.numpy(), height, width, 0.5)
    expected = torch.stack([_torch_paste(p, b, height, width) for p, b in zip(probs, boxes)]).numpy()
    assert got.shape == (len(boxes), height, width) and 0.01 < got.mean() < 0.3
    np.testing.assert_array_equal(got, expected)
    for out_h, out_w in [(1, 1), (2, 57), (28, 28), (97, 3), (300, 41)]:
        ref = F.interpolate(probs[0][None, None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(resize_bilinear(probs[0].numpy(), out_h, out_w), ref.numpy(), atol=2.5e-7, rtol=0)
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4)), height, width).shape == (0, height, width)


def test_mask_stage_exports_to_onnx_and_matches_in_onnx_runtime(pair, tmp_path):
    """The exported mask graph: RoIAlign as matrix products (no RoiAlign op: TensorRT-RTX has no plugin for it),
    dynamic boxes and feature size; ONNX Runtime equals the torchvision reference.  It runs with at least one box:
    the runtimes skip an image without detections (its engine profile starts at one box)."""
    _, ours, _, (_, _, _, p3) = pair
    stage, reference = ours.mask_stage(separable=True).eval(), ours.mask_stage().eval()
    g = torch.Generator().manual_seed(4)

    def boxes(n, height, width):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height])
        wh = torch.rand(n, 2, generator=g) * 60 + 0.5
        return torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width, height]))], 1)

    path = tmp_path / "mask_stage.onnx"
    with torch.no_grad():
        torch.onnx.export(stage, (p3[:1], boxes(5, SIZE, SIZE), torch.tensor([0, 1, 2, 1, 0])), str(path),
                          dynamo=False, opset_version=17, input_names=["mask_features", "boxes", "labels"],
                          output_names=["masks"], dynamic_axes={"mask_features": {2: "height", 3: "width"},
                                                                "boxes": {0: "n"}, "labels": {0: "n"}, "masks": {0: "n"}})
    ops_used = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "RoiAlign" not in ops_used and "MatMul" in ops_used
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = torch.randn(1, 64, 12, 20, generator=g)  # another feature size (a 96 x 160 input)
    for feats, n in [(p3[:1], 9), (other, 4), (p3[1:], 1), (p3[:1], 100)]:
        b = boxes(n, 8 * feats.shape[-2], 8 * feats.shape[-1])
        labels = torch.randint(0, 3, (n,), generator=g)
        with torch.no_grad():
            expected = reference(feats, b, labels).numpy()
        got = sess.run(["masks"], {"mask_features": feats.numpy(), "boxes": b.numpy(), "labels": labels.numpy()})[0]
        assert got.shape == expected.shape == (n, 28, 28)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
