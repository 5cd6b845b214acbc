"""Instance masks into image pixels, in numpy only (every runtime pastes masks; none needs torch for it).

:func:`paste_masks` reproduces AutoTimm's ``InstanceSegmentor.predict`` paste: each detection's
``mask_size`` x ``mask_size`` probabilities are resized into its box's pixel extent (floor of x1, y1 and ceil of
x2, y2, clipped to the image, at least one pixel) with ``F.interpolate(mode="bilinear", align_corners=False)``
(no antialias), and a pixel belongs to the instance where the resized probability is > ``threshold``.

PyTorch's bilinear resize, rebuilt here: along each axis of input size ``n`` and output size ``m != n``,
output index ``d`` reads the source coordinate ``s = max((d + 0.5) * (n / m) - 0.5, 0)`` (float32 ``n / m``, the
rest rounded once to float32, as PyTorch's fused multiply-add does), ``i0 = min(floor(s), n - 1)``,
``i1 = min(i0 + 1, n - 1)``, ``w1 = clip(s - i0, 0, 1)``, ``w0 = 1 - w1``; an axis with ``m == n`` is copied.  The value
``x[i0, j0] h0 w0 + x[i0, j1] h0 w1 + x[i1, j0] h1 w0 + x[i1, j1] h1 w1`` is computed in float64 and rounded once
to float32.  PyTorch's CPU kernel sums in float32 with fused multiply-adds in an order that depends
on its code path, so values differ from it by at most one float32 ulp (~1e-7); a mask pixel differs only where
the probability lies within that of the threshold (none in 34 million random comparisons).

>>> import numpy as np
>>> paste_masks(np.full((1, 28, 28), 0.9, np.float32), np.array([[1.5, 2.0, 4.2, 3.0]]), 5, 6, 0.5)[0].astype(int)
array([[0, 0, 0, 0, 0, 0],
       [0, 0, 0, 0, 0, 0],
       [0, 1, 1, 1, 1, 0],
       [0, 0, 0, 0, 0, 0],
       [0, 0, 0, 0, 0, 0]])
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["paste_masks", "paste_region", "resize_bilinear"]


def paste_region(box, height: int, width: int) -> Tuple[int, int, int, int]:
    """The pixel extent ``(x1, y1, x2, y2)`` (end exclusive) a box's mask is pasted into: AutoTimm's
    ``x1 = floor(x1)`` clamped to [0, W - 1], ``x2 = ceil(x2)`` clamped to [x1 + 1, W]; y likewise."""
    bx = np.asarray(box, dtype=np.float32)
    x1 = int(min(max(np.floor(bx[0]), 0), width - 1))
    y1 = int(min(max(np.floor(bx[1]), 0), height - 1))
    x2 = int(min(max(np.ceil(bx[2]), x1 + 1), width))
    y2 = int(min(max(np.ceil(bx[3]), y1 + 1), height))
    return x1, y1, x2, y2


def _axis(n: int, m: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights ``(i0, i1, w0, w1)`` of PyTorch's linear resize from ``n`` to ``m`` samples."""
    d = np.arange(m)
    if m == n:
        return d, d, np.ones(m, np.float32), np.zeros(m, np.float32)
    scale = np.float64(np.float32(n) / np.float32(m))
    s = np.maximum(((d + 0.5) * scale - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(s).astype(np.int64), n - 1)
    w1 = np.clip(s - i0.astype(np.float32), np.float32(0), np.float32(1))
    return i0, np.minimum(i0 + 1, n - 1), np.float32(1) - w1, w1


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``F.interpolate(x[None, None], (out_h, out_w), mode="bilinear", align_corners=False)[0, 0]`` for a 2-D
    float32 array."""
    x = np.asarray(x, dtype=np.float32)
    r0, r1, h0, h1 = _axis(x.shape[0], out_h)
    c0, c1, w0, w1 = _axis(x.shape[1], out_w)
    h0, h1 = h0[:, None].astype(np.float64), h1[:, None].astype(np.float64)
    top, bottom = x[r0], x[r1]  # (out_h, in_w)
    out = top[:, c0] * (h0 * w0) + top[:, c1] * (h0 * w1) + (bottom[:, c0] * (h1 * w0) + bottom[:, c1] * (h1 * w1))
    return out.astype(np.float32)


def paste_masks(probs: np.ndarray, boxes: np.ndarray, height: int, width: int,
                threshold: float = 0.5) -> np.ndarray:
    """Boolean (N, height, width) instance masks from per-detection probabilities (N, M, M) and xyxy boxes (N, 4)
    in pixels of the image the masks are for (the network input)."""
    probs = np.asarray(probs, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if len(probs) != len(boxes):
        raise ValueError(f"{len(probs)} masks for {len(boxes)} boxes")
    out = np.zeros((len(boxes), int(height), int(width)), dtype=bool)
    for j, (p, box) in enumerate(zip(probs, boxes)):
        x1, y1, x2, y2 = paste_region(box, height, width)
        out[j, y1:y2, x1:x2] = resize_bilinear(p, y2 - y1, x2 - x1) > np.float32(threshold)
    return out
