"""AutoTimm's ``InstanceSegmentor`` (0.7.x) rebuilt without importing it, split in two graphs for deployment.

Layers and state-dict keys follow ``autotimm.tasks.instance_segmentation`` and ``autotimm.heads`` (read from the
installed 0.7.37 source), so an InstanceSegmentor checkpoint's weights load with ``strict=True`` once its loss
and metric entries and the ``_orig_mod.`` segments of ``torch.compile`` are removed:

- ``backbone``: ``timm.create_model(name, pretrained=False, features_only=True, out_indices=(2, 3, 4))`` (AutoTimm
  forces these indices whatever the config says);
- ``fpn``: AutoTimm's FPN with conv P6/P7 (:class:`~.autotimm.AutotimmFPN`), ``fpn_channels`` wide;
- ``detection_head``: AutoTimm's FCOS ``DetectionHead`` (:class:`~.autotimm.FCOSHead`, GroupNorm(32),
  ``head_num_convs`` convs per tower, ``bbox = ReLU(scale_l * reg_pred)`` pixel distances);
- ``mask_head``: AutoTimm's ``MaskHead``: 4 x (Conv3x3 + ReLU) to 256 hidden channels (whatever ``fpn_channels``),
  ``deconv`` ConvTranspose2d(k2, s2) + ReLU, 1x1 ``mask_pred`` to ``num_classes``.  Its output is
  ``2 * roi_pool_size`` square: AutoTimm's ``mask_size`` hyper-parameter changes no layer (it only sizes the
  training targets, which must then equal ``2 * roi_pool_size``).

``predict()`` (what the two graphs and the host code between them reproduce): FCOS decode exactly as
``ObjectDetector``'s (:data:`~.autotimm.AUTOTIMM_FCOS`: argmax class per location, score sigmoid(cls) *
sigmoid(ctr) > ``score_thresh``, no pre-NMS top-k, class-aware NMS at ``nms_thresh``, the first
``max_detections_per_image``); then ``roi_align(P3, [b, x1, y1, x2, y2], (roi_pool_size,) * 2, spatial_scale=1/8,
aligned=True)`` (1/8 is AutoTimm's constant, whatever ``strides``; adaptive sampling), the mask head, the
detection's class channel, sigmoid; each mask pasted into its box (:func:`~autotimm_deploy.models.masks.paste_masks`)
and binarised at ``mask_threshold`` (> 0.5).  Eval preprocessing (``instance_segmentation_transforms(train=False)``):
``A.Resize`` of both sides to the square input (aspect not kept) + ImageNet Normalize.

Deployment: NMS must run between the detector and the mask head, so the network is two graphs: the main
network (:class:`AutotimmInstanceSegmentor`, ``forward(images) -> (cls, bbox, ctr, mask_features)``: the FCOS raw
outputs per level and P3) and the mask stage (:class:`MaskStage`, ``forward(mask_features, rois, labels) ->
masks``: per-detection ``mask_size`` x ``mask_size`` probabilities), which exports to ONNX as RoiAlign
(``half_pixel``, opset >= 16) + the head + GatherElements.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Sequence, Tuple

import timm
import torch
from torch import Tensor, nn

from ..family import Family, MaskSpec, Preprocess, RawOutput
from ..hparams import AutotimmClass, HParams
from ..loaded import build_and_load
from .autotimm import AUTOTIMM_FCOS, GN_GROUPS, AutotimmFPN, FCOSHead

__all__ = ["AUTOTIMM_INSTANCE", "MaskHead", "MaskStage", "AutotimmInstanceSegmentor", "MASK_HIDDEN_CHANNELS",
           "AUTOTIMM_CLASS", "build_instance_segmentor"]

#: AutoTimm's mask head is 256 channels wide whatever ``fpn_channels``.
MASK_HIDDEN_CHANNELS = 256

AUTOTIMM_INSTANCE = Family(
    name="autotimm-instance",
    task="instance_segmentation",
    convention="fcos-ltrb-linear-roi-masks-v1",
    outputs=AUTOTIMM_FCOS.outputs + (
        RawOutput("mask_features", "mask_features", "features", "identity",
                  meaning="P3 features the mask head's RoIAlign reads"),),
    score=("cls", "ctr"),
    postprocess=AUTOTIMM_FCOS.postprocess,  # argmax, no pre-NMS top-k, 0.05 / 0.5 / 100
    preprocess=Preprocess(resize="stretch"),
    masks=MaskSpec(feature_stride=8, roi_size=14, mask_size=28, sampling_ratio=0, aligned=True, threshold=0.5),
    description="AutoTimm InstanceSegmentor: FCOS detector (conv P6/P7, ReLU(scale * reg) pixel distances) + "
                "RoIAlign(P3, 1/8) -> 4 x conv3x3(256) + deconv x2 mask head, per-class masks pasted bilinearly",
)


class MaskHead(nn.Module):
    """AutoTimm's ``MaskHead``: (N, C, r, r) RoI features -> (N, num_classes, 2r, 2r) mask logits."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = MASK_HIDDEN_CHANNELS,
                 num_convs: int = 4) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else hidden_channels, hidden_channels, 3, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(hidden_channels, hidden_channels, kernel_size=2, stride=2)
        self.relu = nn.ReLU()  # no weights: the state dict is AutoTimm's
        self.mask_pred = nn.Conv2d(hidden_channels, num_classes, 1)

    def forward(self, roi_features: Tensor) -> Tensor:
        return self.mask_pred(self.relu(self.deconv(self.convs(roi_features))))


def _axis_weights(start: Tensor, extent: Tensor, out: int, length: Tensor, sampling_ratio: int) -> Tensor:
    """(N, out, length): RoIAlign's averaged bilinear weights along one axis, as torchvision computes them.

    A RoI of ``extent`` from ``start`` (feature coordinates) is cut into ``out`` bins; each bin averages
    ``sampling_ratio`` (0: ``ceil(extent / out)``, adaptive) samples at ``start + p * bin + (i + 0.5) * bin / grid``;
    a sample outside ``[-1, length]`` counts 0, otherwise it is clamped to ``[0, length - 1]`` and weighs its two
    neighbouring positions linearly.  Bilinear sampling is separable, so RoIAlign's (out x out) weights over the
    feature map are the outer product of this axis's and the other's, and RoIAlign is two matrix products
    (:func:`roi_align_separable`): no custom op, which TensorRT-RTX has no plugin for."""
    dtype = start.dtype
    bin_size = extent / out
    grid = torch.full_like(extent, float(sampling_ratio)) if sampling_ratio > 0 else torch.ceil(extent / out)
    smax = torch.div(length + out - 1, out, rounding_mode="floor") + 1 if sampling_ratio <= 0 else \
        torch.tensor(sampling_ratio)  # at most ceil(length / out) samples: boxes lie inside the image
    p = torch.arange(out, dtype=dtype).view(1, -1, 1)
    i = torch.arange(smax, dtype=dtype).view(1, 1, -1)
    grid3 = grid.view(-1, 1, 1)
    pos = start.view(-1, 1, 1) + p * bin_size.view(-1, 1, 1) + (i + 0.5) * bin_size.view(-1, 1, 1) / grid3.clamp(min=1.0)
    lf = length.to(dtype)
    use = (i < grid3) & (pos >= -1.0) & (pos <= lf)
    pos = pos.clamp(min=0.0)
    low = torch.floor(pos)
    at_end = low >= lf - 1
    low = torch.where(at_end, lf - 1, low)
    pos = torch.where(at_end, low, pos)
    high = torch.where(at_end, low, low + 1)
    frac = pos - low
    cells = torch.arange(length, dtype=dtype).view(1, 1, 1, -1)
    w = (cells == low.unsqueeze(-1)).to(dtype) * (1 - frac).unsqueeze(-1) \
        + (cells == high.unsqueeze(-1)).to(dtype) * frac.unsqueeze(-1)
    w = w * use.unsqueeze(-1).to(dtype)
    return w.sum(2) / grid.clamp(min=1.0).view(-1, 1, 1)


def roi_align_separable(features: Tensor, boxes: Tensor, out: int, scale: float, sampling_ratio: int = 0,
                        aligned: bool = True) -> Tensor:
    """``torchvision.ops.roi_align`` of one image's ``features`` (1, C, H, W) over ``boxes`` (N, 4) xyxy, as two
    matrix products of its separable weights (:func:`_axis_weights`): (N, C, out, out), equal to torchvision's up to
    float32 summation order."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, k] * scale - offset for k in range(4))
    w, h = x2 - x1, y2 - y1
    if not aligned:
        w, h = w.clamp(min=1.0), h.clamp(min=1.0)
    size = features.shape
    ay = _axis_weights(y1, h, out, torch.tensor(size[2]) if isinstance(size[2], int) else size[2], sampling_ratio)
    ax = _axis_weights(x1, w, out, torch.tensor(size[3]) if isinstance(size[3], int) else size[3], sampling_ratio)
    rows = torch.matmul(ay.unsqueeze(1), features)  # (N, 1, out, H) @ (1, C, H, W) -> (N, C, out, W)
    return torch.matmul(rows, ax.unsqueeze(1).transpose(2, 3))  # @ (N, 1, W, out) -> (N, C, out, out)


class SeparableRoIAlign(nn.Module):
    """:func:`roi_align_separable` as a module (no weights): its exported nodes are named ``/roi_align/...``, which
    the FP16 pass keeps in FP32 (box coordinates up to the image size need FP32, as ONNX's RoiAlign op does)."""

    def __init__(self, spec: MaskSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        s = self.spec
        return roi_align_separable(features, boxes, s.roi_size, 1.0 / s.feature_stride, s.sampling_ratio, s.aligned)


class MaskStage(nn.Module):
    """The second graph, per image: ``forward(mask_features (1, C, h, w), boxes (N, 4) xyxy in network-input pixels,
    labels (N,) int64) -> (N, mask_size, mask_size)`` probabilities: sigmoid of the label's channel of the mask head
    on RoIAlign of the features over the boxes.  ``separable`` (the exported graph) computes RoIAlign as two matrix
    products (:func:`roi_align_separable`); otherwise torchvision's ``roi_align`` (the reference).  Shares its mask
    head with the model."""

    def __init__(self, mask_head: MaskHead, spec: MaskSpec, separable: bool = False) -> None:
        super().__init__()
        self.mask_head = mask_head
        self.spec = spec
        self.roi_align = SeparableRoIAlign(spec) if separable else None

    def forward(self, mask_features: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        s = self.spec
        boxes = boxes.to(mask_features.dtype)
        if self.roi_align is not None:
            x = self.roi_align(mask_features, boxes)
        else:
            from torchvision.ops import roi_align

            rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
            x = roi_align(mask_features, rois, output_size=(s.roi_size, s.roi_size), spatial_scale=1.0 / s.feature_stride,
                          sampling_ratio=s.sampling_ratio, aligned=s.aligned)
        logits = self.mask_head(x)
        index = labels.to(torch.int64).reshape(-1, 1, 1, 1).expand(-1, 1, s.mask_size, s.mask_size)
        return torch.gather(logits, 1, index)[:, 0].sigmoid()


class AutotimmInstanceSegmentor(nn.Module):
    """An AutoTimm ``InstanceSegmentor``'s inference network: ``forward`` returns ``(cls, bbox, ctr)`` (one tensor
    per level P3..P7, as :data:`~.autotimm.AUTOTIMM_FCOS`) and ``mask_features`` (P3); :meth:`mask_stage` is the
    mask graph.  Arguments are AutoTimm's hyper-parameters of the same names."""

    def __init__(self, backbone: str, num_classes: int, fpn_channels: int = 256, head_num_convs: int = 4,
                 roi_pool_size: int = 14, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> None:
        super().__init__()
        if fpn_channels % GN_GROUPS:
            raise ValueError(f"fpn_channels must be a multiple of {GN_GROUPS} (AutoTimm's GroupNorm), "
                             f"got {fpn_channels}")
        if len(strides) != 5:
            raise ValueError(f"strides must list the 5 levels P3..P7, got {list(strides)}")
        if roi_pool_size < 1:
            raise ValueError(f"roi_pool_size must be >= 1, got {roi_pool_size}")
        spec = replace(AUTOTIMM_INSTANCE.masks, roi_size=int(roi_pool_size), mask_size=2 * int(roi_pool_size))
        self.family: Family = replace(AUTOTIMM_INSTANCE, masks=spec) if spec != AUTOTIMM_INSTANCE.masks \
            else AUTOTIMM_INSTANCE
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(2, 3, 4),
                                          drop_rate=0.0, drop_path_rate=0.0)
        self.fpn = AutotimmFPN(self.backbone.feature_info.channels(), fpn_channels)
        self.detection_head = FCOSHead(fpn_channels, num_classes, head_num_convs)
        self.mask_head = MaskHead(fpn_channels, num_classes)

    def forward(self, images: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor], Tensor]:
        features = self.fpn(self.backbone(images))
        cls, bbox, ctr = self.detection_head(features)
        return cls, bbox, ctr, features[0]

    def mask_stage(self, separable: bool = False) -> MaskStage:
        """The mask graph, sharing this model's mask head (its weights, not a copy); ``separable``: RoIAlign as
        matrix products (what is exported)."""
        return MaskStage(self.mask_head, self.family.masks, separable)


def build_instance_segmentor(h: HParams, state: Dict[str, Tensor]) -> Tuple[nn.Module, Dict[str, Any]]:
    """An AutoTimm ``InstanceSegmentor`` checkpoint's network: ``backbone``, ``num_classes``, ``fpn_channels``,
    ``head_num_convs``, ``roi_pool_size`` (14), ``strides``; ``score_thresh`` (0.05), ``nms_thresh`` (0.5),
    ``max_detections_per_image`` (100) become the family's post-processing defaults, ``mask_threshold`` (0.5) its
    mask threshold."""
    backbone = h.backbone()
    num_classes = h.int("num_classes", required=True)
    strides = h.strides()
    config = {"backbone": backbone, "num_classes": num_classes, "fpn_channels": h.int("fpn_channels", 256),
              "head_num_convs": h.int("head_num_convs", 4), "roi_pool_size": h.int("roi_pool_size", 14),
              "strides": strides}
    model = build_and_load(h.path, lambda: AutotimmInstanceSegmentor(**config), state,
                           f"an AutoTimm InstanceSegmentor ({backbone!r})")
    family = model.family.with_postprocess(**h.detection_postprocess(0.05, 0.5))
    model.family = replace(family, masks=replace(family.masks, threshold=h.float("mask_threshold", 0.5)))
    return model, config


#: AutoTimm's ``InstanceSegmentor``: RoI / mask hyper-parameters or a ``mask_head`` in the state dict (matched
#: before ``ObjectDetector``, whose FPN it shares).
AUTOTIMM_CLASS = AutotimmClass(
    "InstanceSegmentor", "instance_segmentation",
    matches=lambda hp, state: "roi_pool_size" in hp or "mask_threshold" in hp
    or any(k.startswith("mask_head.") for k in state),
    build=build_instance_segmentor, description="FCOS detector + RoIAlign mask head")
