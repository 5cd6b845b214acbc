"""Feature Pyramid Network producing P3-P7 (P6/P7 by max pooling)."""

from __future__ import annotations

from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .heads import _check_positive_int

__all__ = ["FPN"]


class FPN(nn.Module):
    """FPN over [C3, C4, C5] returning [P3, P4, P5, P6, P7], all with ``out_channels`` channels.

    1x1 lateral convs, top-down nearest upsampling + add, 3x3 output convs on P3-P5,
    P6 = max-pool(P5) and P7 = max-pool(P6) with kernel 1 and stride 2 (as torchvision's
    ``LastLevelMaxPool``), so a 640x640 input gives 80, 40, 20, 10, 5.

    >>> import torch
    >>> fpn = FPN([512, 1024, 2048], out_channels=256)
    >>> feats = [torch.randn(2, c, s, s) for c, s in zip([512, 1024, 2048], [80, 40, 20])]
    >>> [tuple(p.shape[-2:]) for p in fpn(feats)]
    [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5)]
    """

    num_levels = 5

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        if isinstance(in_channels, (str, bytes)) or not isinstance(in_channels, Sequence):
            raise TypeError(f"in_channels must be a list of 3 ints (C3, C4, C5 channels), got {in_channels!r}")
        if len(in_channels) != 3:
            raise ValueError(
                f"in_channels must have exactly 3 entries (C3, C4, C5 channels), got {len(in_channels)}: {list(in_channels)}"
            )
        for i, c in enumerate(in_channels):
            _check_positive_int(f"in_channels[{i}]", c)
        _check_positive_int("out_channels", out_channels)
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        c3, c4, c5 = in_channels
        self.lateral_conv3 = nn.Conv2d(c3, out_channels, kernel_size=1)
        self.lateral_conv4 = nn.Conv2d(c4, out_channels, kernel_size=1)
        self.lateral_conv5 = nn.Conv2d(c5, out_channels, kernel_size=1)
        self.fpn_conv3 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.fpn_conv4 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.fpn_conv5 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        if isinstance(features, Tensor) or len(features) != 3:
            raise ValueError("FPN expects a list of 3 feature maps [C3, C4, C5]")
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"FPN input C{i + 3} must be (B, {c}, H, W), got {tuple(f.shape)}")
        c3, c4, c5 = features
        p5 = self.lateral_conv5(c5)
        p4 = self.lateral_conv4(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.lateral_conv3(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        p3, p4, p5 = self.fpn_conv3(p3), self.fpn_conv4(p4), self.fpn_conv5(p5)
        p6 = F.max_pool2d(p5, kernel_size=1, stride=2)
        p7 = F.max_pool2d(p6, kernel_size=1, stride=2)
        return [p3, p4, p5, p6, p7]
