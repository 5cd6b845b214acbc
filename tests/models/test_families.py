"""Model families: one declaration each, read by every stage (design note shared/design/model-families.md).

The decisive test is the last one: a fifth family declared here, in the test, with its own module, goes
through export, graph surgery, FP16 and parity without a change to the package."""

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn

from autotimm_deploy.errors import AutotimmError
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx, get_metadata
from autotimm_deploy.exporters.surgery import apply_decode, static_level_sizes
from autotimm_deploy.models.decode import decode_outputs, postprocess_outputs
from autotimm_deploy.models.families import (AUTOTIMM_FCOS, AUTOTIMM_MULTILABEL, AUTOTIMM_YOLOX, FAMILIES,
                                             SEED_FCOS)
from autotimm_deploy.models.families import family_from_metadata
from autotimm_deploy.models.family import Family, Postprocess, Preprocess, RawOutput
from autotimm_deploy.tasks import task_of
from autotimm_deploy.models.loaded import LoadedModel
from autotimm_deploy.parity.check import FP16_TOLERANCES, FP32_TOLERANCES, run_parity

PKG = Path(__file__).resolve().parents[2] / "autotimm_deploy"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_round_trips_through_its_metadata(name):
    fam = FAMILIES[name]
    assert Family.from_dict(json.loads(fam.to_json())) == fam
    assert family_from_metadata({"family": fam.to_json(), "task": "x"}) == fam
    assert task_of(fam).convention(fam)["name"] == fam.convention


def test_metadata_without_a_family_is_the_seed_and_a_bad_one_is_one_error():
    assert family_from_metadata({"task": "detection"}) is SEED_FCOS
    assert family_from_metadata({"task": "classification"}).output("logits").activation == "softmax"
    with pytest.raises(AutotimmError, match="not valid JSON"):
        family_from_metadata({"family": "{oops"})
    bad = json.loads(SEED_FCOS.to_json())
    bad["outputs"][1]["activation"] = "tanh"
    with pytest.raises(AutotimmError, match="malformed model-family declaration.*activation must be one of"):
        family_from_metadata({"family": json.dumps(bad)})


def test_declarations_are_checked():
    with pytest.raises(AutotimmError, match="one output of each role class_logits, ltrb"):  # by the family's task
        task_of(Family("x", "detection", "c", (RawOutput("cls", "class_logits", "num_classes", "sigmoid"),),
                       score=("cls",)))
    with pytest.raises(AutotimmError, match="unknown task 'pose'"):
        task_of(Family("x", "pose", "c", (RawOutput("kp", "keypoints", "17", "identity"),)))
    with pytest.raises(ValueError, match="score"):
        Family("x", "detection", "c", AUTOTIMM_YOLOX.outputs, score=("ctr",))
    with pytest.raises(ValueError, match="candidates"):
        Postprocess(candidates="topk")
    with pytest.raises(ValueError, match="align"):
        Preprocess(align="bottom")


def _one_cell(bbox_value, cls_logit=0.0, ctr_logit=None):
    raw = {"cls": [torch.full((1, 2, 1, 1), cls_logit)], "bbox": [torch.full((1, 4, 1, 1), bbox_value)]}
    if ctr_logit is not None:
        raw["ctr"] = [torch.full((1, 1, 1, 1), ctr_logit)]
    return raw


def test_each_family_decodes_its_own_convention():
    """One cell at stride 32 (anchor 16, 16) in a 64x64 input: the same raw value means e^x px to the seed,
    x px to AutoTimm's FCOS and YOLOX; scores with and without centerness."""
    boxes, scores = decode_outputs(SEED_FCOS, _one_cell(2.0, 0.0, 0.0), [32], (64, 64))
    d = float(np.exp(2.0))
    np.testing.assert_allclose(boxes[0, 0], [16 - d, 16 - d, 16 + d, 16 + d], rtol=1e-6)
    np.testing.assert_allclose(scores[0, 0], [0.25, 0.25])  # sigmoid(0) * sigmoid(0)
    boxes, scores = decode_outputs(AUTOTIMM_FCOS, _one_cell(3.0, 0.0, 0.0), [32], (64, 64))
    np.testing.assert_allclose(boxes[0, 0], [13, 13, 19, 19])
    np.testing.assert_allclose(scores[0, 0], [0.25, 0.25])
    boxes, scores = decode_outputs(AUTOTIMM_YOLOX, _one_cell(-3.0, 0.0), [32], (64, 64))
    np.testing.assert_allclose(boxes[0, 0], [19, 19, 13, 13])  # negative distances are used as they are
    np.testing.assert_allclose(scores[0, 0], [0.5, 0.5])  # no centerness
    boxes, _ = decode_outputs(AUTOTIMM_FCOS, _one_cell(40.0, 0.0, 0.0), [32], (64, 64))
    np.testing.assert_allclose(boxes[0, 0], [0, 0, 56, 56])  # clipped to the image


def test_argmax_candidates_keep_one_class_per_location():
    """AutoTimm's rule: the best class per location if above the threshold, no pre-NMS top-k."""
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.7, 0.8], [0.2, 0.1]]], np.float32)
    out = {"boxes": boxes, "scores": scores}
    per_class = postprocess_outputs(out, "boxes", (), (64, 64), 0.5, family=SEED_FCOS)[0]
    assert sorted(per_class["labels"].tolist()) == [0, 1]
    argmax = postprocess_outputs(out, "boxes", (), (64, 64), 0.5, family=AUTOTIMM_FCOS)[0]
    assert argmax["labels"].tolist() == [1] and argmax["scores"].tolist() == [pytest.approx(0.8)]
    # the family's own thresholds when none are given: AutoTimm's NMS IoU 0.5 suppresses an IoU-0.55 pair (the seed's 0.6 does not)
    pair = {"boxes": np.array([[[0, 0, 10, 10], [0, 0, 10, 5.5]]], np.float32),
            "scores": np.array([[[0.9, 0], [0.8, 0]]], np.float32)}
    assert len(postprocess_outputs(pair, "boxes", (), (64, 64), family=AUTOTIMM_FCOS)[0]["labels"]) == 1
    assert len(postprocess_outputs(pair, "boxes", (), (64, 64), family=SEED_FCOS)[0]["labels"]) == 2


def test_no_stage_outside_models_branches_on_a_family():
    """exporters/, engines/, parity/, cli/ and cpp/ learn everything from the declaration: none of them names
    a family or a family-specific output."""
    names = [n for n in sorted(FAMILIES) if "-" in n] + ["fcos", "yolox", "centerness", "multilabel", "multi_label"]
    pattern = re.compile(r"[\"'](" + "|".join(map(re.escape, names)) + r")[\"']|family\.name\s*==")
    offenders = []
    roots = [PKG / d for d in ("exporters", "engines", "parity", "cli")] + [
        PKG.parent / "cpp" / d for d in ("src", "include", "examples", "tools")]
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.suffix in (".py", ".cpp", ".hpp") and pattern.search(f.read_text()):
                offenders.append(str(f.relative_to(PKG.parent)))
    assert offenders == []


# ---------------------------------------------------------------------------------------------------------------
# a fifth family, declared only here

FIFTH = Family(
    name="test-quadratic-free", task="detection", convention="test-ltrb-exp-nocenterness-v1",
    outputs=(RawOutput("cls", "class_logits", "num_classes", "sigmoid"),
             RawOutput("dist", "ltrb", "4", "exp", clamp_max=8.0),
             RawOutput("obj", "centerness", "1", "sigmoid")),
    score=("obj", "cls"),
    postprocess=Postprocess(candidates="argmax", pre_nms_top_k=50, score_thresh=0.1, iou_thresh=0.45, max_detections=20),
    preprocess=Preprocess(align="center", fill=(0, 0, 0)),
)


class FifthDetector(nn.Module):
    """A 3-level detector on a timm backbone whose outputs are (cls, dist, obj), in the family's order."""

    family = FIFTH

    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("test_resnet", pretrained=False, features_only=True, out_indices=(2, 3, 4))
        chans = self.backbone.feature_info.channels()
        self.strides = tuple(self.backbone.feature_info.reduction())
        self.num_classes = 3
        self.cls = nn.ModuleList(nn.Conv2d(c, 3, 1) for c in chans)
        self.dist = nn.ModuleList(nn.Conv2d(c, 4, 1) for c in chans)
        self.obj = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in chans)

    def forward(self, x):
        feats = self.backbone(x)
        return ([m(f) for m, f in zip(self.cls, feats)], [m(f) for m, f in zip(self.dist, feats)],
                [m(f) for m, f in zip(self.obj, feats)])


def test_a_fifth_family_needs_no_change_outside_its_module(tmp_path):
    torch.manual_seed(0)
    model = FifthDetector().eval()
    loaded = LoadedModel(model, "detection", {"backbone": "test_resnet"},
                         {"class_names": ["a", "b", "c"], "input_size": [64, 96], "mean": [0.5] * 3, "std": [0.25] * 3},
                         "0" * 64, tmp_path / "fifth.pt")
    raw = export_onnx(loaded, ExportConfig((64, 96)))
    assert [o.name for o in raw.graph.output] == [f"{k}_p{i}" for k in ("cls", "dist", "obj") for i in (3, 4, 5)]
    assert json.loads(get_metadata(raw)["family"])["name"] == "test-quadratic-free"
    assert static_level_sizes(raw) == [(8, 12), (4, 6), (2, 3)]
    for mode in ("activations", "boxes"):
        fused = apply_decode(raw, mode, model.strides, 3, static_level_sizes(raw))  # the family from the metadata
        path = tmp_path / f"{mode}.onnx"
        path.write_bytes(fused.SerializeToString())
        feeds = [("random", {"images": np.random.default_rng(0).standard_normal((2, 3, 64, 96), dtype=np.float32)})]
        rep = run_parity(model, path, feeds, mode, tolerances=FP32_TOLERANCES)
        assert rep.passed, rep.summary()
        assert rep.detections is not None and rep.detections.reference > 0
        if mode == "boxes":
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            ops = [n.op_type for n in fused.graph.node]
            assert ops.count("Exp") == 3 and ops.count("Sigmoid") == 6
            assert sess.run(["boxes"], feeds[0][1])[0].shape == (2, 96 + 24 + 6, 4)
    from autotimm_deploy.exporters.fp16 import convert_to_fp16

    m16, _ = convert_to_fp16(fused)
    (tmp_path / "fp16.onnx").write_bytes(m16.SerializeToString())
    assert run_parity(model, tmp_path / "fp16.onnx", feeds, "boxes", tolerances=FP16_TOLERANCES).passed


def test_multilabel_classifier_probabilities_are_sigmoids():
    from autotimm_deploy.engines.predictor import probabilities
    from autotimm_deploy.models.families import CLASSIFIER

    logits = np.array([[0.0, 2.0, -2.0]])
    np.testing.assert_allclose(probabilities(logits, AUTOTIMM_MULTILABEL), 1 / (1 + np.exp(-logits)), rtol=1e-6)
    p = probabilities(logits, CLASSIFIER)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)
    assert p.argmax() == 1
