"""AutoTimm's ``SemanticSegmentor`` (0.7.x) rebuilt without importing it.

Layers and state-dict keys follow ``autotimm.heads`` (``ASPP``, ``DeepLabV3PlusHead``, ``FCNHead``) and
``autotimm.tasks.semantic_segmentation`` exactly (read from the installed 0.7.37 source), so a
SemanticSegmentor's ``backbone.*`` / ``head.*`` weights load with ``strict=True`` once the ``_orig_mod.``
segments of ``torch.compile`` and the non-network entries (``criterion.``, metrics) are removed:

- backbone: ``timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
  drop_rate=0.0, drop_path_rate=0.0)`` (``FeatureBackboneConfig``'s defaults): [C2, C3, C4, C5];
- ``deeplabv3plus`` head: ASPP on C5 (``conv1x1``, three 3x3 ``atrous_convs`` at dilations 6/12/18, and
  ``global_pool`` = AdaptiveAvgPool2d(1) + 1x1 conv, each conv bias-free + BatchNorm + ReLU; the pooled branch
  bilinearly resized back, align_corners=False; concatenated in that order, 1x1 ``project`` + BN + ReLU +
  Dropout(0.5)), bilinear upsampling (align_corners=False) to C2's size, concatenated with
  ``low_level_projection``(C2) (1x1 conv to 48 + BN + ReLU), ``decoder`` (two 3x3 convs, bias-free, BN, ReLU),
  1x1 ``classifier`` with bias: logits at C2's resolution (stride 4 for most backbones);
- ``fcn`` head: ``conv`` = 3x3 conv to 512 (bias-free) + BN + ReLU + Dropout(0.1) + 1x1 conv with bias,
  on C5 only: logits at stride 32.

Decoding (``SemanticSegmentor.predict``): ``logits.argmax(dim=1)`` at the head's resolution, no resize; for
labels of another size (training, validation, metrics) AutoTimm first resizes the logits bilinearly
(align_corners=False) to the label size (:func:`resize_logits`), then takes the argmax.  Eval preprocessing
(``segmentation_eval_transforms``): ``A.Resize`` of both sides to the square ``image_size`` (bilinear, aspect
not kept; masks nearest), ImageNet mean/std.  Label value 255 (``ignore_index``) is ignored.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..family import Family, Preprocess, RawOutput
from ..hparams import AutotimmClass, HParams
from ..loaded import build_and_load

__all__ = ["AUTOTIMM_SEGMENTOR", "HEAD_TYPES", "ASPP", "DeepLabV3PlusHead", "FCNHead", "AutotimmSegmentor",
           "resize_logits", "AUTOTIMM_CLASS", "build_semantic_segmentor"]

#: The ``head_type`` values of AutoTimm's SemanticSegmentor.
HEAD_TYPES = ("deeplabv3plus", "fcn")

AUTOTIMM_SEGMENTOR = Family(
    name="autotimm-segmentor",
    task="segmentation",
    convention="pixel-logits-argmax-v1",
    outputs=(RawOutput("logits", "pixel_logits", "num_classes", "softmax",
                       meaning="per-pixel class logits (B, C, h, w) at the head's stride; class = argmax over C; "
                               "for another size resize bilinearly (align_corners=False) before the argmax"),),
    preprocess=Preprocess(resize="stretch", align="top-left", fill=None, crop_fraction=1.0),
    description="AutoTimm SemanticSegmentor: timm features C2-C5 + DeepLabV3+ (ASPP, stride 4) or FCN (stride 32) "
                "head, argmax of the logits",
)


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> List[nn.Module]:
    pad = dilation if kernel == 3 else 0
    return [nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class ASPP(nn.Module):
    """AutoTimm's ``ASPP``: 1x1, three atrous 3x3 and a global-pool branch, concatenated and projected."""

    def __init__(self, in_channels: int, out_channels: int = 256, dilation_rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv1x1 = nn.Sequential(*_conv_bn_relu(in_channels, out_channels))
        self.atrous_convs = nn.ModuleList(nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, rate))
                                          for rate in dilation_rates)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(in_channels, out_channels))
        self.project = nn.Sequential(*_conv_bn_relu(out_channels * (len(dilation_rates) + 2), out_channels),
                                     nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = F.interpolate(self.global_pool(x), size=size, mode="bilinear", align_corners=False)
        return self.project(torch.cat([self.conv1x1(x), *(conv(x) for conv in self.atrous_convs), pooled], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """AutoTimm's ``DeepLabV3PlusHead``: ASPP(C5) upsampled to C2, + 48-channel C2 projection, decoder, classifier."""

    def __init__(self, in_channels_list: Sequence[int], num_classes: int, aspp_out_channels: int = 256,
                 decoder_channels: int = 256, dilation_rates: Sequence[int] = (6, 12, 18)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.aspp = ASPP(in_channels_list[-1], aspp_out_channels, dilation_rates)
        self.low_level_projection = nn.Sequential(*_conv_bn_relu(in_channels_list[0], 48))
        self.decoder = nn.Sequential(*_conv_bn_relu(aspp_out_channels + 48, decoder_channels, 3),
                                     *_conv_bn_relu(decoder_channels, decoder_channels, 3))
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        low, high = features[0], features[-1]
        x = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.decoder(torch.cat([x, self.low_level_projection(low)], dim=1)))


class FCNHead(nn.Module):
    """AutoTimm's ``FCNHead``: 3x3 conv + BN + ReLU + Dropout(0.1) + 1x1 classifier on C5."""

    def __init__(self, in_channels: int, num_classes: int, intermediate_channels: int = 512) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Sequential(*_conv_bn_relu(in_channels, intermediate_channels, 3), nn.Dropout(0.1),
                                  nn.Conv2d(intermediate_channels, num_classes, kernel_size=1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.conv(features[-1])


class AutotimmSegmentor(nn.Module):
    """An AutoTimm ``SemanticSegmentor``'s inference network: ``forward`` returns the logits (B, C, h, w) at the
    head's resolution, ``h = H / output_stride``; H and W must be multiples of ``max_stride`` (C5's reduction)
    for the feature maps to line up with the input grid."""

    def __init__(self, backbone: str, num_classes: int, head_type: str = "deeplabv3plus") -> None:
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {', '.join(repr(h) for h in HEAD_TYPES)}, got {head_type!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.family = AUTOTIMM_SEGMENTOR
        self.num_classes = int(num_classes)
        self.head_type = head_type
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4),
                                          drop_rate=0.0, drop_path_rate=0.0)
        channels: List[int] = self.backbone.feature_info.channels()
        reductions: List[int] = self.backbone.feature_info.reduction()
        if head_type == "deeplabv3plus":
            self.head: nn.Module = DeepLabV3PlusHead(channels, num_classes)
            self.output_stride = int(reductions[0])
        else:
            self.head = FCNHead(channels[-1], num_classes)
            self.output_stride = int(reductions[-1])
        self.max_stride = int(reductions[-1])

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


def resize_logits(logits: Tensor, size: Tuple[int, int]) -> Tensor:
    """Logits (B, C, h, w) at a label's size (H, W), as AutoTimm compares them with a mask of another size
    (``SemanticSegmentor._match_mask_size``): bilinear, ``align_corners=False``; unchanged when the size matches."""
    size = (int(size[0]), int(size[1]))
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_semantic_segmentor(h: HParams, state: Dict[str, Tensor]) -> Tuple[nn.Module, Dict[str, Any]]:
    """An AutoTimm ``SemanticSegmentor`` checkpoint's network: ``backbone``, ``num_classes``, ``head_type``
    (deeplabv3plus / fcn)."""
    backbone = h.backbone()
    num_classes = h.int("num_classes", required=True)
    head_type = h.str("head_type", "deeplabv3plus")
    if head_type not in HEAD_TYPES:
        raise h.error(f"unknown head_type {head_type!r}; AutoTimm's SemanticSegmentor heads are "
                      f"{', '.join(repr(t) for t in HEAD_TYPES)}")
    config = {"backbone": backbone, "num_classes": num_classes, "head_type": head_type}
    model = build_and_load(h.path, lambda: AutotimmSegmentor(**config), state,
                           f"an AutoTimm SemanticSegmentor ({head_type}, {backbone!r})")
    return model, config


#: AutoTimm's ``SemanticSegmentor``: a ``head_type`` hyper-parameter; its ``ignore_index`` (the label value
#: that is not a class, 255 by default) is recorded in the metadata.
AUTOTIMM_CLASS = AutotimmClass(
    "SemanticSegmentor", "segmentation",
    matches=lambda hp, state: "head_type" in hp,
    build=build_semantic_segmentor,
    metadata=lambda h: {"ignore_index": h.int("ignore_index", 255, minimum=None)},
    description="timm features C2-C5 + DeepLabV3+ or FCN head")
