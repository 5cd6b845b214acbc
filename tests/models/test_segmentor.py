"""AutotimmSegmentor against AutoTimm's own SemanticSegmentor (the reference; autotimm_deploy never imports it):
strict state-dict loading, logits, predict() and ONNX Runtime parity, for both head types."""

import functools

import numpy as np
import pytest
import torch

from autotimm_deploy.models.families.segmentation import (AUTOTIMM_SEGMENTOR, AutotimmSegmentor, HEAD_TYPES,
                                                          resize_logits)
from autotimm_deploy.models.family import Family
from autotimm_deploy.parity.random_init import randomize_norms

BACKBONE, NUM_CLASSES = "test_efficientnet", 3


@functools.lru_cache(maxsize=None)
def _pair(head_type: str):
    """AutoTimm's SemanticSegmentor (random norms, centred class logits), ours with its state dict (strict)."""
    autotimm = pytest.importorskip("autotimm")
    torch.manual_seed(0)
    ref = autotimm.SemanticSegmentor(
        backbone=autotimm.FeatureBackboneConfig(model_name=BACKBONE, pretrained=False), num_classes=NUM_CLASSES,
        head_type=head_type, compile_model=False, seed=None, deterministic=False)
    randomize_norms(ref, seed=1)
    last = ref.head.classifier if head_type == "deeplabv3plus" else ref.head.conv[-1]
    with torch.no_grad():  # centre each class's logit so that the argmax varies from pixel to pixel
        last.bias -= ref(_images(2, 128, seed=3)).mean(dim=(0, 2, 3))
    state = {k: v for k, v in ref.state_dict().items() if k.startswith(("backbone.", "head."))}
    ours = AutotimmSegmentor(BACKBONE, NUM_CLASSES, head_type=head_type).eval()
    ours.load_state_dict(state, strict=True)
    return ref, ours


def _images(batch: int = 2, size: int = 128, seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_logits_and_predict_match_autotimm(head_type):
    ref, ours = _pair(head_type)
    x = _images()
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    stride = {"deeplabv3plus": 4, "fcn": 32}[head_type]
    assert got.shape == (2, NUM_CLASSES, 128 // stride, 128 // stride) == expected.shape
    assert got.std() > 0.1  # random norms: the logits are not constant
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    pred = ref.predict(x)
    assert pred.shape == got.shape[:1] + got.shape[2:]
    assert torch.equal(got.argmax(dim=1), pred)
    assert len(torch.unique(pred)) == NUM_CLASSES


@pytest.mark.parametrize("head_type, stride", [("deeplabv3plus", 0), ("fcn", -1)])
def test_strides_from_feature_info(head_type, stride):
    ours = _pair(head_type)[1]
    reductions = ours.backbone.feature_info.reduction()
    assert reductions == [4, 8, 16, 32]
    assert ours.output_stride == reductions[stride] == {"deeplabv3plus": 4, "fcn": 32}[head_type]
    assert ours.max_stride == 32 and ours.num_classes == NUM_CLASSES and ours.head_type == head_type
    assert ours.family is AUTOTIMM_SEGMENTOR


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_onnx_runtime_matches(head_type, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ours = _pair(head_type)[1]
    path = tmp_path / f"{head_type}.onnx"
    torch.onnx.export(ours, (_images(1),), str(path), dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(2)  # batch 2 through a graph traced at batch 1
    with torch.no_grad():
        expected = ours(x).numpy()
    (got,) = sess.run(["logits"], {"images": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.999


def test_resize_logits_is_autotimms_match_mask_size():
    autotimm = pytest.importorskip("autotimm")
    logits = torch.randn(2, NUM_CLASSES, 32, 32)
    masks = torch.zeros(2, 100, 90, dtype=torch.long)
    expected = autotimm.SemanticSegmentor._match_mask_size(logits, masks)
    assert resize_logits(logits, (100, 90)).shape == (2, NUM_CLASSES, 100, 90)
    torch.testing.assert_close(resize_logits(logits, masks.shape[-2:]), expected, atol=0, rtol=0)
    assert resize_logits(logits, (32, 32)) is logits


def test_unknown_head_type_raises():
    with pytest.raises(ValueError, match="deeplabv3plus.*fcn.*'unet'"):
        AutotimmSegmentor(BACKBONE, NUM_CLASSES, head_type="unet")


def test_family_declaration():
    f = AUTOTIMM_SEGMENTOR
    assert f.task == "segmentation" and f.keys == ("logits",) and f.output("pixel_logits").activation == "softmax"
    assert f.preprocess.resize == "stretch" and f.output_names() == ["logits"]
    assert Family.from_dict(f.to_dict()) == f
