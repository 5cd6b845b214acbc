"""Image classifier: timm backbone with pooled features + ClassificationHead."""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor, nn

from .backbone import _check_name, _create
from .detector import check_images
from .families.seed import CLASSIFIER
from .heads import ClassificationHead, _check_positive_int

__all__ = ["ImageClassifier", "pooled_features"]


def pooled_features(backbone: nn.Module) -> int:
    """Width of what a timm model created with ``num_classes=0`` returns: timm's head contract says
    ``head_hidden_size`` (the pre-logits output: ``forward_head(x, pre_logits=True)``), which differs from
    ``num_features`` for models with a pre-logits head (mobilenetv3, ghostnet, hgnetv2, fasternet ...)."""
    width = getattr(backbone, "head_hidden_size", None)
    return int(width) if width else int(backbone.num_features)


class ImageClassifier(nn.Module):
    """timm backbone (global pooled features, no classifier) followed by a :class:`ClassificationHead`.

    >>> import torch
    >>> model = ImageClassifier(backbone="resnet18", num_classes=4).eval()
    >>> model(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 4])
    """

    family = CLASSIFIER

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 1000,
        dropout: float = 0.0,
        pretrained_backbone: bool = False,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        _check_name(backbone)
        _check_positive_int("num_classes", num_classes)
        self.config: Dict[str, Any] = {
            "backbone": backbone,
            "num_classes": num_classes,
            "dropout": dropout,
            "backbone_kwargs": dict(backbone_kwargs or {}),
        }
        self.num_classes = num_classes
        self.backbone = _create(backbone, pretrained_backbone, num_classes=0, **(backbone_kwargs or {}))
        self.head = ClassificationHead(pooled_features(self.backbone), num_classes, dropout=dropout)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images)
        return self.head(self.backbone(images))
