"""AutoTimm's ``YOLOXDetector`` (0.7.x) rebuilt without importing it: CSPDarknet + YOLOXPAFPN + YOLOX head.

Layers and state-dict keys follow ``autotimm.models.csp_darknet``, ``autotimm.models.yolox_pafpn`` and
``autotimm.tasks.yolox_detector`` exactly (read from the installed 0.7.37 source), so the ``backbone.*``,
``neck.*`` and ``head.*`` weights of a YOLOXDetector load with ``strict=True`` once the loss and metric
entries (``focal_loss.``, ``giou_loss.``, ``*_metrics.``) and the ``_orig_mod.`` segments of
``torch.compile`` are removed:

- ``BaseConv`` = Conv (no bias, "same" padding) + BatchNorm2d + SiLU (``x * sigmoid(x)``); ``Focus``
  space-to-depth (top-left, bottom-left, top-right, bottom-right) then a 3x3 ``BaseConv``;
- backbone: ``stem`` (Focus), ``dark2``..``dark5`` (3x3/2 ``BaseConv`` + ``CSPLayer``, dark5 with
  ``SPPBottleneck`` (5, 9, 13) and no shortcut), outputs dark3/dark4/dark5 (strides 8, 16, 32); base width
  ``int(64 * wid_mul)``, base depth ``max(round(3 * dep_mul), 1)``; no depthwise in any variant;
- neck: YOLOX PAFPN (top-down, bottom-up, CSP fusions without shortcut), then ``out_proj_n3`` /
  ``out_proj_n4`` so that all three levels have ``in_channels[0]`` channels;
- head: AutoTimm's ``YOLOXHead`` with ``num_convs=2`` (:class:`.autotimm.YOLOXHead`): stem conv, two
  (Conv3x3 + GroupNorm(32) + SiLU) blocks per branch, 1x1 ``cls_pred`` / ``reg_pred``,
  ``bbox = scale_l * reg_pred`` pixel distances (no ReLU, no exp), no centerness.

Decoding (``YOLOXDetector.predict``): anchor ((j + 0.5) s, (i + 0.5) s), distances used as they are,
score = sigmoid(cls), one argmax class per location kept if > ``score_thresh`` (0.01), class-aware NMS at
``nms_thresh`` (0.65), the best ``max_detections_per_image`` (100).  The network input must be a multiple
of 32 (the PAFPN's 2x upsamplings are concatenated with the backbone's maps).  Eval preprocessing: the
detection data module's LongestMaxSize + centred PadIfNeeded with fill 114, ImageNet mean/std (the
task's own ``preprocess()`` has no transforms unless a ``TransformConfig`` is given).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..family import Family, Postprocess
from ..hparams import AutotimmClass, HParams
from ..loaded import build_and_load
from .autotimm import _DET_PRE, AUTOTIMM_YOLOX, YOLOXHead

__all__ = ["AUTOTIMM_YOLOX_DETECTOR", "YOLOX_VARIANTS", "AutotimmYoloxDetector", "BaseConv", "DWConv", "Focus",
           "Bottleneck", "SPPBottleneck", "CSPLayer", "CSPDarknet", "YOLOXPAFPN", "AUTOTIMM_CLASS",
           "build_yolox_detector"]

#: ``model_name`` -> (depth multiplier, width multiplier, PAFPN in_channels): AutoTimm's
#: ``build_csp_darknet`` / ``build_yolox_pafpn`` tables (in_channels = 4, 8, 16 x int(64 * width)).
YOLOX_VARIANTS: Dict[str, Tuple[float, float, Tuple[int, int, int]]] = {
    "yolox-nano": (0.33, 0.25, (64, 128, 256)),
    "yolox-tiny": (0.33, 0.375, (96, 192, 384)),
    "yolox-s": (0.33, 0.50, (128, 256, 512)),
    "yolox-m": (0.67, 0.75, (192, 384, 768)),
    "yolox-l": (1.0, 1.0, (256, 512, 1024)),
    "yolox-x": (1.33, 1.25, (320, 640, 1280)),
}

AUTOTIMM_YOLOX_DETECTOR = Family(
    name="autotimm-yolox-detector",
    task="detection",
    convention=AUTOTIMM_YOLOX.convention,  # yolox-ltrb-linear-v1: the same decode as ObjectDetector's yolox head
    outputs=AUTOTIMM_YOLOX.outputs,  # cls (sigmoid), bbox (identity pixel distances scale_l * reg_pred)
    score=("cls",),
    postprocess=Postprocess(candidates="argmax", pre_nms_top_k=None, score_thresh=0.01, iou_thresh=0.65,
                            max_detections=100),
    preprocess=_DET_PRE,
    description="AutoTimm YOLOXDetector: CSPDarknet + YOLOX PAFPN (strides 8, 16, 32), decoupled SiLU head, "
                "scale * reg pixel distances, no centerness",
    # the Focus stem (space-to-depth + 3x3 conv on the normalised image, BN, SiLU) is where CSPDarknet's FP16 error
    # starts: kept in FP32 it took a yolox-nano test model's worst FP16 score error from 0.031 to 0.0097
    # (tests/autotimm/test_tasks_vs_autotimm.py); the rest of the network stays FP16
    fp32_nodes=("/model/backbone/stem/*",),
)


class _SiLU(nn.Module):
    """AutoTimm's (and YOLOX's) ``SiLU``: ``x * sigmoid(x)``; no parameters."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


class BaseConv(nn.Module):
    """Conv2d (no bias, padding (k - 1) // 2) + BatchNorm2d + SiLU: keys ``conv``, ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = _SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(nn.Module):
    """Depthwise ``dconv`` + pointwise ``pconv`` (AutoTimm's; no YOLOXDetector variant uses it)."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int = 1) -> None:
        super().__init__()
        self.dconv = BaseConv(in_channels, in_channels, ksize, stride, groups=in_channels)
        self.pconv = BaseConv(in_channels, out_channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pconv(self.dconv(x))


class Focus(nn.Module):
    """Space-to-depth (W, H, C -> W/2, H/2, 4C) then ``conv``; needs an even input size."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = BaseConv(in_channels * 4, out_channels, ksize, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]],
                                   dim=1))


class Bottleneck(nn.Module):
    """1x1 ``conv1`` + 3x3 ``conv2``, plus the input when ``shortcut`` and the widths agree."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.conv2 = (DWConv if depthwise else BaseConv)(hidden, out_channels, 3, 1)
        self.use_add = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class SPPBottleneck(nn.Module):
    """``conv1`` (half width), concat with stride-1 max pools ``m`` (5, 9, 13), ``conv2``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = BaseConv(hidden * (len(kernel_sizes) + 1), out_channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [m(x) for m in self.m], dim=1))


class CSPLayer(nn.Module):
    """Cross stage partial layer: ``conv1`` -> ``m`` (n bottlenecks) and ``conv2``, concat, ``conv3``."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True,
                 expansion: float = 0.5, depthwise: bool = False) -> None:
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1, 1)
        self.conv2 = BaseConv(in_channels, hidden, 1, 1)
        self.conv3 = BaseConv(2 * hidden, out_channels, 1, 1)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, 1.0, depthwise) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))


class CSPDarknet(nn.Module):
    """CSPDarknet: ``stem`` (Focus), ``dark2``..``dark5``; returns [dark3, dark4, dark5] (strides 8, 16, 32)."""

    def __init__(self, dep_mul: float = 1.0, wid_mul: float = 1.0, depthwise: bool = False) -> None:
        super().__init__()
        conv = DWConv if depthwise else BaseConv
        c = int(wid_mul * 64)
        d = max(round(dep_mul * 3), 1)
        self.stem = Focus(3, c, ksize=3)
        self.dark2 = nn.Sequential(conv(c, c * 2, 3, 2), CSPLayer(c * 2, c * 2, n=d, depthwise=depthwise))
        self.dark3 = nn.Sequential(conv(c * 2, c * 4, 3, 2), CSPLayer(c * 4, c * 4, n=d * 3, depthwise=depthwise))
        self.dark4 = nn.Sequential(conv(c * 4, c * 8, 3, 2), CSPLayer(c * 8, c * 8, n=d * 3, depthwise=depthwise))
        self.dark5 = nn.Sequential(conv(c * 8, c * 16, 3, 2), SPPBottleneck(c * 16, c * 16),
                                   CSPLayer(c * 16, c * 16, n=d, shortcut=False, depthwise=depthwise))

    def forward(self, x: Tensor) -> List[Tensor]:
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        return [c3, c4, self.dark5(c4)]


class YOLOXPAFPN(nn.Module):
    """YOLOX PAFPN: [C3, C4, C5] -> [P3, N3, N4], each with ``out_channels = in_channels[0]`` channels."""

    def __init__(self, depth: float = 1.0, in_channels: Sequence[int] = (256, 512, 1024),
                 depthwise: bool = False) -> None:
        super().__init__()
        conv = DWConv if depthwise else BaseConv
        c3, c4, c5 = in_channels
        self.out_channels = c3
        n = max(round(depth * 3), 1)
        self.lateral_conv0 = BaseConv(c5, c4, 1, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False, depthwise=depthwise)
        self.reduce_conv1 = BaseConv(c4, c3, 1, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False, depthwise=depthwise)
        self.bu_conv2 = conv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(c3 + c4, c4, n, False, depthwise=depthwise)
        self.bu_conv1 = conv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(c4 + c5, c5, n, False, depthwise=depthwise)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.out_proj_n3 = BaseConv(c4, c3, 1, 1)
        self.out_proj_n4 = BaseConv(c5, c3, 1, 1)

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        feat_c3, feat_c4, feat_c5 = features
        p4 = self.C3_p4(torch.cat([self.upsample(self.lateral_conv0(feat_c5)), feat_c4], dim=1))
        p3_out = self.C3_p3(torch.cat([self.upsample(self.reduce_conv1(p4)), feat_c3], dim=1))
        n3 = self.C3_n3(torch.cat([self.bu_conv2(p3_out), p4], dim=1))
        n4 = self.C3_n4(torch.cat([self.bu_conv1(n3), feat_c5], dim=1))  # the backbone's C5, as AutoTimm does
        return [p3_out, self.out_proj_n3(n3), self.out_proj_n4(n4)]


class AutotimmYoloxDetector(nn.Module):
    """An AutoTimm ``YOLOXDetector``'s inference network: ``forward`` returns (cls, bbox), 3 levels each
    (strides 8, 16, 32); input height and width must be multiples of ``max_stride`` (32)."""

    strides = (8, 16, 32)
    max_stride = 32

    def __init__(self, model_name: str, num_classes: int) -> None:
        super().__init__()
        if model_name not in YOLOX_VARIANTS:
            raise ValueError(f"unknown YOLOX model_name {model_name!r}; AutoTimm's YOLOXDetector variants are "
                             f"{', '.join(YOLOX_VARIANTS)}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        dep_mul, wid_mul, in_channels = YOLOX_VARIANTS[model_name]
        self.family = AUTOTIMM_YOLOX_DETECTOR
        self.model_name = model_name
        self.num_classes = int(num_classes)
        self.backbone = CSPDarknet(dep_mul, wid_mul)
        self.neck = YOLOXPAFPN(dep_mul, in_channels)
        self.head = YOLOXHead(self.neck.out_channels, self.num_classes, 2)

    def forward(self, images: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
        return self.head(self.neck(self.backbone(images)))


def build_yolox_detector(h: HParams, state: Dict[str, Tensor]) -> Tuple[nn.Module, Dict[str, Any]]:
    """An AutoTimm ``YOLOXDetector`` checkpoint's network: ``model_name`` (a :data:`YOLOX_VARIANTS` name),
    ``num_classes``; ``score_thresh`` (0.01), ``nms_thresh`` (0.65) and ``max_detections_per_image`` (100) become
    the family's post-processing defaults."""
    model_name = h.str("model_name", required=True)
    if model_name not in YOLOX_VARIANTS:
        raise h.error(f"unknown YOLOXDetector model_name {model_name!r}; AutoTimm's variants are "
                      f"{', '.join(YOLOX_VARIANTS)}")
    config = {"model_name": model_name, "num_classes": h.int("num_classes", required=True)}
    model = build_and_load(h.path, lambda: AutotimmYoloxDetector(**config), state,
                           f"an AutoTimm YOLOXDetector ({model_name!r})")
    model.family = model.family.with_postprocess(**h.detection_postprocess(0.01, 0.65))
    return model, config


#: AutoTimm's ``YOLOXDetector``: a ``model_name`` hyper-parameter and a ``neck`` (the PAFPN) in the state dict.
AUTOTIMM_CLASS = AutotimmClass(
    "YOLOXDetector", "detection",
    matches=lambda hp, state: "model_name" in hp and any(k.startswith("neck.") for k in state),
    build=build_yolox_detector, description="CSPDarknet + YOLOX PAFPN + YOLOX head")
