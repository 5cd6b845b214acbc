"""Classification and FCOS-style detection heads (spec: ``shared/seed/heads.md``)."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch  # noqa: F401  (used by the doctests)
from torch import Tensor, nn

__all__ = ["ClassificationHead", "DetectionHead", "group_norm_groups"]

#: Upper bound on GroupNorm groups in the detection head (the FCOS / Detectron default).
MAX_GN_GROUPS = 32


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def group_norm_groups(channels: int, max_groups: int = MAX_GN_GROUPS) -> int:
    """Number of GroupNorm groups used for ``channels``.

    Rule: the largest divisor of ``channels`` that is <= ``max_groups`` (32) and leaves at least
    two channels per group.  That is exactly 32 for the usual 256-channel FPN, and still valid for
    channel counts such as 48 (-> 24) or 100 (-> 25).  Two channels per group keep the
    normalisation well defined on the 1x1 maps that P7 has for small inputs (a 1-channel group
    on a 1x1 map has a single value: PyTorch rejects it and its variance is 0).

    >>> [group_norm_groups(c) for c in (256, 64, 48, 100, 32, 7, 1)]
    [32, 32, 24, 25, 16, 1, 1]
    """
    _check_positive_int("channels", channels)
    _check_positive_int("max_groups", max_groups)
    for g in range(max(1, min(channels // 2, max_groups)), 0, -1):
        if channels % g == 0:
            return g
    return 1  # unreachable: 1 divides everything


class ClassificationHead(nn.Module):
    """Dropout (only when ``dropout > 0``) followed by a Linear layer.

    >>> import torch
    >>> head = ClassificationHead(in_features=2048, num_classes=10, dropout=0.5)
    >>> head(torch.randn(32, 2048)).shape
    torch.Size([32, 10])
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("num_classes", num_classes)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"ClassificationHead expects input of shape (B, {self.in_features}), got {tuple(x.shape)}"
            )
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


def _subnet(in_channels: int, out_channels: int, num_convs: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    groups = group_norm_groups(in_channels)
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1),
            nn.GroupNorm(groups, in_channels),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
    return nn.Sequential(*layers)


class DetectionHead(nn.Module):
    """FCOS-style head shared across FPN levels, with three subnets.

    Each subnet is ``num_convs`` x (Conv3x3 + GroupNorm + ReLU) then a Conv3x3 predictor with
    ``num_classes`` (``cls_subnet``), 4 (``bbox_subnet``: l, t, r, b as log-distances) or 1
    (``centerness_subnet``) channels.  GroupNorm uses :func:`group_norm_groups` groups.

    >>> head = DetectionHead(in_channels=256, num_classes=80, num_convs=4)
    >>> feats = [torch.randn(2, 256, s, s) for s in (80, 40, 20)]
    >>> cls, box, ctr = head(feats)
    >>> [tuple(t.shape) for t in (cls[0], box[1], ctr[2])]
    [(2, 80, 80, 80), (2, 4, 40, 40), (2, 1, 20, 20)]
    """

    def __init__(self, in_channels: int, num_classes: int, num_convs: int = 4, prior_prob: float = 0.01) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("num_classes", num_classes)
        _check_positive_int("num_convs", num_convs, minimum=0)
        if not 0.0 < float(prior_prob) < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.num_convs = num_convs
        self.prior_prob = float(prior_prob)
        self.cls_subnet = _subnet(in_channels, num_classes, num_convs)
        self.bbox_subnet = _subnet(in_channels, 4, num_convs)
        self.centerness_subnet = _subnet(in_channels, 1, num_convs)
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(std=0.01) conv weights, zero biases, cls bias = -log((1 - p) / p)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, mean=0.0, std=0.01)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bias_value = -math.log((1.0 - self.prior_prob) / self.prior_prob)
        nn.init.constant_(self.cls_subnet[-1].bias, bias_value)

    def forward(self, features: Sequence[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        if isinstance(features, Tensor) or len(features) == 0:
            raise TypeError("DetectionHead expects a non-empty list of (B, C, H, W) feature maps")
        cls_scores, bbox_preds, centernesses = [], [], []
        for f in features:
            if f.dim() != 4 or f.shape[1] != self.in_channels:
                raise ValueError(
                    f"DetectionHead expects (B, {self.in_channels}, H, W) features, got {tuple(f.shape)}"
                )
            cls_scores.append(self.cls_subnet(f))
            bbox_preds.append(self.bbox_subnet(f))
            centernesses.append(self.centerness_subnet(f))
        return cls_scores, bbox_preds, centernesses
