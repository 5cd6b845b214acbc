"""The decoding convention: one source of truth for the reference decoder, the fused graph and runtimes.

For a feature map of size (H_l, W_l) at stride s, cell (i, j) has the anchor point
``px = (j + 0.5) * s``, ``py = (i + 0.5) * s`` in input pixels.  The regression output is a
log-distance: ``(l, t, r, b) = exp(min(bbox_pred, BBOX_LOG_CLAMP))`` in pixels, and the box is
``(px - l, py - t, px + r, py + b)`` clipped to ``[0, W] x [0, H]`` of the network input.
The score of class c is ``sigmoid(cls_c) * sigmoid(centerness)``.

Candidates are flattened level by level (P3 first), each level in row-major (i, j) order, so
candidate ``n`` of level ``l`` is ``offset_l + i * W_l + j``.

``BBOX_LOG_CLAMP = 10``: ``exp(10) = 22026.5`` is far below the FP16 maximum (65504), so ``exp``
never overflows in FP16 and ``px + exp(.)`` stays finite for inputs up to ~43k pixels.  The clamp
changes no clipped box for inputs up to 22026 pixels per side: a distance beyond that already
reaches past the image border on both sides, and clipping maps it to the same border.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BBOX_LOG_CLAMP",
    "DECODING_CONVENTION",
    "anchor_points",
    "decode",
    "batched_nms_postprocess",
    "postprocess_outputs",
]

BBOX_LOG_CLAMP = 10.0

#: Human- and machine-readable summary of the convention, stored in ONNX metadata.
DECODING_CONVENTION = {
    "name": "fcos-ltrb-exp-v1",
    "anchor_point": "((j + 0.5) * stride, (i + 0.5) * stride)",
    "distances": f"exp(min(bbox_pred, {BBOX_LOG_CLAMP})) pixels, order l, t, r, b",
    "box": "xyxy = (px - l, py - t, px + r, py + b) clipped to [0, W] x [0, H]",
    "score": "sigmoid(cls) * sigmoid(centerness)",
    "order": "levels P3..P7, row-major within a level",
    "bbox_log_clamp": BBOX_LOG_CLAMP,
}


def anchor_points(height: int, width: int, stride: int, *, device=None, dtype=torch.float32) -> Tensor:
    """(height * width, 2) tensor of (px, py) anchor points in row-major order.

    >>> anchor_points(2, 3, 8).tolist()
    [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0], [12.0, 12.0], [20.0, 12.0]]
    """
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def decode(
    cls_scores: Sequence[Tensor],
    bbox_preds: Sequence[Tensor],
    centernesses: Sequence[Tensor],
    strides: Sequence[int],
    image_size: Tuple[int, int],
) -> Tuple[Tensor, Tensor]:
    """Decode raw per-level head outputs into ``boxes`` (B, N, 4) xyxy and ``scores`` (B, N, C).

    ``image_size`` is (H, W) of the network input; boxes are clipped to it.
    """
    if not (len(cls_scores) == len(bbox_preds) == len(centernesses) == len(strides)):
        raise ValueError("decode needs one cls, bbox and centerness map per stride")
    height, width = int(image_size[0]), int(image_size[1])
    all_boxes, all_scores = [], []
    for cls, box, ctr, stride in zip(cls_scores, bbox_preds, centernesses, strides):
        b, c, h, w = cls.shape
        pts = anchor_points(h, w, stride, device=cls.device, dtype=torch.float32)
        dist = torch.exp(torch.clamp(box.float(), max=BBOX_LOG_CLAMP)).flatten(2).transpose(1, 2)  # (B, HW, 4)
        x1 = (pts[:, 0] - dist[..., 0]).clamp(0, width)
        y1 = (pts[:, 1] - dist[..., 1]).clamp(0, height)
        x2 = (pts[:, 0] + dist[..., 2]).clamp(0, width)
        y2 = (pts[:, 1] + dist[..., 3]).clamp(0, height)
        all_boxes.append(torch.stack([x1, y1, x2, y2], dim=-1))
        score = torch.sigmoid(cls.float()) * torch.sigmoid(ctr.float())
        all_scores.append(score.flatten(2).transpose(1, 2))  # (B, HW, C)
    return torch.cat(all_boxes, dim=1), torch.cat(all_scores, dim=1)


def batched_nms_postprocess(
    boxes: Tensor,
    scores: Tensor,
    score_thresh: float = 0.05,
    iou_thresh: float = 0.6,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
    agnostic: bool = False,
) -> List[Dict[str, Tensor]]:
    """Class-aware NMS on decoded candidates; returns one dict per image with boxes, scores, labels.

    Per image: candidates (box, class) with score > ``score_thresh``, the ``pre_nms_top_k`` best,
    greedy NMS per class (IoU > ``iou_thresh`` suppresses; across classes with ``agnostic``), sorted
    by score, at most ``max_detections``.  The C++ runtime (cpp/) implements the same rule.
    """
    from torchvision.ops import batched_nms, nms

    results = []
    num_classes = scores.shape[-1]
    for bx, sc in zip(boxes, scores):
        flat = sc.reshape(-1)
        keep = torch.nonzero(flat > score_thresh).squeeze(1)
        if keep.numel() > pre_nms_top_k:
            top = flat[keep].topk(pre_nms_top_k).indices
            keep = keep[top]
        cand_scores = flat[keep]
        cand_boxes = bx[keep // num_classes]
        cand_labels = keep % num_classes
        if agnostic:
            kept = nms(cand_boxes, cand_scores, iou_thresh)[:max_detections]
        else:
            kept = batched_nms(cand_boxes, cand_scores, cand_labels, iou_thresh)[:max_detections]
        results.append({"boxes": cand_boxes[kept], "scores": cand_scores[kept], "labels": cand_labels[kept]})
    return results


def postprocess_outputs(outputs: Dict[str, np.ndarray], decode_mode: str, strides: Sequence[int],
                        image_size: Tuple[int, int], score_thresh: float = 0.05, iou_thresh: float = 0.6,
                        max_detections: int = 100, class_agnostic: bool = False) -> List[Dict[str, np.ndarray]]:
    """Decode whatever an export did not (``decode_mode`` "raw", "activations" or "boxes", with or
    without top-k) and run NMS: one dict of numpy ``boxes``/``scores``/``labels`` per image.

    This is the post-processing of every runtime, so all backends share one implementation.
    """
    t = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32) if v.dtype != np.int64 else v)
         for k, v in outputs.items()}
    levels = ["p3", "p4", "p5", "p6", "p7"][: len(strides)]
    if decode_mode == "raw":
        boxes, scores = decode([t[f"cls_{l}"] for l in levels], [t[f"bbox_{l}"] for l in levels],
                               [t[f"ctr_{l}"] for l in levels], strides, image_size)
    elif decode_mode == "activations":
        # probabilities and distances already applied: invert to the raw convention and reuse decode
        logit = lambda p: torch.logit(p.clamp(1e-7, 1 - 1e-7))
        boxes, scores = decode([logit(t[f"cls_{l}"]) for l in levels],
                               [torch.log(t[f"bbox_{l}"].clamp(min=1e-30)) for l in levels],
                               [logit(t[f"ctr_{l}"]) for l in levels], strides, image_size)
    else:
        boxes, scores = t["boxes"], t["scores"]
    if class_agnostic:  # best class per candidate, NMS across classes
        best, label = scores.max(dim=-1)
        onehot = torch.zeros_like(scores).scatter_(-1, label[..., None], best[..., None])
        res = batched_nms_postprocess(boxes, onehot, score_thresh, iou_thresh, max_detections, agnostic=True)
    else:
        res = batched_nms_postprocess(boxes, scores, score_thresh, iou_thresh, max_detections)
    return [{k: v.numpy() for k, v in r.items()} for r in res]
