"""Models as the ``autotimm`` package (0.5-0.7.x) builds them, rebuilt without importing it.

Layers and state-dict keys follow ``autotimm.heads`` and ``autotimm.tasks`` exactly (read from the
installed 0.7.37 source), so an AutoTimm checkpoint's weights load with ``strict=True`` once the
``_orig_mod.`` segments of ``torch.compile`` are removed (:mod:`autotimm_deploy.models.autotimm_ckpt`):

- backbone: ``timm.create_model(name, pretrained=False, features_only=True, out_indices=(2, 3, 4))``;
- FPN: 1x1 ``lateral_convs``, top-down nearest-upsample + add, 3x3 ``output_convs``, then
  P6 = ReLU(conv3x3/2(P5 output)), P7 = ReLU(conv3x3/2(P6)) (``extra_convs``);
- FCOS head: ``cls_convs`` / ``reg_convs`` towers (Conv3x3 + GroupNorm(32) + ReLU), 3x3 ``cls_pred``,
  ``reg_pred`` and ``centerness_pred`` (on the regression tower), per-level ``scales``:
  ``bbox = ReLU(scale_l * reg_pred)``, pixel distances;
- YOLOX head: ``stem_conv`` then ``min(head_num_convs, 2)`` blocks per branch (Conv3x3 + GroupNorm(32) +
  SiLU), 1x1 ``cls_pred`` / ``reg_pred``, ``bbox = scale_l * reg_pred`` (no ReLU), no centerness;
- classifier: headless timm backbone (``num_classes=0``) + ``head.fc`` (dropout has no weights).

Decoding (``ObjectDetector.predict`` / ``decode_fcos_detections``): anchor ((j + 0.5) s, (i + 0.5) s),
the distances used as they are, score = sigmoid(cls) * sigmoid(ctr) (YOLOX: sigmoid(cls)), one argmax
class per location kept if its score > ``score_thresh``, no pre-NMS top-k, class-aware NMS at
``nms_thresh``, the first ``max_detections_per_image``.  Eval preprocessing: detection LongestMaxSize +
centred PadIfNeeded with fill 114; classification Resize(int(size * 256 / 224)) + CenterCrop(size);
ImageNet mean/std.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..family import Family, Postprocess, Preprocess, RawOutput
from ..hparams import AutotimmClass, HParams
from ..loaded import build_and_load

__all__ = ["AUTOTIMM_FCOS", "AUTOTIMM_YOLOX", "AUTOTIMM_CLASSIFIER", "AUTOTIMM_MULTILABEL", "AutotimmFPN",
           "FCOSHead", "YOLOXHead", "AutotimmDetector", "AutotimmClassifier", "GN_GROUPS", "AUTOTIMM_CLASS",
           "build_object_detector", "build_image_classifier"]

#: AutoTimm's heads always use GroupNorm(32, channels): fpn_channels must be a multiple of 32.
GN_GROUPS = 32
_CLS = RawOutput("cls", "class_logits", "num_classes", "sigmoid", meaning="class logits")
_POST = Postprocess(candidates="argmax", pre_nms_top_k=None, score_thresh=0.05, iou_thresh=0.5, max_detections=100)
_DET_PRE = Preprocess(resize="letterbox", align="center", fill=(114, 114, 114))

AUTOTIMM_FCOS = Family(
    name="autotimm-fcos",
    task="detection",
    convention="fcos-ltrb-linear-v1",
    outputs=(_CLS,
             RawOutput("bbox", "ltrb", "4", "identity", meaning="pixel distances ReLU(scale_l * reg_pred)"),
             RawOutput("ctr", "centerness", "1", "sigmoid", meaning="centerness logit (regression tower)")),
    score=("cls", "ctr"),
    postprocess=_POST,
    preprocess=_DET_PRE,
    description="AutoTimm ObjectDetector(detection_arch='fcos'): conv P6/P7, ReLU(scale * reg) pixel distances",
)

AUTOTIMM_YOLOX = Family(
    name="autotimm-yolox",
    task="detection",
    convention="yolox-ltrb-linear-v1",
    outputs=(_CLS, RawOutput("bbox", "ltrb", "4", "identity", meaning="pixel distances scale_l * reg_pred")),
    score=("cls",),
    postprocess=_POST,
    preprocess=_DET_PRE,
    description="AutoTimm ObjectDetector(detection_arch='yolox'): conv P6/P7, decoupled SiLU head, no centerness",
)

_CLS_PRE = Preprocess(resize="resize_crop", align="center", fill=None, crop_fraction=224 / 256)
AUTOTIMM_CLASSIFIER = Family(
    name="autotimm-classifier",
    task="classification",
    convention="logits-softmax-v1",
    outputs=(RawOutput("logits", "logits", "num_classes", "softmax", meaning="class logits"),),
    preprocess=_CLS_PRE,
    description="AutoTimm ImageClassifier: headless timm backbone + linear head, softmax",
)
AUTOTIMM_MULTILABEL = replace(
    AUTOTIMM_CLASSIFIER, name="autotimm-multilabel", convention="logits-sigmoid-v1",
    outputs=(RawOutput("logits", "logits", "num_classes", "sigmoid", meaning="independent label logits"),),
    description="AutoTimm ImageClassifier(multi_label=True): sigmoid per label",
)


class AutotimmFPN(nn.Module):
    """AutoTimm's FPN: [C3, C4, C5] -> [P3, P4, P5, P6, P7] with conv (stride 2) + ReLU extra levels."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_extra_levels: int = 2) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.extra_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
                                         for _ in range(num_extra_levels))

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outputs = [conv(x) for conv, x in zip(self.output_convs, laterals)]
        last = outputs[-1]
        for conv in self.extra_convs:
            last = F.relu(conv(last))
            outputs.append(last)
        return outputs


class _Scale(nn.Module):
    """AutoTimm's ``ScaleModule``: one learnable scalar (state-dict key ``scale``)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, act: type) -> nn.Sequential:
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(GN_GROUPS, channels), act()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """AutoTimm's FCOS ``DetectionHead``: returns (cls, bbox, ctr) lists; bbox = ReLU(scale_l * reg_pred)."""

    def __init__(self, channels: int, num_classes: int, num_convs: int) -> None:
        super().__init__()
        self.cls_convs = _tower(channels, num_convs, nn.ReLU)
        self.reg_convs = _tower(channels, num_convs, nn.ReLU)
        self.cls_pred = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.reg_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness_pred = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(_Scale() for _ in range(5))

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        cls, box, ctr = [], [], []
        for i, f in enumerate(features):
            c, r = self.cls_convs(f), self.reg_convs(f)
            cls.append(self.cls_pred(c))
            box.append(F.relu(self.scales[min(i, len(self.scales) - 1)](self.reg_pred(r))))
            ctr.append(self.centerness_pred(r))
        return cls, box, ctr


class YOLOXHead(nn.Module):
    """AutoTimm's ``YOLOXHead`` (SiLU, GroupNorm, no depthwise): returns (cls, bbox) lists."""

    def __init__(self, channels: int, num_classes: int, num_convs: int) -> None:
        super().__init__()
        self.stem_conv = _tower(channels, 1, nn.SiLU)
        self.cls_convs = nn.Sequential(*(_tower(channels, 1, nn.SiLU) for _ in range(num_convs)))
        self.reg_convs = nn.Sequential(*(_tower(channels, 1, nn.SiLU) for _ in range(num_convs)))
        self.cls_pred = nn.Conv2d(channels, num_classes, 1)
        self.reg_pred = nn.Conv2d(channels, 4, 1)
        self.scales = nn.ModuleList(_Scale() for _ in range(5))

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        cls, box = [], []
        for i, f in enumerate(features):
            x = self.stem_conv(f)
            cls.append(self.cls_pred(self.cls_convs(x)))
            box.append(self.scales[min(i, len(self.scales) - 1)](self.reg_pred(self.reg_convs(x))))
        return cls, box


class AutotimmDetector(nn.Module):
    """An AutoTimm ``ObjectDetector``'s inference network: ``forward`` returns the raw outputs of its family,
    one list per output key ((cls, bbox, ctr) for FCOS, (cls, bbox) for YOLOX), one tensor per level."""

    def __init__(self, backbone: str, num_classes: int, detection_arch: str = "fcos", fpn_channels: int = 256,
                 head_num_convs: int = 4, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> None:
        super().__init__()
        heads = {"fcos": (FCOSHead, AUTOTIMM_FCOS, head_num_convs), "yolox": (YOLOXHead, AUTOTIMM_YOLOX,
                                                                           min(head_num_convs, 2))}
        if detection_arch not in heads:
            raise ValueError(f"detection_arch must be 'fcos' or 'yolox', got {detection_arch!r}")
        if fpn_channels % GN_GROUPS:
            raise ValueError(f"fpn_channels must be a multiple of {GN_GROUPS} (AutoTimm's GroupNorm), got {fpn_channels}")
        if len(strides) != 5:
            raise ValueError(f"strides must list the 5 levels P3..P7, got {list(strides)}")
        head_cls, self.family, convs = heads[detection_arch]
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(2, 3, 4),
                                          drop_rate=0.0, drop_path_rate=0.0)
        self.fpn = AutotimmFPN(self.backbone.feature_info.channels(), fpn_channels)
        self.head = head_cls(fpn_channels, num_classes, convs)

    def forward(self, images: Tensor):
        return self.head(self.fpn(self.backbone(images)))


class AutotimmClassifier(nn.Module):
    """An AutoTimm ``ImageClassifier``: headless timm backbone + ``head.fc`` (logits)."""

    def __init__(self, backbone: str, num_classes: int, multi_label: bool = False) -> None:
        super().__init__()
        self.family = AUTOTIMM_MULTILABEL if multi_label else AUTOTIMM_CLASSIFIER
        self.num_classes = num_classes
        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, drop_rate=0.0,
                                          drop_path_rate=0.0)
        self.head = nn.Module()
        self.head.fc = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head.fc(self.backbone(images))


def build_object_detector(h: HParams, state: Dict[str, Tensor]) -> Tuple[nn.Module, Dict[str, Any]]:
    """An AutoTimm ``ObjectDetector`` checkpoint's network: ``backbone``, ``num_classes``, ``detection_arch``
    (fcos / yolox), ``fpn_channels``, ``head_num_convs``, ``strides``; ``score_thresh``, ``nms_thresh`` and
    ``max_detections_per_image`` become the family's post-processing defaults."""
    backbone = h.backbone()
    num_classes = h.int("num_classes", required=True)
    arch = h.get("detection_arch", "fcos")
    if arch not in ("fcos", "yolox"):
        raise h.error(f"unknown detection_arch {arch!r}; autotimm-deploy knows 'fcos' and 'yolox'")
    strides = h.strides()
    config = {"backbone": backbone, "num_classes": num_classes, "detection_arch": arch,
              "fpn_channels": h.int("fpn_channels", 256), "head_num_convs": h.int("head_num_convs", 4),
              "strides": strides}
    model = build_and_load(h.path, lambda: AutotimmDetector(**config), state,
                           f"an AutoTimm {arch.upper()} ObjectDetector ({backbone!r})")
    model.family = model.family.with_postprocess(**h.detection_postprocess(0.05, 0.5))
    return model, config


def build_image_classifier(h: HParams, state: Dict[str, Tensor]) -> Tuple[nn.Module, Dict[str, Any]]:
    """An AutoTimm ``ImageClassifier`` checkpoint's network: ``backbone``, ``num_classes``, ``multi_label``."""
    backbone = h.backbone()
    config = {"backbone": backbone, "num_classes": h.int("num_classes", required=True),
              "multi_label": h.bool("multi_label", False)}
    model = build_and_load(h.path, lambda: AutotimmClassifier(**config), state,
                           f"an AutoTimm ImageClassifier ({backbone!r})")
    return model, config


#: The AutoTimm classes this module rebuilds, in matching order: ObjectDetector (``detection_arch`` or an FPN),
#: then ImageClassifier (``multi_label`` or a ``head.fc``).
AUTOTIMM_CLASS = (
    AutotimmClass("ObjectDetector", "detection",
                  matches=lambda hp, state: "detection_arch" in hp or any(k.startswith("fpn.") for k in state),
                  build=build_object_detector, description="timm features + FPN + FCOS or YOLOX head"),
    AutotimmClass("ImageClassifier", "classification",
                  matches=lambda hp, state: "multi_label" in hp or "head.fc.weight" in state,
                  build=build_image_classifier, description="headless timm backbone + linear head"),
)
