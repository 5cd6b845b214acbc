"""FCOS-style object detector: timm backbone -> FPN -> DetectionHead."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .backbone import backbone_channels, backbone_strides, create_feature_backbone, nchw_features
from .decode import batched_nms_postprocess, decode
from .families.seed import SEED_FCOS
from .fpn import FPN
from .heads import DetectionHead, _check_positive_int

__all__ = ["ObjectDetector", "check_images"]


def check_images(images: Tensor) -> None:
    """Raise a ValueError unless ``images`` is a (B, 3, H, W) floating tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating point tensor, got {images.dtype}")


class ObjectDetector(nn.Module):
    """FCOS-style detector returning raw per-level head outputs.

    ``forward(images)`` returns ``(cls_scores, bbox_preds, centernesses)``, three lists with one
    (B, C, H, W) tensor per level P3..P7; :meth:`decode` and :meth:`predict` implement the decoding
    convention (:mod:`autotimm_deploy.models.decode`) and NMS as the parity oracle.  ``family`` is its
    declaration (:data:`~autotimm_deploy.models.families.SEED_FCOS`), which every stage reads.

    >>> model = ObjectDetector(backbone="resnet18", num_classes=3, fpn_channels=64, num_convs=1).eval()
    >>> cls, box, ctr = model(torch.randn(1, 3, 128, 128))
    >>> model.strides, [t.shape[-1] for t in cls]
    ((8, 16, 32, 64, 128), [16, 8, 4, 2, 1])
    """

    family = SEED_FCOS

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 80,
        fpn_channels: int = 256,
        num_convs: int = 4,
        prior_prob: float = 0.01,
        pretrained_backbone: bool = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("fpn_channels", fpn_channels)
        self.config: Dict[str, Any] = {
            "backbone": backbone,
            "num_classes": num_classes,
            "fpn_channels": fpn_channels,
            "num_convs": num_convs,
            "prior_prob": prior_prob,
            "backbone_kwargs": dict(backbone_kwargs or {}),
        }
        self.num_classes = num_classes
        self.backbone = create_feature_backbone(backbone, pretrained=pretrained_backbone, **(backbone_kwargs or {}))
        bb_strides = backbone_strides(self.backbone)
        self.fpn = FPN(backbone_channels(self.backbone), out_channels=fpn_channels)
        self.head = DetectionHead(fpn_channels, num_classes, num_convs=num_convs, prior_prob=prior_prob)
        self.strides: Tuple[int, ...] = tuple(bb_strides) + (bb_strides[-1] * 2, bb_strides[-1] * 4)

    def forward(self, images: Tensor) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        check_images(images)
        return self.head(self.fpn(nchw_features(self.backbone, self.backbone(images))))

    def decode(
        self,
        cls_scores: List[Tensor],
        bbox_preds: List[Tensor],
        centernesses: List[Tensor],
        image_size: Tuple[int, int],
    ) -> Tuple[Tensor, Tensor]:
        """Decode raw outputs into ``boxes`` (B, N, 4) and ``scores`` (B, N, num_classes)."""
        return decode(cls_scores, bbox_preds, centernesses, self.strides, image_size)

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        score_thresh: float = 0.05,
        iou_thresh: float = 0.6,
        max_detections: int = 100,
        pre_nms_top_k: int = 1000,
    ) -> List[Dict[str, Tensor]]:
        """Run, decode and apply class-aware NMS; boxes are in input pixels."""
        boxes, scores = self.decode(*self(images), image_size=tuple(images.shape[-2:]))
        return batched_nms_postprocess(boxes, scores, score_thresh, iou_thresh, max_detections, pre_nms_top_k)
